"""The Node-RED baseline for bench/hub_ingest.py: the flow a user builds instead of a hub.

Writes a Node-RED 4 user directory (settings.js, flows.json, package.json) holding the flow
many Pi fleet owners wire up for MQTT → PostgreSQL:

    mqtt in  <prefix>/+/metrics (parsed JSON; QoS 1: fixed client id, clean session off)
      → join     manual mode: 500 messages or 0.5 s after the first, as an array
      → function one multi-row parameterised INSERT per batch (``pg`` Pool, via ``libs``)
    catch → debug (to the console): errors are logged, the batch is gone

The function writes every scalar of the message to its own column and each list as jsonb,
into a flat table of its own (``nodered_metrics``: no key, no unique constraint — so no
duplicate protection), created from :func:`create_table_sql`. There is no validation and
no quarantine; Node-RED's ``mqtt in`` (MQTT.js) acknowledges a QoS 1 message when it
arrives, before the flow has stored it, so a crash loses what was in the join node or the
INSERT.

Node-RED and ``pg`` are installed with npm into a cache directory outside the repository
(``$FLEETPULSE_NODERED_DIR``, default ``~/.cache/fleetpulse/node-red``): ``npm i
node-red@4 pg@8`` (Node-RED 4.1 runs on Node 20; 5.x needs Node 22). Node-RED 4 loads a
function node's ``libs`` from ``<userDir>/node_modules`` when the userDir's package.json
lists them (``@node-red/registry`` externalModules.js), so the user directory gets that
entry and a link to the cached ``pg``; installing from the editor is switched off
(``externalModules.modules.allowInstall: false``): nothing is fetched while the bench runs.

    python3 -m bench.nodered_flow --out /tmp/nr --broker-port 1883 --qos 1 \\
        --db postgresql://postgres@127.0.0.1:5432/postgres          # then:
    node ~/.cache/fleetpulse/node-red/node_modules/node-red/red.js --userDir /tmp/nr

bench/hub_ingest.py (``--hubs …,nodered``) does all of this itself, per window.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.schema import RECEIVED_AT, metrics_columns  # noqa: E402
from shared.topics import metrics_topic  # noqa: E402

TABLE = "nodered_metrics"
CLIENT_ID = "bench-nodered"  # hub_ingest waits for a client id starting "bench-"
JOIN_COUNT = 500
JOIN_TIMEOUT_S = 0.5
PACKAGES = ["node-red@4", "pg@8"]
PG_MAX_PARAMETERS = 65535  # the wire protocol's limit on $n parameters of one statement


@dataclass(frozen=True)
class FlatColumn:
    name: str
    pg_type: str
    path: tuple[str, ...]  # where the value sits in the message
    json: bool  # a list: stored as jsonb (JSON.stringify: pg would send a JS array as {…})


def columns() -> list[FlatColumn]:
    """Every scalar of the message as its own column (``<section>_<field>``), lists as jsonb.

    The names and types are those of fleetpulse's own table (both come from the message's
    schema), plus ``v``; lists of numbers are jsonb here rather than arrays, as a user
    flattening JSON would store them.
    """
    flat = [FlatColumn("v", "smallint", ("v",), False)]
    for c in metrics_columns():
        if c is RECEIVED_AT or not c.path:
            continue  # set by fleetpulse's hub (received_at, anomaly_score): not in the message
        is_list = c.pg_type == "jsonb" or c.pg_type.endswith("[]")
        flat.append(FlatColumn(c.name, "jsonb" if is_list else c.pg_type, c.path, is_list))
    return flat


def create_table_sql(table: str = TABLE) -> str:
    body = ",\n  ".join(f"{c.name} {c.pg_type}" for c in columns())
    return f"create table if not exists {table} (\n  {body}\n)"


def function_code(table: str = TABLE) -> str:
    """The function node's body: one multi-row parameterised INSERT per joined batch."""
    cols = columns()
    if JOIN_COUNT * len(cols) > PG_MAX_PARAMETERS:
        raise ValueError(f"{JOIN_COUNT} rows × {len(cols)} columns exceed PostgreSQL's "
                         f"{PG_MAX_PARAMETERS} parameters per statement")
    getters = []
    for c in cols:
        expr = "m" + "".join(f".{key}" for key in c.path)
        getters.append(f"JSON.stringify({expr})" if c.json else expr)
    row = ",\n        ".join(getters)
    return f"""\
// msg.payload: the array of parsed messages from the join node.
const pool = context.get("pool");
const batch = msg.payload;
if (!Array.isArray(batch) || batch.length === 0) {{
    return null;
}}
const N = {len(cols)};
const values = [];
const tuples = [];
for (const m of batch) {{
    values.push(
        {row});
    const base = tuples.length * N;
    const marks = [];
    for (let i = 1; i <= N; i++) {{
        marks.push("$" + (base + i));
    }}
    tuples.push("(" + marks.join(",") + ")");
}}
try {{
    await pool.query(
        "INSERT INTO {table} ({", ".join(c.name for c in cols)}) VALUES " + tuples.join(","),
        values);
}} catch (err) {{
    node.error("INSERT of " + batch.length + " rows failed: " + err.message, msg);
}}
return null;
"""


