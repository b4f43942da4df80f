"""Coverage-guided fuzzing of everything that parses what a stranger can hand a kith user:
invitation bytes and links, safety-code QR payloads, and the first block on an invitation
queue (which anyone holding the invitation can send).

Run: ``.venv/bin/pip install atheris==3.1.0 && .venv/bin/python fuzz/invitation_fuzz.py``.
The property: no input raises anything but a :class:`kith.errors.KithError`; an invitation
that parses re-encodes to the same bytes; and a pending invitation is never used up by input
that was refused. tests/unit/protocol/test_invitation_fuzz.py feeds the same entry point from
hypothesis in CI.
"""

from __future__ import annotations

import base64
import contextlib
import random
import sys

from kith.crypto.olm import CRYPTO
from kith.errors import KithError
from kith.protocol import envelope, pairwise, safety
from kith.protocol.invitation import Invitation

_NOW = 1_760_000_000_000
_rng = random.Random(0).randbytes  # noqa: S311 - ids for a fixed fixture, not key material
_PENDING = pairwise.create_invitation(
    inbox=pairwise.InboxQueue("ws://127.0.0.1:7001", _rng(16), _rng(16), 4096, _rng(32)),
    now_ms=_NOW,
    rng=_rng,
    crypto=CRYPTO,
)


def TestOneInput(data: bytes) -> None:
    try:
        invitation = Invitation.from_bytes(data)
    except KithError:
        pass
    else:
        assert invitation.to_bytes() == data, "an invitation must have one encoding"
        with contextlib.suppress(KithError):
            invitation.verify(_NOW, CRYPTO)

    text = data.decode("utf-8", errors="replace")
    encoded = base64.b32encode(data).decode("ascii").rstrip("=")
    for link in (text, "kith:invite/" + encoded, "KITH:INVITE/" + text):
        with contextlib.suppress(KithError):
            Invitation.from_uri(link)
    for payload in (text, "KITH:VERIFY/" + encoded):
        with contextlib.suppress(KithError):
            safety.parse_qr_payload(payload)

    for decode in (envelope.decode_envelope, envelope.decode_inner):
        with contextlib.suppress(KithError):
            decode(data)

    # The first block on the invitation queue, padded like a relay would deliver it.
    block = data[:4096] + bytes(max(0, 4096 - len(data)))
    for candidate in (data, block):
        try:
            _PENDING.receive(candidate, now_ms=_NOW, rng=_rng)
        except KithError:
            pass
        else:  # pragma: no cover - would need a valid Olm pre-key message from fuzz input
            raise AssertionError("random input completed a handshake")
    assert not _PENDING.used, "refused input used up the invitation"


if __name__ == "__main__":
    import atheris  # type: ignore[import-untyped]

    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
