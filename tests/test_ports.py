"""``servegraph.ports.free_port``: ports outside the range outgoing connections draw from."""

from __future__ import annotations

import random
import socket

import pytest

from servegraph import ports
from servegraph.ports import EPHEMERAL_RANGE, free_port


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    low = int(EPHEMERAL_RANGE.read_text().split()[0]) if EPHEMERAL_RANGE.exists() else 32768
    ports = [free_port() for _ in range(64)]
    assert len(set(ports)) == len(ports), "never the same port twice"
    if low > 11000:
        assert all(10000 <= p < low for p in ports), (low, ports)
    for port in ports[:8]:
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))
            server.listen()


def test_a_port_another_process_listens_on_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first candidate a seeded picker would draw is taken by a listener: the next is used."""
    low = ports._ephemeral_low()
    first = random.Random(7).randrange(ports.LOWEST, low)
    with socket.socket() as listener:
        try:
            listener.bind(("127.0.0.1", first))
        except OSError:
            pytest.skip(f"port {first} is in use on this machine")
        listener.listen()
        monkeypatch.setattr(ports, "_random", random.Random(7))
        picked = free_port()
        assert picked != first and ports.LOWEST <= picked < low
