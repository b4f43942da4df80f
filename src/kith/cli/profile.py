"""Running a profile command: find the profile, hold it, unlock it, run, lock it again.

The order matters. The profile is held (an exclusive lock, :func:`kith.cli.unlock.hold_profile`)
before the passphrase is asked for, so nobody types a passphrase only to learn that another
command has the profile; and the service is locked (keys dropped, vault closed) before the
lock is released, whatever happened in between.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from kith.cli import output, unlock
from kith.cli.codes import EXIT_OK
from kith.cli.errors import NoProfile, ProfileExists
from kith.client.service import ClientOptions, ClientService
from kith.vault import NotAVault, VaultExists


def client_options(connect_timeout: float) -> ClientOptions:
    """The service's timings for one command (a seam the in-process tests shorten)."""
    return ClientOptions(connect_timeout=connect_timeout)


def run(args: argparse.Namespace, *, connect_timeout: float) -> int:
    profile: Path = args.profile if args.profile is not None else unlock.default_profile()
    options = client_options(connect_timeout)
    if args.command == "init":
        return _init(profile, args, options)
    with unlock.hold_profile(profile):
        passphrase = unlock.passphrase(args.passphrase_fd)
        return asyncio.run(_session(profile, passphrase, args, options))


async def _session(
    profile: Path, passphrase: str, args: argparse.Namespace, options: ClientOptions
) -> int:
    try:
        service = await ClientService.unlock(
            profile, passphrase, proxy=args.proxy, options=options
        )
    except NotAVault:
        raise NoProfile(profile) from None
    del passphrase
    async with service:
        if args.command in ("listen", "chat"):
            from kith.cli import live

            return await (live.listen if args.command == "listen" else live.chat)(service, args)
        from kith.cli.commands import ONE_SHOT

        return await ONE_SHOT[args.command](service, args)


def _init(profile: Path, args: argparse.Namespace, options: ClientOptions) -> int:
    if profile.exists() or profile.is_symlink():
        raise ProfileExists(profile)
    passphrase = unlock.new_passphrase(args.passphrase_fd)
    from kith.vault import params

    if args.insecure_kdf:
        chosen = params.INSECURE_FAST_PARAMS_FOR_TESTS_ONLY
    else:
        if not args.json:
            output.note("measuring this device to choose the passphrase cost (a few seconds)")
        chosen = params.calibrate()
    unlock.prepare_parent(profile)

    async def create() -> str:
        try:
            service = await ClientService.create(
                profile,
                passphrase,
                params=chosen,
                relay_url=args.relay,
                proxy=args.proxy,
                allow_insecure_params_for_tests=args.insecure_kdf,
                options=options,
            )
        except VaultExists:
            raise ProfileExists(profile) from None
        async with service:
            return service.relay_url

    relay = asyncio.run(create())
    if args.insecure_kdf:
        print(
            "kith: WARNING: --insecure-fast-kdf-for-tests: this profile's passphrase is "
            "cheap to guess. For tests and demos only; never for a real profile.",
            file=sys.stderr,
            flush=True,
        )
    if args.json:
        output.emit(
            {
                "profile": str(profile),
                "relay": relay,
                "kdf": {"memory_kib": chosen.memory_kib, "time_cost": chosen.time_cost},
            }
        )
    else:
        output.say(f"profile created at {profile}")
        output.note(
            "keep the passphrase in your head only; nothing can recover a forgotten one"
        )
    return EXIT_OK
