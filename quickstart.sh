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

stop() {
    for name in agent hub mosquitto; do
        if [ -f "$STATE/$name.pid" ] && kill -0 "$(cat "$STATE/$name.pid")" 2>/dev/null; then
            kill "$(cat "$STATE/$name.pid")" && echo "stopped $name"
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
stop >/dev/null  # a second run restarts cleanly

if (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
    echo "Using the broker already listening on 127.0.0.1:1883."
else
    mosquitto -c mosquitto/quickstart.conf >"$STATE/mosquitto.log" 2>&1 &
    echo $! >"$STATE/mosquitto.pid"
    echo "Started mosquitto on 127.0.0.1:1883."
fi

"$STATE/venv/bin/fleetpulse-hub" run --data-dir "$STATE/hub" --http-port "$PORT" \
    >"$STATE/hub.log" 2>&1 &
echo $! >"$STATE/hub.pid"
printf "Starting the hub (first start initialises PostgreSQL)"
for _ in $(seq 1 120); do
    grep -q "Subscribed at broker" "$STATE/hub.log" 2>/dev/null && break
    kill -0 "$(cat "$STATE/hub.pid")" 2>/dev/null || { echo; tail -20 "$STATE/hub.log"; exit 1; }
    printf "."; sleep 1
done
echo

"$STATE/venv/bin/fleetpulse-agent" run --state-dir "$STATE/agent" >"$STATE/agent.log" 2>&1 &
echo $! >"$STATE/agent.pid"

cat <<MSG
fleetpulse is running.
  Dashboard:     http://127.0.0.1:$PORT/
  Fleet table:   $STATE/venv/bin/fleetpulse-hub status --data-dir $STATE/hub
  Live topics:   MQTT Explorer -> 127.0.0.1:1883, topic fleetpulse/#
  Logs:          $STATE/hub.log, $STATE/agent.log
  Stop:          ./quickstart.sh stop
MSG
