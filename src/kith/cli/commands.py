"""The one-shot commands: parse, call the service, print. Nothing here decides anything the
service should (what is sent, when, to whom); it only chooses what to show and which exit code
tells a script what happened.

Every command that needs the relay ends with :meth:`ClientService.sync`, so that its effect
reaches the relay before the process exits; when the relay cannot be reached the change stays
in the vault and the command says so (exit code 4).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Final

from kith.cli import output
from kith.cli.codes import EXIT_OK, EXIT_UNREACHABLE
from kith.cli.errors import NeedsConfirmation
from kith.client.events import (
    ContactAdded,
    ContactConfirmed,
    ContactFailed,
    Event,
    KeyChanged,
)
from kith.client.model import ContactInfo, MessageState, SyncResult
from kith.client.service import ClientService
from kith.protocol.qr import terminal_lines

Command = Callable[[ClientService, argparse.Namespace], Awaitable[int]]

#: Events worth a line to a person even in a one-shot command (the rest shows in the output).
_NOTABLE: Final = (ContactAdded, ContactConfirmed, ContactFailed, KeyChanged)


async def names_of(service: ClientService) -> dict[str, str]:
    return {c.id: c.name for c in await service.contacts()}


async def sync(service: ClientService, args: argparse.Namespace) -> tuple[SyncResult, int]:
    """Sync, tell a person what happened on the side, and return the exit code it implies."""
    stream = service.events()
    events: list[Event] = []

    async def collect() -> None:
        async for event in stream:
            events.append(event)

    collector = asyncio.ensure_future(collect())
    try:
        result = await service.sync(args.timeout)
    finally:
        stream.close()  # the collector reads what was published, then ends
        await collector
    if not args.json:
        names = await names_of(service)
        for event in events:
            if isinstance(event, _NOTABLE):
                line = output.event_line(event, names)
                if line:
                    output.note(line.lstrip("-! "))
    code = EXIT_OK
    if result.unreachable:
        code = EXIT_UNREACHABLE
        if not args.json:
            waiting = (
                f"{result.queued} item(s) wait in the vault and go out with the next command "
                "that syncs"
                if result.queued
                else "showing what this device holds"
            )
            output.note(f"could not reach the relay: {waiting}")
    return result, code


def _read_stdin(what: str) -> str:
    """Text piped on stdin, or typed (one line) on a terminal."""
    if sys.stdin is None:
        return ""
    if sys.stdin.isatty():
        return input(f"{what}: ")
    return sys.stdin.read()


# ----------------------------------------------------------------------------- invitations


async def invite(service: ClientService, args: argparse.Namespace) -> int:
    info = await service.create_invitation(ttl=args.ttl)
    if args.json:
        output.emit(output.invitation_json(info))
        return EXIT_OK
    if args.qr:
        for line in terminal_lines(info.qr_text):
            output.say(line)
    output.say(info.uri)
    output.note(
        f"this invitation works once, until {output.local_time(info.expires_at)}: give it to "
        "one person only, face to face or over a channel you trust"
    )
    return EXIT_OK


async def accept(service: ClientService, args: argparse.Namespace) -> int:
    link = args.link if args.link not in (None, "-") else _read_stdin("invitation link")
    name = args.name
    if name is None:
        taken = set((await names_of(service)).values())
        name = next(f"contact-{n}" for n in range(1, len(taken) + 2) if f"contact-{n}" not in taken)
    contact = await service.accept_invitation(link.strip(), name)
    result, code = await sync(service, args)
    contact = await service.contact(contact.id)
    if args.json:
        output.emit({"contact": output.contact_json(contact), "sync": output.sync_json(result)})
        return code
    output.say(f"added {contact.name} ({contact.state.value})")
    output.note(
        f"compare safety numbers with {contact.name} in person: kith verify {contact.name}"
    )
    return code


# ----------------------------------------------------------------------------- contacts


async def contacts(service: ClientService, args: argparse.Namespace) -> int:
    result, code = await sync(service, args)
    found = await service.contacts()
    if args.json:
        output.emit(
            {"contacts": [output.contact_json(c) for c in found], "sync": output.sync_json(result)}
        )
        return code
    if not found:
        output.note("no contacts yet (kith invite, or kith accept LINK)")
    for c in found:
        output.say(output.contact_line(c))
    return code


async def verify(service: ClientService, args: argparse.Namespace) -> int:
    contact = await service.contact(args.contact)
    code = " ".join(args.code).strip()
    if args.show or not code:
        number = await service.safety_number(contact)
        if args.json:
            output.emit(
                {
                    "contact": output.contact_json(contact),
                    "safety_number": " ".join(number.groups),
                    "qr_payload": number.qr_payload(),
                }
            )
            return EXIT_OK
        if args.qr:
            for line in terminal_lines(number.qr_payload()):
                output.say(line)
        output.say(f"safety number with {contact.name}:")
        output.say(number.display())
        if args.show:
            return EXIT_OK
        if sys.stdin is None or not sys.stdin.isatty():
            output.note(f"to mark {contact.name} verified: kith verify {contact.name} DIGITS")
            return EXIT_OK
        # Blocking is fine: nothing else runs on the loop (no relay connection is open yet).
        code = input(f"the digits {contact.name}'s screen shows: ").strip()  # noqa: ASYNC250
        if not code:
            return EXIT_OK
    verified = await service.verify(contact, code)
    if args.json:
        output.emit({"contact": output.contact_json(verified)})
    else:
        output.say(f"{verified.name} is verified")
    return EXIT_OK


async def rename(service: ClientService, args: argparse.Namespace) -> int:
    contact = await service.rename(args.contact, args.new_name)
    if args.json:
        output.emit({"contact": output.contact_json(contact)})
    else:
        output.say(f"renamed to {contact.name}")
    return EXIT_OK


async def forget(service: ClientService, args: argparse.Namespace) -> int:
    contact = await service.contact(args.contact)
    if not args.yes:
        if sys.stdin is None or not sys.stdin.isatty():
            raise NeedsConfirmation("forgetting a contact cannot be undone: add --yes")
        # Blocking is fine: nothing else runs on the loop (no relay connection is open yet).
        question = f"forget {contact.name} and delete every message with them? [y/N] "
        answer = input(question)  # noqa: ASYNC250
        if answer.strip().lower() not in ("y", "yes"):
            output.note("nothing was changed")
            return EXIT_OK
    await service.forget(contact)
    if args.json:
        output.emit({"forgotten": output.contact_json(contact)})
    else:
        output.say(f"forgot {contact.name}")
    return EXIT_OK


# ----------------------------------------------------------------------------- messages


async def send(service: ClientService, args: argparse.Namespace) -> int:
    if args.text in (None, "-"):
        text = _read_stdin("message")
        text = text[:-1] if text.endswith("\n") else text
    else:
        text = args.text
    message = await service.send(args.contact, text)
    result, code = await sync(service, args)
    current = next(
        (m for m in reversed(await service.messages(message.contact_id, 50)) if m.id == message.id),
        message,
    )
    if current.state is MessageState.QUEUED:
        if code == EXIT_OK and not args.json:
            output.note(
                "the relay did not take the message in time: it waits in the vault and goes "
                "out with the next command that syncs"
            )
        code = EXIT_UNREACHABLE
    if args.json:
        names = await names_of(service)
        output.emit(
            {"message": output.message_json(current, names), "sync": output.sync_json(result)}
        )
        return code
    output.say(f"{current.state.value}")
    if result.received:
        output.note(f"{result.received} new message(s): kith inbox")
    return code


async def inbox(service: ClientService, args: argparse.Namespace) -> int:
    result, code = await sync(service, args)
    unread = await service.inbox(mark_read=not args.keep_unread)
    names = await names_of(service)
    if args.json:
        output.emit(
            {
                "messages": [output.message_json(m, names) for m in unread],
                "sync": output.sync_json(result),
            }
        )
        return code
    if not unread:
        output.note("no new messages")
    for m in unread:
        output.say(output.message_line(m, names))
    return code


async def messages(service: ClientService, args: argparse.Namespace) -> int:
    contact: ContactInfo = await service.contact(args.contact)
    result, code = await sync(service, args)
    found = await service.messages(contact, args.limit)
    await service.mark_read(contact)
    names = await names_of(service)
    if args.json:
        output.emit(
            {
                "contact": output.contact_json(await service.contact(contact.id)),
                "messages": [output.message_json(m, names) for m in found],
                "sync": output.sync_json(result),
            }
        )
        return code
    if not found:
        output.note(f"no messages with {contact.name}")
    for m in found:
        output.say(output.message_line(m, names))
    return code


async def sync_command(service: ClientService, args: argparse.Namespace) -> int:
    result, code = await sync(service, args)
    if args.json:
        output.emit({"sync": output.sync_json(result)})
    else:
        output.say(
            f"received {result.received}, sent {result.sent}, still queued {result.queued}"
        )
    return code


ONE_SHOT: Final[dict[str, Command]] = {
    "invite": invite,
    "accept": accept,
    "contacts": contacts,
    "verify": verify,
    "rename": rename,
    "forget": forget,
    "send": send,
    "inbox": inbox,
    "messages": messages,
    "sync": sync_command,
}
