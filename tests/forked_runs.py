"""Runs in processes forked from a test helper script that has already imported the app (``import lightning`` once
for all of them, instead of once per interpreter), each with a timeout and a check that nothing of it is left.

Used by ``tests/ddp_worker.py`` and the kill/resume script of ``tests/test_alarm_resume.py``. The calling script
must lead its own process group (a new session, or ``os.setpgid(0, 0)``): what is killed and checked is every other
process of that group.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable


def others_in_group() -> list[str]:
    """The live processes of this process group other than this one (zombies do not count), from /proc."""
    left = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid = int(stat.parent.name)
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError):  # the process ended while we looked
            continue
        if fields[0] != "Z" and int(fields[2]) == os.getpgrp() and pid != os.getpid():
            left.append(f"{pid} {command}")
    return left


def kill_others_in_group() -> None:
    for line in others_in_group():
        try:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_forked(target: Callable[..., Any], args: tuple[Any, ...], timeout: float) -> dict[str, Any]:
    """``target(*args)`` in a process forked from this one (multiprocessing's fork: an exception is printed and exits
    1, as from an interpreter of its own). Returns its exit code (negative: the signal that ended it), its seconds,
    whether it outlived ``timeout`` (then it was killed), whether it was reaped (no process or zombie left of it), and
    the processes of the group still running 10 s after it ended (they are killed)."""
    start = time.monotonic()
    process = multiprocessing.get_context("fork").Process(target=target, args=args)
    process.start()
    process.join(timeout)
    timed_out = process.exitcode is None
    if timed_out:
        kill_others_in_group()
        process.join()
    seconds = time.monotonic() - start
    deadline = time.monotonic() + 10  # helpers such as multiprocessing's resource tracker exit on their own
    while others_in_group() and time.monotonic() < deadline:
        time.sleep(0.2)
    left = others_in_group()
    kill_others_in_group()
    return {"exitcode": process.exitcode, "seconds": seconds, "timed_out": timed_out,
            "reaped": not Path(f"/proc/{process.pid}").exists(), "left": left}