INITIALIZE = """\
// One pool for the node's life; DATABASE_URL is an environment variable of the flow.
const pool = new pg.Pool({ connectionString: env.get("DATABASE_URL") });
pool.on("error", (err) => node.error("PostgreSQL pool: " + err.message));
context.set("pool", pool);
"""

FINALIZE = """\
// Not async (Node-RED runs it as a plain function): end the pool, let it finish.
const pool = context.get("pool");
if (pool) {
    pool.end();
}
"""


def flow(*, broker_port: int, qos: int, prefix: str, db_url: str,
         table: str = TABLE) -> list[dict[str, Any]]:
    """The flows.json content: one tab, a broker config node, six nodes."""
    tab, broker = "fp0tab000000001", "fp0broker000001"
    mqtt_in, join, insert = "fp0mqttin000001", "fp0join00000001", "fp0insert000001"
    catch, log = "fp0catch0000001", "fp0debug0000001"
    return [
        {"id": tab, "type": "tab", "label": "fleetpulse → PostgreSQL", "disabled": False,
         "info": "The flow a user builds instead of a hub (bench/nodered_flow.py).",
         "env": [{"name": "DATABASE_URL", "value": db_url, "type": "str"}]},
        {"id": broker, "type": "mqtt-broker", "name": "bench broker", "broker": "127.0.0.1",
         "port": str(broker_port), "clientid": CLIENT_ID, "autoConnect": True,
         "usetls": False, "protocolVersion": "4", "keepalive": "60",
         # A careful user keeps the session at QoS 1 so that a restart gets what was queued.
         "cleansession": qos == 0, "autoUnsubscribe": True,
         "birthTopic": "", "birthQos": "0", "birthRetain": "false", "birthPayload": "",
         "birthMsg": {}, "closeTopic": "", "closeQos": "0", "closeRetain": "false",
         "closePayload": "", "closeMsg": {}, "willTopic": "", "willQos": "0",
         "willRetain": "false", "willPayload": "", "willMsg": {}, "userProps": "",
         "sessionExpiry": ""},
        {"id": mqtt_in, "type": "mqtt in", "z": tab, "name": "metrics",
         "topic": metrics_topic(prefix, "+"), "qos": str(qos), "datatype": "json",
         "broker": broker, "nl": False, "rap": True, "rh": 0, "inputs": 0,
         "x": 110, "y": 80, "wires": [[join]]},
        {"id": join, "type": "join", "z": tab, "name": "batch", "mode": "custom",
         "build": "array", "property": "payload", "propertyType": "msg", "key": "topic",
         "joiner": "\\n", "joinerType": "str", "useparts": False, "accumulate": False,
         "timeout": str(JOIN_TIMEOUT_S), "count": str(JOIN_COUNT), "reduceRight": False,
         "reduceExp": "", "reduceInit": "", "reduceInitType": "", "reduceFixup": "",
         "x": 290, "y": 80, "wires": [[insert]]},
        {"id": insert, "type": "function", "z": tab, "name": "INSERT batch",
         "func": function_code(table), "outputs": 1, "timeout": 0, "noerr": 0,
         "initialize": INITIALIZE, "finalize": FINALIZE,
         "libs": [{"var": "pg", "module": "pg"}], "x": 470, "y": 80, "wires": [[]]},
        {"id": catch, "type": "catch", "z": tab, "name": "errors", "scope": None,
         "uncaught": False, "x": 110, "y": 160, "wires": [[log]]},
        {"id": log, "type": "debug", "z": tab, "name": "log error", "active": True,
         "tosidebar": False, "console": True, "tostatus": False, "complete": "error",
         "targetType": "msg", "statusVal": "", "statusType": "auto",
         "x": 290, "y": 160, "wires": []},
    ]


