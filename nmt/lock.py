"""Exclusive locks on run directories and prepared-data caches, so that two processes never
write into one.

A lock is a file holding its owner's pid, locked with `flock`: the kernel releases it when the
owner ends, however it ends, so a lock left by a killed process is stale and simply taken over.
The file is removed on release; a taker checks that the file it locked is still the one at the
path, so a lock removed in between is never shared.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nmt.errors import NmtError

log = logging.getLogger(__name__)


class InUse(NmtError):
    """Another process holds the lock."""


def _owner(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return f"process {text}" if text else "another process"


def _try(path: Path, block: bool) -> int | None:
    """An open, locked descriptor of the file now at `path`, or None if it is held."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # removed by its last owner while we waited: lock the new one


@contextmanager
def hold(path: Path, what: str, wait: bool = False) -> Iterator[None]:
    """Holds the lock file `path` for the block. Busy: raises `InUse` naming the owner, or with
    `wait`, says so once and waits."""
    fd = _try(path, block=False)
    if fd is None and not wait:
        raise InUse(f"{what} is in use by {_owner(path)}: wait for it to end or stop it")
    if fd is None:
        log.info("%s is in use by %s; waiting", what, _owner(path))
        fd = _try(path, block=True)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        yield
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.close(fd)
