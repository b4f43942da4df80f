"""The long-running commands: ``kith listen`` and ``kith chat``.

Both unlock once, start the service in long-running mode (every inbox subscribed, the outbox
flushed as soon as something is written) and print the service's events until Ctrl-C or
SIGTERM, which lock the service and end the command with exit code 0.

``kith chat CONTACT`` also reads stdin: each line is a message to CONTACT (with ``--json``, each
line is ``{"text": "..."}``). A line counts as *accepted* once the service has stored it in the
vault's outbox; ``--json`` prints ``{"event": "queued", ...}`` at that moment, so a script
knows exactly which lines will reach the contact even if the process is killed right after.
At the end of stdin, chat waits until the outbox has gone out (or ``--timeout`` passes) and
exits: 0 if everything left, 4 if something is still queued.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Callable

from kith.cli import output
from kith.cli.codes import EXIT_OK, EXIT_UNREACHABLE
from kith.client.events import ContactForgotten, Event, MessageReceived
from kith.client.service import ClientService, EventStream
from kith.errors import KithError


def _on_signals(stop: Callable[[], None]) -> Callable[[], None]:
    """Make SIGINT and SIGTERM call ``stop``; return a function that undoes it."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop)
            installed.append(sig)

    def undo() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)

    return undo


class _Printer:
    """Prints events as they come, for people or as JSON lines; keeps contact names fresh."""

    def __init__(self, service: ClientService, json_mode: bool, names: dict[str, str]) -> None:
        self.service = service
        self.json = json_mode
        self.names = names

    def event(self, event: Event) -> None:
        contact = getattr(event, "contact", None)
        if contact is not None:
            self.names[contact.id] = contact.name
        if isinstance(event, ContactForgotten):
            self.names.pop(event.contact_id, None)
        if self.json:
            output.emit(output.event_json(event, self.names))
            return
        line = output.event_line(event, self.names)
        if line is not None:
            output.say(line)


async def listen(service: ClientService, args: argparse.Namespace) -> int:
    """Print every event until Ctrl-C. Messages shown here count as read."""
    names = {c.id: c.name for c in await service.contacts()}
    stream = service.events()
    undo = _on_signals(stream.close)
    try:
        await service.start()
        printer = _Printer(service, args.json, names)
        unread = sum(c.unread for c in await service.contacts())
        _ready(args.json, unread, "listening; Ctrl-C to stop")
        async for event in stream:
            printer.event(event)
            if isinstance(event, MessageReceived):
                await service.mark_read(event.contact)
    finally:
        undo()
        stream.close()
    return EXIT_OK


def _ready(json_mode: bool, unread: int, how: str) -> None:
    """Tell whoever started us that the inboxes are subscribed (scripts wait for this)."""
    if json_mode:
        output.emit({"event": "ready", "unread": unread})
        return
    if unread:
        output.note(f"{unread} unread message(s) from before: kith inbox")
    output.note(how)


def _stdin_reader(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[bytes | None]) -> None:
    """Read stdin lines on a daemon thread (works for pipes, files and terminals alike, and a
    blocked read never keeps the process alive after the command is done)."""

    def put(item: bytes | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: the command has ended
            loop.call_soon_threadsafe(lines.put_nowait, item)

    def run() -> None:
        stream = getattr(sys.stdin, "buffer", None)
        try:
            while True:
                if stream is not None:
                    line = stream.readline()
                else:
                    text = sys.stdin.readline() if sys.stdin is not None else ""
                    line = text.encode("utf-8", "surrogateescape")
                if not line:
                    break
                put(line)
        except (OSError, ValueError):
            pass  # stdin closed under us: treat as its end
        put(None)

    threading.Thread(target=run, name="kith-stdin", daemon=True).start()


class BadLine(Exception):
    """A line of stdin that cannot be sent; the reason reads well to a person."""


def _parse_line(raw: bytes, json_mode: bool) -> str | None:
    """The message a line of stdin carries (None: an empty line, nothing to send).
    Raises :class:`BadLine` for a line that is not acceptable."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadLine("the line is not UTF-8") from None
    line = line.removesuffix("\n").removesuffix("\r")
    if not json_mode:
        return line if line.strip() else None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        raise BadLine('the line is not JSON (expected {"text": "..."})') from None
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        raise BadLine('expected {"text": "..."}')
    text: str = obj["text"]
    return text


async def chat(service: ClientService, args: argparse.Namespace) -> int:
    contact = await service.contact(args.contact)
    names = {c.id: c.name for c in await service.contacts()}
    stream = service.events()
    stopping = asyncio.Event()
    undo = _on_signals(stopping.set)
    printer = _Printer(service, args.json, names)
    lines: asyncio.Queue[bytes | None] = asyncio.Queue()
    code = EXIT_OK
    try:
        await service.start()
        unread = sum(c.unread for c in await service.contacts())
        _ready(args.json, unread, f"chat with {contact.name}: each line you enter is sent; "
               "Ctrl-D to end")
        show = asyncio.ensure_future(_show(service, stream, printer, contact.id))
        _stdin_reader(asyncio.get_running_loop(), lines)
        typing = asyncio.ensure_future(
            _send_lines(service, args, contact.id, lines, printer.names)
        )
        stop = asyncio.ensure_future(stopping.wait())
        done, _ = await asyncio.wait({typing, stop, show}, return_when=asyncio.FIRST_COMPLETED)
        if typing in done:
            code = typing.result()
        for task in (typing, stop):
            task.cancel()
        await asyncio.gather(typing, stop, return_exceptions=True)
    finally:
        undo()
        stream.close()
    with contextlib.suppress(asyncio.CancelledError):
        await show
    return code


async def _show(
    service: ClientService, stream: EventStream, printer: _Printer, contact_id: str
) -> None:
    async for event in stream:
        printer.event(event)
        if isinstance(event, MessageReceived) and event.contact.id == contact_id:
            await service.mark_read(event.contact)
        if isinstance(event, ContactForgotten) and event.contact_id == contact_id:
            return


async def _send_lines(
    service: ClientService,
    args: argparse.Namespace,
    contact_id: str,
    lines: asyncio.Queue[bytes | None],
    names: dict[str, str],
) -> int:
    """Send each line of stdin, in order; at its end wait for the outbox to go out."""
    number = 0
    while (raw := await lines.get()) is not None:
        number += 1
        try:
            text = _parse_line(raw, args.json)
            if text is None:
                continue
            message = await service.send(contact_id, text)
        except (BadLine, KithError) as exc:
            _line_error(args.json, number, str(exc))
            continue
        if args.json:
            output.emit(
                {"event": "queued", "line": number, "message": output.message_json(message, names)}
            )
    result = await service.sync(args.timeout)
    if result.queued:
        if not args.json:
            output.note(
                f"{result.queued} item(s) are still queued in the vault; they go out with the "
                "next command that syncs"
            )
        return EXIT_UNREACHABLE
    return EXIT_OK


def _line_error(json_mode: bool, number: int, reason: str) -> None:
    """A line that could not be sent: said once, and the chat goes on."""
    if json_mode:
        output.emit({"event": "error", "line": number, "error": reason})
    else:
        print(f"kith: error: line {number} not sent: {reason}", file=sys.stderr, flush=True)
