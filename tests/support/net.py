"""Small socket helpers shared by the test support classes."""

from __future__ import annotations

import random
import socket
import struct
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def bound_socket(host: str = LOOPBACK) -> socket.socket:
    """A listening-ready TCP socket bound to a kernel-chosen free port (no race)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


def _ephemeral_low() -> int:
    try:
        return int(_EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def reserved_port(host: str = LOOPBACK) -> int:
    """A free port *below* the kernel's ephemeral range.

    For servers that bind by number and must get the same port back after a restart:
    outgoing connections never take a port from this range, so nothing else in the test
    process grabs it while the server is down.
    """
    high = _ephemeral_low() - 1
    low = min(15000, high - 1000)
    for _ in range(200):
        port = random.randint(low, high)
        if _port_is_free(host, port):
            return port
    raise RuntimeError(f"no free TCP port in {low}-{high}")


def set_linger_zero(sock: Any) -> None:
    """Make the next close of ``sock`` send a TCP RST instead of a FIN."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
