"""The ``kith`` command.

Exit codes (stable, for scripts):

- 0  success
- 1  a kith error (bad input, refused by a relay, wrong passphrase...): one line on stderr
- 2  usage error (argparse)
- 3  a configuration error
- 130 interrupted (Ctrl-C)

A person never sees a traceback: errors are one clear line. ``KITH_DEBUG=1`` shows the
traceback for developers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from kith import __version__
from kith.errors import ConfigError, KithError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kith", description="kith: an end-to-end encrypted messenger for hunted communities"
    )
    parser.add_argument("--version", action="version", version=f"kith {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run a relay on 127.0.0.1 and a short session against it")
    demo.add_argument("--store", choices=("sqlite", "memory"), default="sqlite")

    relay = sub.add_parser("relay", help="run or manage a relay")
    relay_sub = relay.add_subparsers(dest="relay_command", required=True, metavar="ACTION")
    serve = relay_sub.add_parser("serve", help="serve a relay (binds 127.0.0.1 by default)")
    serve.add_argument("--config", type=Path, help="TOML configuration file")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 7650)")
    serve.add_argument("--store", choices=("sqlite", "memory", "redis"))
    serve.add_argument("--db", help="SQLite database path")
    serve.add_argument("--redis-url", dest="redis_url", help="redis://host:port/db")
    serve.add_argument("--metrics-port", dest="metrics_port", type=int,
                       help="serve Prometheus metrics on 127.0.0.1:PORT")
    serve.add_argument("--block-size", dest="block_size", type=int)
    serve.add_argument("--ttl-days", dest="ttl_days", type=float)
    serve.add_argument("--quota-messages", dest="quota_messages", type=int)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from kith.cli.demo import run_demo

            return asyncio.run(run_demo(store=args.store))
        if args.command == "relay" and args.relay_command == "serve":
            from kith.cli.relay import serve

            return serve(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except ConfigError as exc:
        _fail(exc)
        return EXIT_CONFIG
    except KithError as exc:
        _fail(exc)
        return EXIT_ERROR
    return EXIT_USAGE


def _fail(exc: BaseException) -> None:
    if os.environ.get("KITH_DEBUG") == "1":
        import traceback

        traceback.print_exception(exc)
    print(f"kith: error: {exc}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
