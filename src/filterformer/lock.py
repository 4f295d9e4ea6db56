"""One writer per folder: an exclusive lock, held by a process until it ends; readers of a
run folder take a shared lock while they read it, so they never read a run being written.

ff-train locks its run folder and ff-predict its output folder, so that two processes never
write one folder at once (one run's results would silently replace the other's). The lock is
an advisory ``fcntl.flock`` on a lock file, which the OS releases when the process ends,
however it ends: a killed run never blocks its own resume. The file holds the holder's PID and
host, which a refused process names; it is removed when the holder exits normally.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filterformer.errors import FolderLockedError
from filterformer.io import outermost_missing, resolved

RUN_LOCK = ".lock"
"""The lock file inside a run folder."""

_held: dict[Path, tuple[int, int]] = {}
"""Lock file -> (open descriptor, PID of the process that took it), for this process."""
_created: dict[Path, Path] = {}
"""Output lock file -> the outermost folder :func:`lock_output` created for it."""


def lock_run(run_dir: str | os.PathLike) -> None:
    """Make this process the only writer of ``run_dir`` (``<run_dir>/.lock``), or raise
    :class:`FolderLockedError` naming the process that is."""
    run_dir = resolved(run_dir)
    _lock(run_dir / RUN_LOCK, run_dir, "or train into another run_dir")


@contextmanager
def reading_run(run_dir: str | os.PathLike) -> Iterator[None]:
    """Read ``run_dir`` under a shared lock: refused (:class:`FolderLockedError`, naming the
    writer) while a process trains or calibrates it, so that no command reads a run, or a
    threshold, that is still changing. This process's own writing lock lets it read.

    Nothing is created in the run folder: without a lock file no process writes the run.
    """
    lock_file = resolved(run_dir) / RUN_LOCK
    if lock_file in _held:
        yield
        return
    fd = _open_for_reading(lock_file)
    if fd is None:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderLockedError(
                f"{lock_file.parent}: a process is writing this run ({_holder(fd)}): it is "
                "training or calibrating. Wait for it to finish, then run this command again."
            ) from None
        yield
    finally:
        os.close(fd)


def _open_for_reading(lock_file: Path) -> int | None:
    """The writer's lock file opened for a shared lock; None when there is none (no process
    writes the run now, and reading it creates nothing in it)."""
    try:
        return os.open(lock_file, os.O_RDONLY)
    except FileNotFoundError:
        return None


def unlock_run(run_dir: str | os.PathLike) -> None:
    """Release :func:`lock_run`'s lock before the process ends (training from the Python API:
    the session goes on, and other processes may read the run)."""
    _unlock(Path(run_dir).expanduser().resolve() / RUN_LOCK)


def holds_run(run_dir: str | os.PathLike) -> bool:
    """Whether this process is the writer of ``run_dir``."""
    return Path(run_dir).expanduser().resolve() / RUN_LOCK in _held


def lock_output(out: str | os.PathLike, *, beside: bool = False) -> None:
    """Make this process the only writer of the output folder ``out``, or raise
    :class:`FolderLockedError`.

    The lock file is ``<out>/.lock``, so that every file stays inside the folder the user
    named; with ``beside`` it is ``<out>.lock`` next to the folder, for a benchmark
    submission, where any extra file inside would be refused by the upload check.
    """
    out = resolved(out)
    lock_file = _output_lock_file(out, beside)
    created = outermost_missing(lock_file.parent)
    _lock(lock_file, out, "or write to another --out")
    if created is not None:
        _created[lock_file] = created


def unlock_output(out: str | os.PathLike, *, beside: bool = False) -> None:
    """Remove and release :func:`lock_output`'s lock before the process ends (a command that
    runs inside a longer process, as ff-predict does inside ff-demo).

    A folder that :func:`lock_output` created and that still holds no file (the command
    failed before writing anything) is removed: a failed command leaves nothing behind.
    """
    lock_file = _output_lock_file(resolved(out), beside)
    _unlock(lock_file)
    created = _created.pop(lock_file, None)
    if created is not None and not any(p.is_file() or p.is_symlink() for p in created.rglob("*")):
        shutil.rmtree(created, ignore_errors=True)


@contextmanager
def writing_output(out: Path, *, beside: bool = False) -> Iterator[None]:
    """Be the only writer of the output folder ``out`` while the block runs."""
    lock_output(out, beside=beside)
    try:
        yield
    finally:
        unlock_output(out, beside=beside)


def _output_lock_file(out: Path, beside: bool) -> Path:
    return out.with_name(out.name + ".lock") if beside else out / RUN_LOCK


def _lock(lock_file: Path, folder: Path, alternative: str) -> None:
    """Take ``lock_file`` for the rest of this process's life (again: nothing to do)."""
    if lock_file in _held:
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise FolderLockedError(
                f"{folder}: another process is writing this folder ({holder}, lock file "
                f"{lock_file.name}). Wait for it to finish, {alternative}."
            ) from None
        if _is_file_of(fd, lock_file):
            break
        os.close(fd)  # its holder removed the file while this process waited: take the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"PID {os.getpid()} on {socket.gethostname()}".encode())
    _held[lock_file] = (fd, os.getpid())


def _holder(fd: int) -> str:
    """Who holds the lock, as its file says (it may be a moment before the holder writes it)."""
    for _ in range(20):
        text = os.pread(fd, 512, 0).decode(errors="replace").strip()
        if text:
            return text
        time.sleep(0.05)
    return "PID unknown"


def _is_file_of(fd: int, path: Path) -> bool:
    """Whether ``path`` still is the file open as ``fd``."""
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


def _unlock(lock_file: Path) -> None:
    """Remove a lock file this process holds, then release its lock."""
    fd, pid = _held.pop(lock_file, (None, None))
    if fd is not None and pid == os.getpid():  # not in a forked child, which inherited it
        lock_file.unlink(missing_ok=True)
        os.close(fd)


@atexit.register
def _release() -> None:
    """On a normal exit, remove this process's lock files, then release their locks."""
    for lock_file in list(_held):
        _unlock(lock_file)
