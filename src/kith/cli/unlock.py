"""Where the profile lives, how its passphrase reaches the command, and who may hold it.

Unlocking is per command (docs/cli.md, "Unlocking"): each command asks for the passphrase,
unlocks the profile for its own duration and locks it again when it exits. There is no agent
process keeping a profile unlocked between commands, because an always-unlocked process is
exactly what a captor who seizes a running machine wants: its socket would answer them without
a passphrase. The price is one Argon2id run (about 0.5-1 s) per command; ``kith listen`` and
``kith chat`` are the long-running commands for when that matters.

The passphrase comes from the terminal (getpass, no echo) or, for scripts and tests, as one
line read from an inherited file descriptor (``--passphrase-fd N``). Never from the command
line (visible in ``ps`` and shell history) nor from the environment (inherited by every child
and readable in /proc by the same user): there is no option for either.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from kith.cli.errors import (
    NoProfile,
    PassphraseInputError,
    PassphraseUnavailable,
    ProfileBusy,
)

#: The vault refuses longer passphrases; reading stops a little after it so a runaway pipe
#: cannot make the command read forever.
MAX_PASSPHRASE_BYTES: Final = 1024


def default_profile() -> Path:
    """``$XDG_DATA_HOME/kith/profile``, else ``~/.local/share/kith/profile``.

    A relative XDG_DATA_HOME is ignored, as the XDG specification asks: it would put the
    profile wherever the command happened to be run.
    """
    base = os.environ.get("XDG_DATA_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".local" / "share"
    return root / "kith" / "profile"


def prepare_parent(profile: Path) -> None:
    """Create the directories above a new profile, private (0700) where we create them.

    Each missing level is made here, because ``mkdir(parents=True)`` would give the upper
    ones the default mode, and ``~/.local/share/kith`` readable by others tells them kith is
    installed.
    """
    missing = []
    for directory in (profile.parent, *profile.parent.parents):
        if directory.exists():
            break
        missing.append(directory)
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)


@contextlib.contextmanager
def hold_profile(profile: Path) -> Iterator[None]:
    """Hold an exclusive lock on the profile directory for the command's lifetime.

    The lock is ``flock`` on the directory itself, so it adds no file to the profile (a
    profile's files are exactly the vault's) and the kernel releases it when the process
    dies, even by kill -9. Raises :class:`NoProfile` or :class:`ProfileBusy`.
    """
    try:
        fd = os.open(profile, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise NoProfile(profile) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ProfileBusy(profile) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def read_passphrase_fd(fd: int) -> str:
    """One line from ``fd``, without its line ending.

    Read a byte at a time so that nothing after the first line is consumed: a script may pass
    the passphrase and then the messages on the same descriptor (``--passphrase-fd 0``). The
    descriptor is left open; it belongs to whoever passed it.
    """
    raw = bytearray()
    try:
        while len(raw) <= MAX_PASSPHRASE_BYTES:
            byte = os.read(fd, 1)
            if not byte or byte == b"\n":
                break
            raw += byte
        else:
            raise PassphraseInputError(f"the passphrase on descriptor {fd} is too long")
    except OSError as exc:
        raise PassphraseInputError(
            f"cannot read the passphrase from descriptor {fd}: {exc.strerror}"
        ) from None
    if raw.endswith(b"\r"):
        del raw[-1:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PassphraseInputError(f"the passphrase on descriptor {fd} is not UTF-8") from None
    if not text:
        raise PassphraseInputError(f"no passphrase on descriptor {fd}")
    return text


def prompt(text: str) -> str:
    """Ask on the terminal without echo. Refuses getpass's fallback to an echoing stdin."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", getpass.GetPassWarning)
        try:
            answer = getpass.getpass(text, stream=sys.stderr)
        except getpass.GetPassWarning:
            raise PassphraseUnavailable from None
        except EOFError:
            raise PassphraseInputError("no passphrase was typed") from None
    if not answer:
        raise PassphraseInputError("no passphrase was typed")
    return answer


def passphrase(fd: int | None) -> str:
    """The passphrase of an existing profile."""
    if fd is not None:
        return read_passphrase_fd(fd)
    return prompt("passphrase: ")


def new_passphrase(fd: int | None) -> str:
    """A new profile's passphrase: typed twice on a terminal, one line from ``fd`` otherwise."""
    if fd is not None:
        return read_passphrase_fd(fd)
    first = prompt("new passphrase: ")
    if prompt("the same passphrase again: ") != first:
        raise PassphraseInputError("the two passphrases differ; nothing was created")
    return first
