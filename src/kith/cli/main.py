"""The ``kith`` command: parse, unlock, call the client service, print.

Commands (``kith COMMAND --help`` for each; docs/cli.md for the whole story):

- ``init``: create a profile (calibrates Argon2id for this device);
- ``invite``, ``accept``: make and use one-time invitations;
- ``contacts``, ``verify``, ``rename``, ``forget``: the people in this profile;
- ``send``, ``inbox``, ``messages``, ``sync``: one-shot messaging;
- ``listen``, ``chat``: long-running, unlocked until Ctrl-C;
- ``relay serve``: run a relay; ``demo``: the quick start's two-profile demo.

Unlocking is per command: each asks for the passphrase on the terminal, or reads one line
from ``--passphrase-fd N``; never from the command line or the environment (see
:mod:`kith.cli.unlock` for why there is no agent).

Exit codes (stable, for scripts):

- 0   success
- 1   a kith error (bad input, no such contact, a relay refused...): one line on stderr
- 2   usage error (argparse)
- 3   a configuration error
- 4   a relay could not be reached: the change is saved and stays queued in the vault
      (it goes out with the next command that syncs); invite/accept created nothing
- 5   wrong passphrase
- 6   the invitation cannot be used (not valid, expired, already used, our own)
- 7   safety numbers do not match
- 70  internal error (a bug): one line naming the exception type
- 130 interrupted (Ctrl-C) during a one-shot command

A person never sees a traceback: errors are one clear line, ``kith: error: ...``.
``KITH_DEBUG=1`` shows the traceback for developers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from kith import __version__
from kith.cli.codes import (
    EXIT_CONFIG,
    EXIT_ERROR,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_INVITATION,
    EXIT_MISMATCH,
    EXIT_OK,
    EXIT_PASSPHRASE,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from kith.errors import ConfigError, KithError

__all__ = [
    "EXIT_CONFIG",
    "EXIT_ERROR",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_INVITATION",
    "EXIT_MISMATCH",
    "EXIT_OK",
    "EXIT_PASSPHRASE",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "main",
]

#: Where ``kith init`` points a profile when no ``--relay`` is given: a relay on this machine.
DEFAULT_RELAY = "ws://127.0.0.1:7650"
DEFAULT_TIMEOUT = 30.0
#: Never wait longer than this for one connection, even with a long --timeout.
MAX_CONNECT_TIMEOUT = 15.0

CLIENT_COMMANDS = frozenset(
    {"init", "invite", "accept", "contacts", "verify", "rename", "forget", "send", "inbox",
     "messages", "sync", "listen", "chat"}
)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 86400 seconds")
    return value


def _fd(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a file descriptor number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a file descriptor number is 0 or more")
    return value


def _profile_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The options every profile command takes, before or after the command name.

    On subcommands the default is SUPPRESS, so that a value given before the command name is
    not overwritten by the subcommand's default.
    """

    def d(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--profile", type=Path, metavar="DIR", default=d(None),
        help="profile directory (default: $XDG_DATA_HOME/kith/profile)",
    )
    parser.add_argument(
        "--passphrase-fd", dest="passphrase_fd", type=_fd, metavar="N", default=d(None),
        help="read the passphrase as one line from file descriptor N instead of the terminal",
    )
    parser.add_argument(
        "--timeout", type=_positive, metavar="SECONDS", default=d(DEFAULT_TIMEOUT),
        help=f"longest wait for the relays (default {DEFAULT_TIMEOUT:.0f})",
    )
    parser.add_argument(
        "--proxy", metavar="URL", default=d(None),
        help="SOCKS5 proxy for every relay connection, e.g. socks5h://127.0.0.1:9050 (Tor)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kith", description="kith: an end-to-end encrypted messenger for hunted communities"
    )
    parser.add_argument("--version", action="version", version=f"kith {__version__}")
    _profile_options(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _client_commands(sub)
    _relay_commands(sub)
    return parser


def _client_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    _profile_options(common, defaults=False)
    common.add_argument("--json", action="store_true", help="print JSON (keys in docs/cli.md)")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, parents=[common])

    init = command("init", "create a profile (asks for a new passphrase)")
    init.add_argument("--relay", default=DEFAULT_RELAY, metavar="URL",
                      help=f"relay for new invitations (default {DEFAULT_RELAY})")
    init.add_argument("--insecure-fast-kdf-for-tests", dest="insecure_kdf", action="store_true",
                      help=argparse.SUPPRESS)

    invite = command("invite", "make a one-time invitation link")
    invite.add_argument("--qr", action="store_true", help="also print it as a QR code")
    invite.add_argument("--ttl", type=_positive, default=7 * 86400.0, metavar="SECONDS",
                        help="how long it stays valid (default 7 days, at most 30)")

    accept = command("accept", "accept an invitation link")
    accept.add_argument("link", nargs="?", metavar="LINK",
                        help="the link; '-' or nothing reads it from stdin (keeps it out of "
                             "shell history)")
    accept.add_argument("--name", help="what to call this contact here (default contact-N)")

    command("contacts", "list contacts")

    verify = command("verify", "compare safety numbers with a contact")
    verify.add_argument("contact", metavar="CONTACT")
    verify.add_argument("code", nargs="*", metavar="DIGITS",
                        help="the digits the contact's screen shows (or a scanned code)")
    verify.add_argument("--show", action="store_true", help="only show this side's number")
    verify.add_argument("--qr", action="store_true", help="also show it as a QR code")

    rename = command("rename", "rename a contact")
    rename.add_argument("contact", metavar="CONTACT")
    rename.add_argument("new_name", metavar="NEW_NAME")

    forget = command("forget", "delete a contact and every message with them")
    forget.add_argument("contact", metavar="CONTACT")
    forget.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    send = command("send", "send a message")
    send.add_argument("contact", metavar="CONTACT")
    send.add_argument("text", nargs="?", metavar="TEXT",
                      help="the message; '-' or nothing reads it from stdin (keeps it out of "
                           "shell history and ps)")

    inbox = command("inbox", "show unread messages (and mark them read)")
    inbox.add_argument("--keep-unread", dest="keep_unread", action="store_true")

    history = command("messages", "show the messages with one contact")
    history.add_argument("contact", metavar="CONTACT")
    history.add_argument("--limit", type=int, default=50)

    command("sync", "send what is queued and fetch what waits at the relay")
    command("listen", "stay unlocked and print incoming messages and events until Ctrl-C")
    chat = command("chat", "stay unlocked: send stdin lines to CONTACT, print what arrives")
    chat.add_argument("contact", metavar="CONTACT")


