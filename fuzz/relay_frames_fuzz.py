"""Coverage-guided fuzzing of the relay frame decoders and the relay protocol core.

Run: ``.venv/bin/pip install atheris==3.1.0 && .venv/bin/python fuzz/relay_frames_fuzz.py``.
The property: no input makes the decoders raise anything but FrameError, and the relay core
answers any single frame with replies and effects only (never an exception).
tests/unit/protocol/test_fuzz_harnesses.py feeds the same entry point from hypothesis in CI.
"""

from __future__ import annotations

import contextlib
import sys

from kith.protocol import relay as p
from kith.relay import core

_BLOCK = 512


def test_one_input(data: bytes) -> None:
    for decode in (p.decode_command, p.decode_reply):
        with contextlib.suppress(p.FrameError):
            decode(data, _BLOCK)
    conn = core.RelayConnection(
        core.RelayConfig(block_size=_BLOCK), bytes(32), bytes, 0.0
    )
    allowed = core.Reply | core.CreateQueue | core.LoadQueue | core.StoreMessage | core.AckMessage
    for out in conn.receive(data, 0.0):
        assert isinstance(out, allowed), f"unexpected output {out!r}"


if __name__ == "__main__":
    import atheris  # type: ignore[import-not-found]

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
