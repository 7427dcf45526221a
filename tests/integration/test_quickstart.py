"""``./quickstart.sh stop`` returns once what it started has exited."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).parents[2]
# Exits one second after SIGTERM, as a hub writing its last batch does.
SLOW = 'trap "sleep 1; exit 0" TERM; while :; do sleep 0.1; done'
STUBBORN = 'trap "" TERM; while :; do sleep 0.1; done'


def exited(process: subprocess.Popen[bytes]) -> bool:
    return process.poll() is not None


def test_stop_waits_for_each_process_and_kills_one_that_hangs(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    started = {name: subprocess.Popen(["bash", "-c", script])
               for name, script in (("agent", SLOW), ("hub", SLOW), ("mosquitto", STUBBORN))}
    try:
        for name, process in started.items():
            (state / f"{name}.pid").write_text(f"{process.pid}\n")
        env = {**os.environ, "FLEETPULSE_QUICKSTART_DIR": str(state),
               "FLEETPULSE_QUICKSTART_STOP_S": "3"}
        result = subprocess.run(["bash", str(REPO / "quickstart.sh"), "stop"], env=env,
                                capture_output=True, text=True, timeout=60)
        # Checked before this test reaps them: poll() is then the first wait.
        states = {name: subprocess.run(["ps", "-o", "stat=", "-p", str(p.pid)],
                                       capture_output=True, text=True).stdout.strip()
                  for name, p in started.items()}
    finally:
        for process in started.values():
            if not exited(process):
                process.kill()
            process.wait(10)
    assert result.returncode == 0, result.stderr
    # Each had exited (a zombie awaiting this test, its parent) when stop returned.
    assert all(s in ("", "Z") or s.startswith("Z") for s in states.values()), states
    assert result.stdout.splitlines() == [
        "stopped agent", "stopped hub",
        f"mosquitto (pid {started['mosquitto'].pid}) did not exit within 3 s of SIGTERM: "
        "killing it (SIGKILL).", "stopped mosquitto"]
    assert started["mosquitto"].returncode == -9 and started["hub"].returncode == 0
    assert not list(state.glob("*.pid"))
