"""Fixtures for vault tests.

Every vault here uses the real Argon2id with parameters far below anything safe, so the suite
stays fast. The fixture's name says so on purpose: copying it into production code should look
wrong to any reviewer.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest

from kith.crypto.kdf import Argon2idParams
from kith.vault import UnlockedVault, Vault
from kith.vault.params import INSECURE_FAST_PARAMS_FOR_TESTS_ONLY

PASSPHRASE = "correct horse battery staple"  # noqa: S105 (a test vault's passphrase)

MakeVault = Callable[..., UnlockedVault]


@pytest.fixture
def insecure_fast_params_for_tests_only() -> Argon2idParams:
    return INSECURE_FAST_PARAMS_FOR_TESTS_ONLY


@pytest.fixture
def make_vault(
    tmp_path: pathlib.Path, insecure_fast_params_for_tests_only: Argon2idParams
) -> MakeVault:
    """Create a vault under tmp_path; returns it unlocked. Name and passphrase optional."""
    counter = iter(range(1000))

    def make(passphrase: str = PASSPHRASE, name: str | None = None, **kw: object) -> UnlockedVault:
        path = tmp_path / (name or f"vault{next(counter)}")
        return Vault.create(
            path,
            passphrase,
            insecure_fast_params_for_tests_only,
            allow_insecure_params_for_tests=True,
            **kw,  # type: ignore[arg-type]
        )

    return make
