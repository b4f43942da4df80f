"""Runs fuzz/invitation_fuzz.py's entry point on a few thousand hypothesis inputs, so the
harness and its property (only kith errors, one encoding per invitation, a refused input never
uses the invitation up) are checked in CI; the long coverage-guided run uses atheris."""

from __future__ import annotations

import importlib.util
import pathlib
import random
from types import ModuleType

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kith.crypto.olm import CRYPTO
from kith.protocol import pairwise as pw
from tests.unit.protocol.pairwise_support import NOW, make_inbox

HARNESS = pathlib.Path(__file__).resolve().parents[3] / "fuzz" / "invitation_fuzz.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("invitation_fuzz", HARNESS)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


harness = _load()

_r = random.Random(1).randbytes
_GENUINE = pw.create_invitation(inbox=make_inbox(_r), now_ms=NOW, rng=_r, crypto=CRYPTO).invitation
_RAW = _GENUINE.to_bytes()


@st.composite
def near_invitations(draw: st.DrawFn) -> bytes:
    """A genuine invitation with a few bytes changed, cut or added: reaches the deep paths."""
    data = bytearray(_RAW)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=4))


@st.composite
def near_blocks(draw: st.DrawFn) -> bytes:
    """Blocks with a valid envelope header around random Olm bytes."""
    kind = draw(st.sampled_from([0, 1, 2]))
    body = draw(st.binary(min_size=1, max_size=400))
    key = draw(st.binary(min_size=32, max_size=32)) if kind == 0 else b""
    return bytes([1, kind]) + len(body).to_bytes(2, "big") + key + body


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=600), near_invitations(), near_blocks()))
def test_harness_survives(data: bytes) -> None:
    harness.TestOneInput(data)


def test_harness_accepts_the_genuine_invitation() -> None:
    harness.TestOneInput(_RAW)  # parses, re-encodes, verifies
