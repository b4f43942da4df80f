"""Relay configuration: a TOML file, overridden by command-line flags.

Example (every key optional; these are the defaults)::

    host = "127.0.0.1"
    port = 7650
    store = "sqlite"            # sqlite | memory | redis
    db = "kith-relay.db"        # sqlite only
    stage_ms = 20               # sqlite only: hold a pushed message at least this long
    redis_url = "redis://127.0.0.1:6379/0"
    redis_prefix = "kith:"
    metrics_port = 0            # 0 = no metrics endpoint
    metrics_host = "127.0.0.1"
    max_connections = 20000
    block_size = 4096
    window = 64
    quota_messages = 1000
    quota_bytes = 16777216
    max_store_mb = 0            # all queues together; 0 = no cap (docs/operations.md)
    ttl_days = 21
    queue_ttl_days = 90         # a queue unused this long is deleted (docs/operations.md)
    rate_per_second = 20000
    rate_burst = 40000

Unknown keys are an error (a typo must not silently leave a default in force).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from kith.errors import ConfigError
from kith.relay.core import RelayConfig
from kith.relay.server import ServerConfig
from kith.relay.store.base import Limits, Store

STORES = ("sqlite", "memory", "redis")
_RELAY = RelayConfig()
_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class RelaySettings:
    host: str = "127.0.0.1"
    port: int = 7650
    store: str = "sqlite"
    db: str = "kith-relay.db"
    stage_ms: float = 20.0
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "kith:"
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    max_connections: int = 20_000
    block_size: int = _RELAY.block_size
    window: int = _RELAY.window
    quota_messages: int = _LIMITS.max_messages
    quota_bytes: int = _LIMITS.max_bytes
    max_store_mb: float = 0.0
    ttl_days: float = _LIMITS.ttl_seconds / 86400
    queue_ttl_days: float = _LIMITS.queue_ttl_seconds / 86400
    rate_per_second: float = _RELAY.rate_per_second
    rate_burst: int = _RELAY.rate_burst
    extra: dict[str, Any] = field(default_factory=dict)

    def with_overrides(self, **overrides: Any) -> RelaySettings:
        known = {f.name for f in fields(self)}
        clean = {k: v for k, v in overrides.items() if v is not None and k in known}
        return replace(self, **clean)

    def server_config(self) -> ServerConfig:
        if self.store not in STORES:
            raise ConfigError(f"store must be one of {', '.join(STORES)}, not {self.store!r}")
        if not 0 <= self.port <= 65535 or not 0 <= self.metrics_port <= 65535:
            raise ConfigError("ports must be within 0..65535")
        if self.quota_messages < 1 or self.quota_bytes < self.block_size or self.ttl_days <= 0:
            raise ConfigError(
                "quota_messages, quota_bytes (>= block_size) and ttl_days must be positive"
            )
        if not 0 <= self.max_store_mb < 2**40:
            raise ConfigError("max_store_mb must be 0 (no cap) or a positive number of MiB")
        if 0 < self.max_store_mb * 2**20 < self.block_size:
            raise ConfigError("max_store_mb must hold at least one message")
        if not 0 <= self.stage_ms <= 1000:
            raise ConfigError("stage_ms must be between 0 and 1000")
        if not self.queue_ttl_days >= self.ttl_days:
            # A queue must outlive the messages waiting in it: deleting it sooner would drop
            # undelivered messages before their own expiry, for an owner merely offline.
            raise ConfigError("queue_ttl_days must be at least ttl_days")
        try:
            relay = RelayConfig(
                block_size=self.block_size,
                window=self.window,
                limits=Limits(
                    max_messages=self.quota_messages,
                    max_bytes=self.quota_bytes,
                    ttl_seconds=int(self.ttl_days * 86400),
                    queue_ttl_seconds=int(self.queue_ttl_days * 86400),
                    max_store_bytes=int(self.max_store_mb * 2**20),
                ),
                rate_per_second=self.rate_per_second,
                rate_burst=self.rate_burst,
            )
        except (ValueError, OverflowError) as exc:  # OverflowError: an infinite TTL
            raise ConfigError(str(exc)) from exc
        return ServerConfig(
            host=self.host,
            port=self.port,
            max_connections=self.max_connections,
            metrics_host=self.metrics_host,
            metrics_port=self.metrics_port or None,
            relay=relay,
        )

    def make_store(self) -> Store:
        if self.store == "memory":
            from kith.relay.store.memory import MemoryStore

            return MemoryStore()
        if self.store == "redis":
            from kith.relay.store.redis import RedisStore

            return RedisStore(self.redis_url, prefix=self.redis_prefix)
        from kith.relay.store.sqlite import SQLiteStore

        return SQLiteStore(Path(self.db), stage_seconds=self.stage_ms / 1000)


def load(path: Path | None) -> RelaySettings:
    """Read a TOML file (or return defaults when ``path`` is None)."""
    if path is None:
        return RelaySettings()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    known = {f.name for f in fields(RelaySettings)} - {"extra"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s): {', '.join(unknown)}")
    defaults = RelaySettings()
    for key, value in data.items():
        want = type(getattr(defaults, key))
        ok = isinstance(value, want) or (want is float and isinstance(value, int))
        if not ok or isinstance(value, bool):
            raise ConfigError(f"{path}: {key} must be a {want.__name__}")
    return replace(defaults, **data)
