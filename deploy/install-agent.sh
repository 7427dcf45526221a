#!/usr/bin/env bash
# Install the fleetpulse agent as a systemd service on a Raspberry Pi or a Debian 12 machine.
#
#   sudo bash install-agent.sh --config agent.toml [--ca ca.crt] [PACKAGE]
#
# PACKAGE is a fleetpulse wheel or sdist copied to the machine (build one on any machine
# with the source: python3 -m pip wheel --no-deps -w dist .); without it, fleetpulse is
# installed from the package index pip is configured for. agent.toml is what
# `fleetpulse-hub add-device <device-id>` printed on the hub's machine; ca.crt is the
# broker's CA certificate (for mqtts://).
#
# It uses the system's python3 (3.11+: Debian 12, Raspberry Pi OS bookworm) and installs
# into a venv under /opt/fleetpulse, never with the system's pip (Debian refuses that:
# externally-managed-environment). If the venv module is missing it installs python3-venv
# with apt-get. Then `fleetpulse-agent install-service` writes the systemd unit, the
# user, /etc/fleetpulse/agent.toml (mode 0600) and enables and starts the service.
# Running it again upgrades the package and keeps the existing agent.toml.
#
# Options:
#   --config FILE            agent settings to install as /etc/fleetpulse/agent.toml
#   --ca FILE                the broker's CA certificate, copied to /etc/fleetpulse/ca.crt
#   --venv DIR               where to make the venv (default /opt/fleetpulse/venv)
#   --system-site-packages   let the venv use Debian's python3-psutil, python3-paho-mqtt …
#   --root DIR               install the service into another tree (an image); no start
#   --no-start               install and enable, do not start
set -euo pipefail

VENV=/opt/fleetpulse/venv
PYTHON=${PYTHON:-python3}
PACKAGE=""
SERVICE_ARGS=()
VENV_ARGS=()
ROOT=""

die() { echo "install-agent.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --config) [ $# -ge 2 ] || die "--config needs a file"
                  [ -r "$2" ] || [ "$2" = - ] || die "cannot read --config $2"
                  SERVICE_ARGS+=(--config-from "$2"); shift 2 ;;
        --ca) [ $# -ge 2 ] || die "--ca needs a file"; SERVICE_ARGS+=(--ca-file "$2"); shift 2 ;;
        --venv) [ $# -ge 2 ] || die "--venv needs a directory"; VENV=$2; shift 2 ;;
        --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$2
                SERVICE_ARGS+=(--root "$2"); shift 2 ;;
        --no-start) SERVICE_ARGS+=(--no-start); shift ;;
        --system-site-packages) VENV_ARGS+=(--system-site-packages); shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [ -z "$PACKAGE" ] || die "one package only (got $PACKAGE and $1)"
           [ -f "$1" ] || die "no package file $1"
           PACKAGE=$(cd "$(dirname "$1")" && pwd)/$(basename "$1"); shift ;;
    esac
done

if [ "$(id -u)" != 0 ] && [ -z "$ROOT" ]; then
    die "run as root: sudo bash $0 $*"
fi

apt_install() {
    command -v apt-get >/dev/null || die "$PYTHON cannot $1; install $2 with your package manager"
    echo "Installing $2 with apt-get (to $1)."
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null
}

command -v "$PYTHON" >/dev/null || apt_install "run" python3
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$("$PYTHON" -V 2>&1) is too old: fleetpulse needs Python 3.11+ (Debian 12, Raspberry Pi OS bookworm)"

if [ ! -x "$VENV/bin/python" ]; then
    mkdir -p "$(dirname "$VENV")"
    if ! "$PYTHON" -m venv "${VENV_ARGS[@]}" "$VENV" 2>/dev/null; then
        rm -rf "$VENV"
        apt_install "make a venv" python3-venv
        "$PYTHON" -m venv "${VENV_ARGS[@]}" "$VENV"
    fi
    echo "Made the venv $VENV."
fi

echo "Installing ${PACKAGE:-fleetpulse from the package index} into $VENV."
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" --upgrade "${PACKAGE:-fleetpulse}"
if [ -n "$PACKAGE" ]; then
    # pip keeps an installed copy of the same version; a rebuilt file must replace it.
    "${PIP[@]}" --no-deps --force-reinstall "$PACKAGE"
fi

exec "$VENV/bin/fleetpulse-agent" install-service "${SERVICE_ARGS[@]}"
