"""The README's first command: ``overlay demo`` runs a whole overlay and stops cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys


def test_demo_runs_to_completion():
    result = subprocess.run([sys.executable, "-m", "overlay", "demo"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for expected in ("bootstrap node", "supernode-3", "attached to", "online", "offline",
                     "unknown", "told its", "with another key", "stopped every node",
                     "alice → bob", "matches"):
        assert expected in out, expected


def test_demo_stops_on_ctrl_c():
    proc = subprocess.Popen([sys.executable, "-m", "overlay", "demo"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "supernode-2" in line:
                break
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=30)[0]
    finally:
        proc.kill()
    assert proc.returncode in (130, -signal.SIGINT), rest
    assert "Traceback" not in rest
