"""Exit codes of the ``kith`` command (stable, for scripts; listed in docs/cli.md)."""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
#: A kith error not covered below (bad input, no such contact, a relay refused...).
EXIT_ERROR: Final = 1
#: The command line itself is wrong (argparse).
EXIT_USAGE: Final = 2
#: A configuration file or flag is invalid.
EXIT_CONFIG: Final = 3
#: A relay could not be reached. What the command changed is saved in the vault and waits
#: there (a message stays queued and goes out with the next command that syncs); a command
#: that cannot work without the relay (invite, accept) created nothing.
EXIT_UNREACHABLE: Final = 4
#: The passphrase opens nothing in this profile.
EXIT_PASSPHRASE: Final = 5
#: The invitation cannot be used: not an invitation, forged, expired, already used, or ours.
EXIT_INVITATION: Final = 6
#: The safety numbers do not match: the contact stays unverified.
EXIT_MISMATCH: Final = 7
#: A bug in kith: the one-line message names the exception type; KITH_DEBUG=1 shows more.
EXIT_INTERNAL: Final = 70
#: Interrupted by Ctrl-C (one-shot commands; listen and chat end with 0 on Ctrl-C).
EXIT_INTERRUPTED: Final = 130