def _relay_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo", help="two local profiles talking through a local relay, step by step"
    )
    demo.add_argument("--store", choices=("sqlite", "memory"), default="sqlite")

    relay = sub.add_parser("relay", help="run or manage a relay")
    relay_sub = relay.add_subparsers(dest="relay_command", required=True, metavar="ACTION")
    serve = relay_sub.add_parser("serve", help="serve a relay (binds 127.0.0.1 by default)")
    serve.add_argument("--config", type=Path, help="TOML configuration file")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 7650)")
    serve.add_argument("--store", choices=("sqlite", "memory", "redis"))
    serve.add_argument("--db", help="SQLite database path")
    serve.add_argument("--stage-ms", dest="stage_ms", type=float,
                       help="SQLite: hold a pushed message at least this long before writing "
                       "it (default 20; stretched while ACKs come late)")
    serve.add_argument("--redis-url", dest="redis_url", help="redis://host:port/db")
    serve.add_argument("--metrics-port", dest="metrics_port", type=int,
                       help="serve Prometheus metrics on 127.0.0.1:PORT")
    serve.add_argument("--block-size", dest="block_size", type=int)
    serve.add_argument("--ttl-days", dest="ttl_days", type=float)
    serve.add_argument("--quota-messages", dest="quota_messages", type=int)
    serve.add_argument("--max-store-mb", dest="max_store_mb", type=float,
                       help="cap on the messages held, all queues together (default 0: none)")
    serve.add_argument("--queue-ttl-days", dest="queue_ttl_days", type=float,
                       help="delete queues unused this many days (default 90)")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from kith.cli.demo import run_demo

            return asyncio.run(run_demo(store=args.store))
        if args.command == "relay" and args.relay_command == "serve":
            from kith.cli.relay import serve

            return serve(args)
        if args.command in CLIENT_COMMANDS:
            from kith.cli.hardening import forbid_core_dumps
            from kith.cli.profile import run

            forbid_core_dumps()
            # Half the time for connecting, so a dead relay is found (and said) in time.
            return run(args, connect_timeout=min(MAX_CONNECT_TIMEOUT, args.timeout / 2))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BaseException as exc:  # noqa: BLE001 -- the one place that turns any failure into one line
        return _fail(exc)
    return EXIT_USAGE


def _exit_code(exc: BaseException) -> tuple[int, str]:
    """The exit code for an error, and the line a person reads."""
    from kith.client.errors import (
        ExpiredInvitation,
        InvalidInvitation,
        OwnInvitation,
        SafetyNumberMismatch,
        UsedInvitation,
    )
    from kith.client.relay import RelayUnreachable
    from kith.vault import WrongPassphrase

    if isinstance(exc, SystemExit):
        raise exc
    if isinstance(exc, WrongPassphrase):
        return EXIT_PASSPHRASE, str(exc)
    if isinstance(exc, InvalidInvitation | ExpiredInvitation | UsedInvitation | OwnInvitation):
        return EXIT_INVITATION, str(exc)
    if isinstance(exc, SafetyNumberMismatch):
        return EXIT_MISMATCH, str(exc)
    if isinstance(exc, RelayUnreachable):
        return EXIT_UNREACHABLE, "could not reach the relay; nothing was done, try again later"
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG, str(exc)
    if isinstance(exc, KithError):
        return EXIT_ERROR, str(exc) or type(exc).__name__
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return EXIT_ERROR, f"{exc.strerror or type(exc).__name__}{where}"
    return EXIT_INTERNAL, f"internal error ({type(exc).__name__}); KITH_DEBUG=1 shows details"


def _fail(exc: BaseException) -> int:
    code, line = _exit_code(exc)
    if os.environ.get("KITH_DEBUG") == "1":
        import traceback

        traceback.print_exception(exc)
    print(f"kith: error: {line}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
