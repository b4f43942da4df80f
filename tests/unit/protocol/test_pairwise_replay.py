"""The sequence-number window: never accepts a number twice, checked against a plain set."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kith.errors import DecryptError
from kith.protocol.replay import ENCODED_LEN, WINDOW, SeqWindow, WindowDecodeError


def test_in_order_and_out_of_order_accepted_once() -> None:
    w = SeqWindow()
    for seq in (0, 1, 5, 3, 2, 4):
        w = w.accept(seq)
    for seq in range(6):
        with pytest.raises(DecryptError):
            w.accept(seq)
    assert w.highest == 5 and w.missing() == ()


def test_refused_numbers_leave_the_window_alone() -> None:
    w = SeqWindow().accept(10)
    with pytest.raises(DecryptError):
        w.accept(10)
    assert w == SeqWindow().accept(10)  # immutable: nothing to undo


def test_too_old_is_refused_even_if_never_seen() -> None:
    w = SeqWindow().accept(WINDOW + 10)
    with pytest.raises(DecryptError):
        w.accept(10)
    w.accept(11)  # the oldest number still inside the window
    with pytest.raises(DecryptError):
        w.accept(-1)


def test_gaps_are_reported_and_can_be_given_up() -> None:
    w = SeqWindow()
    for seq in (0, 1, 4, 7):
        w = w.accept(seq)
    assert w.missing() == (2, 3, 5, 6)
    assert w.missing(limit=2) == (2, 3)
    w2 = w.give_up((3, 5, 99, 7))
    assert w2.missing() == (2, 6)
    with pytest.raises(DecryptError):
        w2.accept(3)  # a late original after its resend was requested
    w2.accept(2)


def test_jump_beyond_the_window_forgets_everything_below() -> None:
    w = SeqWindow().accept(0).accept(2 * WINDOW)
    assert w.bits == 1
    assert len(w.missing()) == WINDOW - 1


@settings(max_examples=300)
@given(st.lists(st.integers(0, 3 * WINDOW), max_size=60))
def test_matches_a_reference_set(seqs: list[int]) -> None:
    """Model: accept iff never accepted and not older than WINDOW below the highest."""
    w, seen, highest = SeqWindow(), set(), -1
    for seq in seqs:
        expect = seq not in seen and seq > highest - WINDOW
        try:
            w = w.accept(seq)
            accepted = True
        except DecryptError:
            accepted = False
        assert accepted == expect, (seq, highest)
        if accepted:
            seen.add(seq)
            highest = max(highest, seq)
    assert w.highest == highest


@settings(max_examples=200)
@given(st.lists(st.integers(0, 2**64 - 2), max_size=20))
def test_serialisation_round_trip(seqs: list[int]) -> None:
    w = SeqWindow()
    for seq in seqs:
        with contextlib.suppress(DecryptError):
            w = w.accept(seq)
    data = w.to_bytes()
    assert len(data) == ENCODED_LEN
    assert SeqWindow.from_bytes(data) == w


def test_malformed_state_is_a_typed_error() -> None:
    with pytest.raises(WindowDecodeError):
        SeqWindow.from_bytes(b"\x00" * 7)
    with pytest.raises(WindowDecodeError):
        SeqWindow.from_bytes(b"\x00" * (ENCODED_LEN + 1))
    # "nothing seen yet" with bits set is inconsistent
    with pytest.raises(WindowDecodeError):
        SeqWindow.from_bytes(b"\x00" * 8 + b"\x01" + b"\x00" * (ENCODED_LEN - 9))
