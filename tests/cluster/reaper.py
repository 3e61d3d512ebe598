"""Removes a namespace cluster's nodes once its owner is gone.

    reaper.py MADE_JSON   (stdin: a pipe from the owner)

Waits until stdin reaches end of file, which happens when the owner closes it or dies
in any way, SIGKILL included; then kills the processes and removes the namespaces, links
and files that MADE_JSON lists. Started in a session of its own, so the Ctrl-C that
stops the owner does not stop it first."""
import json
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from network import teardown  # noqa: E402

signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
sys.stdin.buffer.read()
made = json.loads(Path(sys.argv[1]).read_text())
import os  # noqa: E402
for pid in made.get("pids", []):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
teardown(made)
