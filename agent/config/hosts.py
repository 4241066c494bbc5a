"""Host names and addresses in settings: which of them mean "this machine only"."""

from __future__ import annotations

import ipaddress


def is_localhost_name(host: str) -> bool:
    """Whether a host name is ``localhost`` (or under it), which always means this machine."""
    name = host.strip().strip("[]").lower()
    return name == "localhost" or name.endswith(".localhost")


def is_loopback(host: str) -> bool:
    """Whether a host (a listen address, a broker host, a Host header's name) is this
    machine only; a name is loopback only as ``localhost`` (names are never resolved)."""
    name = host.strip().strip("[]").lower()
    if is_localhost_name(name):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
