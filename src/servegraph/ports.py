"""Free TCP ports for servers that cannot report the ports they bind: the peers the bench
starts (Triton, MLServer) and bench/hops.py. servegraph's own supervisors never guess: they
start ``servegraph serve`` on port 0 and read its ``--ports-file`` (``servegraph run``,
the tests' ``ServerProcess``, ``make demo-batching``).

Binding port 0 and closing the socket hands out a port from the kernel's ephemeral range,
the same range outgoing connections draw their local ports from. Between picking such a
port and the server binding it, any client socket on the machine may take it, and the
server dies with EADDRINUSE: a start that fails once in a few hundred. Ports below the
ephemeral range are never given to outgoing connections, so ``free_port`` picks there.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST = 10000
"""Ports below this are left to well-known and system services."""

_handed_out: set[int] = set()
_lock = threading.Lock()
_random = random.Random(os.getpid() ^ time.time_ns())


def _ephemeral_low() -> int:
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; other systems' ranges start higher (49152)


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, outside the ephemeral range, not handed out before
    by this process (a picked port is not bound until its server starts)."""
    low = _ephemeral_low()
    with _lock:
        if low - LOWEST >= 1000:
            for _ in range(200):
                port = _random.randrange(LOWEST, low)
                if port not in _handed_out and _bindable(host, port):
                    _handed_out.add(port)
                    return port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:  # no room below: the old way
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        _handed_out.add(port)
        return port
