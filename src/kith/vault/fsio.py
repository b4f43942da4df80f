"""File-system helpers for the vault: private directories, atomic replacement, stale-file scrub.

A key file is replaced, never edited in place: the new contents go to a temporary file in the
same directory, which is flushed to stable storage (``fsync``), then renamed over the old file
(``os.replace`` is atomic on POSIX), and finally the directory itself is flushed so the rename
survives a power cut. At every instant the key file on disk is either entirely old or entirely
new, so a crash in the middle of a passphrase change leaves a vault that opens with the old or
the new passphrase, never with neither.

A crash can leave the temporary file behind. It holds a complete key file, possibly with a slot
for a passphrase the user has just retired, so :func:`scrub_stale_temps` overwrites such
leftovers with random bytes and removes them on the next unlock. Overwriting is best effort: on
flash storage with wear levelling the old blocks may survive (docs/protocol/vault.md).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Callable
from typing import Final

TEMP_MARKER: Final = ".tmp-"

Rng = Callable[[int], bytes]


def temp_name(target: pathlib.Path, rng: Rng) -> pathlib.Path:
    return target.with_name(f".{target.name}{TEMP_MARKER}{rng(8).hex()}")


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and TEMP_MARKER in name


def fsync_dir(directory: pathlib.Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_dir(path: pathlib.Path) -> None:
    """Create ``path`` with mode 0700 (whatever the umask); fails if it exists."""
    os.mkdir(path, 0o700)
    os.chmod(path, 0o700)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def atomic_write(path: pathlib.Path, data: bytes, rng: Rng) -> None:
    """Replace ``path`` with ``data`` atomically and durably; the file gets mode 0600."""
    tmp = temp_name(path, rng)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def read_whole(path: pathlib.Path, limit: int) -> bytes:
    """Read a small file in one go (at most ``limit`` bytes plus one, to detect oversize)."""
    with open(path, "rb") as fh:
        return fh.read(limit + 1)


def _overwrite_and_unlink(path: pathlib.Path, rng: Rng) -> None:
    try:
        size = path.stat().st_size
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            _write_all(fd, rng(size) if size else b"")
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        os.unlink(path)


def scrub_stale_temps(directory: pathlib.Path, rng: Rng) -> int:
    """Overwrite and delete temporary files a crash left in ``directory``. Returns how many."""
    count = 0
    for entry in os.scandir(directory):
        if is_temp_name(entry.name) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                _overwrite_and_unlink(pathlib.Path(entry.path), rng)
                count += 1
    if count:
        fsync_dir(directory)
    return count
