"""``overlay ... | head``: a command whose reader stops reading ends quietly with exit 141
(128 + SIGPIPE, what a shell shows for a tool SIGPIPE ended), not with a traceback. A real
process writing into a real pipe whose reading end is closed."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers.repo import REPO

#: ``overlay.cli.main.main`` with one command that prints JSON lines, as ``call --json`` does
PRINTER = """
import argparse, json, sys
from overlay.cli import main as cli

def build_parser():
    parser = argparse.ArgumentParser(prog="overlay")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-json", default=None)
    def lines(args):
        for i in range(100_000):
            print(json.dumps({"line": i, "pad": "x" * 100}), flush=True)
        return 0
    parser.set_defaults(func=lines)
    return parser

cli.build_parser = build_parser
sys.exit(cli.main([]))
"""


def test_a_closed_pipe_ends_the_command_quietly_with_141() -> None:
    proc = subprocess.Popen([sys.executable, "-c", PRINTER], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(200)  # like ``head -c 200``: read a little, then stop
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=30) == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
