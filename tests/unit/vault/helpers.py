"""Test helpers: snapshots of a vault directory, and building key files with chosen slots."""

from __future__ import annotations

import os
import pathlib

from kith.crypto.kdf import argon2id
from kith.vault import Vault
from kith.vault.keyfile import (
    Grant,
    KeyFile,
    Role,
    decode_keyfile,
    encode_keyfile,
    random_slot,
    scan,
    seal_slot,
)
from kith.vault.vault import KEYFILE_NAME


def snapshot(directory: pathlib.Path) -> dict[str, bytes]:
    """Every file in the directory (names and bytes), including hidden ones."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def all_bytes(directory: pathlib.Path) -> bytes:
    return b"".join(snapshot(directory).values())


def grant_of(directory: pathlib.Path, passphrase: str) -> tuple[int, Grant]:
    keyfile = decode_keyfile((directory / KEYFILE_NAME).read_bytes())
    found = scan(keyfile, passphrase.encode(), argon2id)
    assert found is not None
    return found


def relayout(
    directory: pathlib.Path,
    owner: str,
    owner_index: int,
    others: dict[int, str],
) -> None:
    """Rewrite the vault's key file: ``owner`` at ``owner_index``, and each other passphrase
    at its index with a REAL grant to the same profile; the owner manages all of them.
    Re-pairs the database with the new file by unlocking with accept_modified_keyfile."""
    _, grant = grant_of(directory, owner)
    old = decode_keyfile((directory / KEYFILE_NAME).read_bytes())
    managed = (1 << owner_index) | sum(1 << i for i in others)
    grant = Grant(Role.REAL, grant.profile, grant.keys, managed)
    slots = []
    for i in range(old.n):
        if i == owner_index:
            secret = owner
        elif i in others:
            secret = others[i]
        else:
            slots.append(random_slot(os.urandom))
            continue
        slots.append(
            seal_slot(
                grant,
                secret.encode(),
                level=old.level,
                index=i,
                n=old.n,
                rng=os.urandom,
                kdf=argon2id,
            )
        )
    (directory / KEYFILE_NAME).write_bytes(encode_keyfile(KeyFile(old.header, tuple(slots))))
    Vault.unlock(directory, owner, accept_modified_keyfile=True).close()
