"""One agent per data directory.

Two agents on one state file would both resume its sessions, read the same cameras and
deliver every event twice. ``python -m agent run`` therefore takes an exclusive
``flock`` on ``<data_dir>/agent.lock`` before anything else and holds it for the life of
the process, with its PID written in the file. A second ``run`` on the same directory
reads that PID and exits 2 (systemd does not restart it), while the first keeps serving.

The kernel releases the lock when the process ends, however it ends (even ``kill -9``):
a PID left in the file by a dead agent never blocks the next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from agent.errors import AgentError, ErrorCode

LOCK_NAME = "agent.lock"


class InstanceLockedError(AgentError):
    """Another agent holds the data directory's lock."""

    def __init__(self, lock_path: Path, pid: int | None) -> None:
        holder = f"PID {pid}" if pid is not None else "a process whose PID is not written yet"
        super().__init__(
            ErrorCode.AGENT_ALREADY_RUNNING,
            f"another agent ({holder}) is running on the data directory {lock_path.parent} "
            f"(it holds {lock_path}); stop it first, or give this one another "
            "[storage] data_dir",
            status=409,
            details={"pid": pid, "lock": str(lock_path)},
        )
        self.pid = pid


def _read_pid(fd: int) -> int | None:
    """The PID the lock's holder wrote (None if not written yet or not a number)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class InstanceLock:
    """The exclusive lock on a data directory; use as a context manager, or
    :meth:`acquire` and :meth:`release`."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock (creating the directory and file) and write this PID in it.

        Raises :class:`InstanceLockedError` naming the holder's PID when another process
        holds it; OSError when the directory or file cannot be created or opened.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # No O_TRUNC: the file must not lose the holder's PID before we know we hold it.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise InstanceLockedError(self.path, pid) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def release(self) -> None:
        """Empty the file and drop the lock (a no-op when not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # no stale PID to mislead a reader
        os.close(fd)  # closing the descriptor releases the flock

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
