"""One writer per run directory: an advisory lock on `<dir>/.lock`, held for the whole run.

`flock` locks belong to the open file, so the kernel drops the lock when its process dies
(even by SIGKILL): a lock left by a dead process is simply free, and the next run takes it
over. The file holds who has it (pid, host, command, since), to name them in the refusal.
Local file systems only: some network file systems do not honour `flock`.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from ssr.errors import RunDirError

LOCK_NAME = ".lock"


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {info['pid']} on {info['host']} since {info['since']}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"  # it has locked the file and not yet written who it is


@contextmanager
def run_lock(directory: str | os.PathLike) -> Iterator[Path]:
    """Hold the directory's lock for the duration of the block; refuse if another process holds it."""
    path = Path(directory) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirError(f"{directory} is in use by {_holder(path)}; wait for it to finish, stop it, "
                          "or use another --output-dir") from None
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
        yield path
    finally:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
