"""`kith relay serve` flags reach the relay's configuration and its checks."""

from __future__ import annotations

import pytest

from kith.cli.main import EXIT_CONFIG, main


def test_queue_ttl_flag_is_checked_against_message_expiry(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A queue must outlive the messages waiting in it: 1 day < the 21-day message expiry.
    assert main(["relay", "serve", "--port", "0", "--queue-ttl-days", "1"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.startswith("kith: error:") and "queue_ttl_days" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
