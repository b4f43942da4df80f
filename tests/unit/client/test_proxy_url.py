"""Relay connections through a proxy always resolve names at the proxy."""

from __future__ import annotations

import pytest

from kith.client.relay import RelayError, socks5h


def test_socks5_is_upgraded_to_resolve_at_the_proxy() -> None:
    assert socks5h("socks5://127.0.0.1:9050") == "socks5h://127.0.0.1:9050"
    assert socks5h("SOCKS5H://127.0.0.1:9050") == "socks5h://127.0.0.1:9050"


@pytest.mark.parametrize(
    "bad", ["http://127.0.0.1:8080", "socks4://127.0.0.1:9050", "127.0.0.1:9050", "socks5://"]
)
def test_other_proxies_are_refused(bad: str) -> None:
    with pytest.raises(RelayError, match="SOCKS5"):
        socks5h(bad)
