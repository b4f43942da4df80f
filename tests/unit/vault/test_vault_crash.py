"""A crash in the middle of a passphrase change: the vault opens with the old or the new one.

Two ways to crash: an injected failure between the steps of the write (in this process), and a
real SIGKILL of a child process at those same points and at random times.
"""

from __future__ import annotations

import os
import pathlib
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from kith.vault import Vault, WrongPassphrase, fsio
from kith.vault.vault import DB_NAMES, KEYFILE_NAME

from .conftest import PASSPHRASE, MakeVault

NEW = "the new passphrase"


def _opens_with(path: pathlib.Path) -> set[str]:
    """Which of the two passphrases open the vault (and the data is intact)."""
    result = set()
    for passphrase in (PASSPHRASE, NEW):
        try:
            with Vault.unlock(path, passphrase) as vault:
                assert vault.db.get("k") == b"precious"
                result.add(passphrase)
        except WrongPassphrase:
            pass
    return result


def _prepared(make_vault: MakeVault) -> pathlib.Path:
    with make_vault() as vault:
        vault.db.put("k", b"precious")
        return vault.path


class Boom(Exception):
    pass


def _boom(*args: object, **kwargs: object) -> None:
    raise Boom


@pytest.mark.parametrize(
    ("target", "attribute", "expected"),
    [
        (fsio, "atomic_write", PASSPHRASE),  # after the pending digest, before any file write
        (os, "replace", PASSPHRASE),  # temp file written and synced, not yet renamed
        (fsio, "fsync_dir", NEW),  # renamed, directory not yet synced, digest not final
    ],
)
def test_injected_failure_leaves_exactly_one_passphrase_working(
    make_vault: MakeVault,
    monkeypatch: pytest.MonkeyPatch,
    target: object,
    attribute: str,
    expected: str,
) -> None:
    path = _prepared(make_vault)
    with Vault.unlock(path, PASSPHRASE) as vault, monkeypatch.context() as patch:
        patch.setattr(target, attribute, _boom)
        with pytest.raises(Boom):
            vault.change_passphrase(PASSPHRASE, NEW)
    assert _opens_with(path) == {expected}
    assert sorted(p.name for p in path.iterdir()) == sorted([KEYFILE_NAME, *DB_NAMES])


def test_failure_while_finalising_the_digest(
    make_vault: MakeVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _prepared(make_vault)
    real = fsio.atomic_write

    def write_then_fail(*args: object, **kwargs: object) -> None:
        real(*args, **kwargs)  # type: ignore[arg-type]
        raise Boom

    with Vault.unlock(path, PASSPHRASE) as vault:
        monkeypatch.setattr(fsio, "atomic_write", write_then_fail)
        with pytest.raises(Boom):
            vault.change_passphrase(PASSPHRASE, NEW)
        monkeypatch.undo()
        # The same session can try again: the file on disk is accepted as "pending".
        vault.change_passphrase(NEW, "third")
    with Vault.unlock(path, "third") as vault:
        assert vault.db.get("k") == b"precious"


_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from kith.vault import Vault, fsio
    path, point, old, new = sys.argv[1:5]

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "before-rename":
        fsio.os.replace = die
    elif point == "after-rename":
        fsio.fsync_dir = die
    vault = Vault.unlock(path, old)
    if point == "loop":
        a, b = old, new
        while True:
            vault.change_passphrase(a, b)
            a, b = b, a
            sys.stdout.write("changed\\n")
            sys.stdout.flush()
    vault.change_passphrase(old, new)
    """
)


def _child(path: pathlib.Path, point: str, old: str = PASSPHRASE) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), point, old, NEW],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize(
    ("point", "expected"), [("before-rename", PASSPHRASE), ("after-rename", NEW)]
)
def test_killed_mid_change(make_vault: MakeVault, point: str, expected: str) -> None:
    path = _prepared(make_vault)
    proc = _child(path, point)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err
    if point == "before-rename":  # the killed process left its temporary file behind
        assert any(fsio.is_temp_name(p.name) for p in path.iterdir())
    assert _opens_with(path) == {expected}
    assert sorted(p.name for p in path.iterdir()) == sorted([KEYFILE_NAME, *DB_NAMES])


def test_killed_at_random_moments(make_vault: MakeVault) -> None:
    path = _prepared(make_vault)
    chooser = random.Random(os.getpid())
    for _ in range(4):
        proc = _child(path, "loop", old=PASSPHRASE)
        assert proc.stdout is not None
        # Wait for the child to be changing passphrases, then kill it at a random moment.
        deadline = time.monotonic() + 30
        line = b""
        while not line and time.monotonic() < deadline:
            line = proc.stdout.readline()
        assert line == b"changed\n", proc.stderr.read() if proc.stderr else b""
        time.sleep(chooser.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()
        opened = _opens_with(path)
        assert len(opened) == 1, opened
        # Continue from whichever passphrase now opens it.
        if opened == {NEW}:
            with Vault.unlock(path, NEW) as vault:
                vault.change_passphrase(NEW, PASSPHRASE)
