"""Errors of the ``kith`` command itself (the service's own errors live in kith.client.errors).

Each carries one line a person understands; :mod:`kith.cli.main` prints it and maps the type
to an exit code. None of them ever contains a passphrase or message text.
"""

from __future__ import annotations

from pathlib import Path

from kith.errors import KithError


class CliError(KithError):
    """Base of the command's own errors."""


class NoProfile(CliError):
    """There is no profile where the command looked."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"no kith profile at {path} (create one with: kith init)")


class ProfileExists(CliError):
    """``kith init`` refuses to touch an existing profile."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"a profile already exists at {path}")


class ProfileBusy(CliError):
    """Another kith process has this profile open.

    Two processes working on one profile would each advance the same ratchets from the same
    saved state, and one of them would later overwrite the other's: messages lost, keys reused.
    So only one process may hold a profile at a time.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"the profile {path} is in use by another kith command "
            "(is kith listen or kith chat running? use that session, or stop it first)"
        )


class PassphraseUnavailable(CliError):
    """Neither a terminal to ask on nor ``--passphrase-fd`` to read from."""

    def __init__(self) -> None:
        super().__init__(
            "no terminal to ask for the passphrase on; give it with --passphrase-fd N"
        )


class PassphraseInputError(CliError):
    """What came through ``--passphrase-fd`` (or the prompts) cannot be a passphrase."""


class NeedsConfirmation(CliError):
    """A destructive command was run without a terminal and without ``--yes``."""