def settings_js(ui_port: int) -> str:
    settings = {
        "flowFile": "flows.json",
        "credentialSecret": False,
        "uiHost": "127.0.0.1",
        "uiPort": ui_port,
        "functionExternalModules": True,
        # pg is already in <userDir>/node_modules: never fetch anything while measuring.
        "externalModules": {"modules": {"allowInstall": False}},
        "telemetry": {"enabled": False},
        "diagnostics": {"enabled": False, "ui": False},
        "logging": {"console": {"level": "info", "metrics": False, "audit": False}},
        "editorTheme": {"tours": False, "projects": {"enabled": False}},
    }
    return "module.exports = " + json.dumps(settings, indent=4) + ";\n"


# --- installation ---------------------------------------------------------------------------

def cache_dir() -> Path:
    if os.environ.get("FLEETPULSE_NODERED_DIR"):
        return Path(os.environ["FLEETPULSE_NODERED_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "fleetpulse" / "node-red"


def installed(cache: Path) -> bool:
    return all((cache / "node_modules" / name / "package.json").exists()
               for name in ("node-red", "pg"))


def ensure_installed(cache: Path | None = None) -> tuple[Path | None, str]:
    """Install Node-RED 4 and pg into the cache if needed.

    Returns (the cache, versions) or (None, one line saying why Node-RED cannot run).
    """
    cache = cache or cache_dir()
    node = shutil.which("node")
    if node is None:
        return None, "node is not installed (apt-get install nodejs npm)"
    if not installed(cache):
        npm = shutil.which("npm")
        if npm is None:
            return None, "npm is not installed (apt-get install npm)"
        cache.mkdir(parents=True, exist_ok=True)
        if not (cache / "package.json").exists():
            (cache / "package.json").write_text(
                '{"name": "fleetpulse-bench-node-red", "private": true}\n')
        done = subprocess.run([npm, "install", "--no-audit", "--no-fund", *PACKAGES],
                              cwd=cache, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not installed(cache):
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
            return None, f"npm install {' '.join(PACKAGES)} in {cache} failed: {last[0]}"
    return cache, versions(cache)


def versions(cache: Path) -> str:
    def version(name: str) -> str:
        data = json.loads((cache / "node_modules" / name / "package.json").read_text())
        return str(data["version"])
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
    return f"Node-RED {version('node-red')}, pg {version('pg')}, node {node.stdout.strip()}"


def red_js(cache: Path) -> Path:
    return cache / "node_modules" / "node-red" / "red.js"


def write_userdir(userdir: Path, cache: Path, *, broker_port: int, qos: int, prefix: str,
                  db_url: str, ui_port: int, table: str = TABLE) -> Path:
    """Write settings.js, flows.json and package.json, and link the cached pg; return it."""
    userdir.mkdir(parents=True, exist_ok=True)
    (userdir / "settings.js").write_text(settings_js(ui_port))
    (userdir / "flows.json").write_text(json.dumps(
        flow(broker_port=broker_port, qos=qos, prefix=prefix, db_url=db_url, table=table),
        indent=2) + "\n")
    pg_version = json.loads((cache / "node_modules" / "pg" / "package.json").read_text())
    (userdir / "package.json").write_text(json.dumps(
        {"name": "node-red-project", "private": True,
         "dependencies": {"pg": pg_version["version"]}}, indent=2) + "\n")
    modules = userdir / "node_modules"
    modules.mkdir(exist_ok=True)
    link = modules / "pg"
    if not link.exists():
        link.symlink_to(cache / "node_modules" / "pg", target_is_directory=True)
    return userdir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the Node-RED user directory")
    parser.add_argument("--broker-port", type=int, default=1883)
    parser.add_argument("--qos", type=int, choices=[0, 1], default=1)
    parser.add_argument("--prefix", default="bench")
    parser.add_argument("--db", required=True, help="postgresql://… for the function's pool")
    parser.add_argument("--ui-port", type=int, default=1880)
    parser.add_argument("--create-table", action="store_true",
                        help=f"also create {TABLE} in that database (needs psycopg)")
    args = parser.parse_args()
    cache, detail = ensure_installed()
    if cache is None:
        print(f"Node-RED: {detail}", file=sys.stderr)
        return 1
    write_userdir(args.out, cache, broker_port=args.broker_port, qos=args.qos,
                  prefix=args.prefix, db_url=args.db, ui_port=args.ui_port)
    if args.create_table:
        import psycopg

        with psycopg.connect(args.db, autocommit=True) as conn:
            conn.execute(create_table_sql().encode())
    print(f"{detail}; run: node {red_js(cache)} --userDir {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
