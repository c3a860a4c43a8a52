"""Whether a host names this machine: the one exception to "https only" for URLs.

Settings (the upstream), budgets (webhooks) and the CLI's remote mode all accept plain
http only to a loopback host. Standard library only, so the CLI can use it while parsing.
"""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback"]


def is_loopback(host: str) -> bool:
    """``localhost``, or a literal IPv4/IPv6 loopback address (brackets allowed)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
