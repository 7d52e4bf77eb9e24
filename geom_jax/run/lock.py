"""One run at a time per output folder: a lock file holding host and pid.

The lock is an advisory ``flock`` on ``OUTPUT_DIR/.lock``, whose content
names the holder (host, pid, start time). The kernel drops a ``flock`` when
its process dies, so a lock left by a killed run (``kill -9``, a node lost
mid-job) is stale by construction and the next run takes it over; only a
live holder refuses a second run. Where the file system has no ``flock``
(some network mounts), a lock file whose pid no longer exists on this host
counts as stale.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time

LOCK_FILE = ".lock"


class RunLockedError(RuntimeError):
    """Another live run holds the output folder's lock."""


def _holder(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process (its host and pid are not recorded yet)"
    started = holder.get("started")
    since = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(started)) if started else ""
    return f"pid {holder.get('pid')} on host {holder.get('host')}{since}"


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True
    return True


class RunLock:
    """Exclusive hold on a run folder for the life of one run.

    Example::

      with RunLock(output_dir):
          ...  # compute and write; a second RunLock(output_dir) raises
    """

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_FILE)
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Takes the lock.

        Raises:
          RunLockedError: a live process holds it; the message names its host and pid.
        """
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise RunLockedError(self._held_message(_holder(self.path))) from None
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                fd = self._acquire_without_flock()
            try:
                same_file = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same_file = False
            if same_file:  # not unlinked by a holder releasing meanwhile
                break
            os.close(fd)
        record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def _acquire_without_flock(self) -> int:
        holder = _holder(self.path)
        if (
            holder
            and holder.get("host") == socket.gethostname()
            and holder.get("pid") != os.getpid()
            and _pid_alive(holder.get("pid"))
        ):
            raise RunLockedError(self._held_message(holder))
        if holder and holder.get("host") != socket.gethostname():
            raise RunLockedError(self._held_message(holder))
        return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)

    def _held_message(self, holder: dict) -> str:
        return (
            f"{self.folder} is in use by another run ({_describe(holder)}); wait for it to "
            f"finish or stop it (if that run is gone, delete {self.path})"
        )

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
