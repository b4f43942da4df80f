"""Runs fuzz/relay_frames_fuzz.py's entry point on hypothesis-generated inputs, so the harness
itself is exercised in CI (the long coverage-guided run uses atheris, outside CI)."""

from __future__ import annotations

import importlib.util
import pathlib
from types import ModuleType

from hypothesis import given, settings
from hypothesis import strategies as st

from kith.protocol import relay as p

HARNESS = pathlib.Path(__file__).resolve().parents[3] / "fuzz" / "relay_frames_fuzz.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("relay_frames_fuzz", HARNESS)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


harness = _load()

# Inputs that start like real frames reach deeper than uniform noise.
framed = st.builds(
    lambda t, corr, rest: bytes([p.VERSION, t]) + corr.to_bytes(4, "big") + rest,
    st.sampled_from([int(t) for t in p.FrameType] + [0, 0x7F, 0xFF]),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=600),
)


@settings(max_examples=3000)
@given(st.one_of(st.binary(max_size=700), framed))
def test_harness_survives(data: bytes) -> None:
    harness.test_one_input(data)
