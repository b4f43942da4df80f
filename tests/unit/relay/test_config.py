"""Relay settings for the queue TTL: defaults, the TOML key, and refusals of nonsense."""

from __future__ import annotations

from pathlib import Path

import pytest

from kith.errors import ConfigError
from kith.relay.config import RelaySettings, load


def test_the_default_queue_ttl_is_90_days() -> None:
    limits = RelaySettings().server_config().relay.limits
    assert limits.queue_ttl_seconds == 90 * 86400
    assert limits.queue_ttl_seconds > limits.ttl_seconds


def test_queue_ttl_days_is_read_from_the_file(tmp_path: Path) -> None:
    f = tmp_path / "relay.toml"
    f.write_text("queue_ttl_days = 30\nttl_days = 7\n", encoding="utf-8")
    limits = load(f).server_config().relay.limits
    assert limits.queue_ttl_seconds == 30 * 86400
    assert limits.ttl_seconds == 7 * 86400


@pytest.mark.parametrize("value", ["20", "0", "-5", "nan", "inf", '"90"'])
def test_a_queue_ttl_shorter_than_message_expiry_or_absurd_is_refused(
    tmp_path: Path, value: str
) -> None:
    """A queue deleted before its messages expire would drop mail for an owner merely away."""
    f = tmp_path / "relay.toml"
    f.write_text(f"ttl_days = 21\nqueue_ttl_days = {value}\n", encoding="utf-8")
    with pytest.raises(ConfigError):
        load(f).server_config()


def test_stage_ms_reaches_the_sqlite_store(tmp_path: Path) -> None:
    f = tmp_path / "relay.toml"
    f.write_text(f'stage_ms = 250\ndb = "{tmp_path / "r.db"}"\n', encoding="utf-8")
    settings = load(f)
    settings.server_config()
    store = settings.make_store()
    assert store._stage_seconds == 0.25  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", ["-1", "1001", "nan", '"20"'])
def test_an_absurd_stage_ms_is_refused(tmp_path: Path, value: str) -> None:
    f = tmp_path / "relay.toml"
    f.write_text(f"stage_ms = {value}\n", encoding="utf-8")
    with pytest.raises(ConfigError):
        load(f).server_config()


def test_max_store_mb_becomes_the_store_wide_cap(tmp_path: Path) -> None:
    f = tmp_path / "relay.toml"
    f.write_text("max_store_mb = 512\n", encoding="utf-8")
    assert load(f).server_config().relay.limits.max_store_bytes == 512 * 2**20
    assert RelaySettings().server_config().relay.limits.max_store_bytes == 0  # no cap


@pytest.mark.parametrize("value", ["-1", "nan", "0.001", '"1"'])
def test_an_absurd_max_store_mb_is_refused(tmp_path: Path, value: str) -> None:
    f = tmp_path / "relay.toml"
    f.write_text(f"max_store_mb = {value}\n", encoding="utf-8")
    with pytest.raises(ConfigError):
        load(f).server_config()
