"""Pod IPs for process nodes: addresses this machine answers on, without interfaces or namespaces.

Linux delivers all of 127/8 to the loopback interface, but the API server rejects loopback
addresses in EndpointSlices, so Services would never list such pods. A `local` route for
10.77.0.0/16 on lo (`ip route add local 10.77.0.0/16 dev lo`, root only, gone at reboot) makes that
range behave the same way with addresses the API accepts. `pod_range` adds the route when it can and
falls back to 127.77.0.0/16 otherwise. Each process node gets one /24 of the range.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys

ROUTED_RANGE = "10.77.0.0/16"
LOOPBACK_RANGE = "127.77.0.0/16"
ROUTE_COMMAND = ["ip", "route", "add", "local", ROUTED_RANGE, "dev", "lo"]


def is_local(pod_range: str) -> bool:
    """Whether this machine can listen on the range's addresses (bind to its first host address)."""
    address = str(next(ipaddress.ip_network(pod_range).hosts()))
    with socket.socket() as sock:
        try:
            sock.bind((address, 0))
        except OSError:
            return False
    return True


def pod_range() -> str:
    """ROUTED_RANGE if it is local or can be made so (as root), else LOOPBACK_RANGE (with a warning)."""
    if is_local(ROUTED_RANGE):
        return ROUTED_RANGE
    if os.geteuid() == 0 and subprocess.run(ROUTE_COMMAND, capture_output=True).returncode == 0:
        print(f"[local] made {ROUTED_RANGE} local for pod IPs: {' '.join(ROUTE_COMMAND)}", file=sys.stderr)
        return ROUTED_RANGE
    print(
        f"[local] process node pods get loopback IPs ({LOOPBACK_RANGE}), which EndpointSlices cannot list; "
        f"for Services to find them, run once (as root): {' '.join(ROUTE_COMMAND)}",
        file=sys.stderr,
    )
    return LOOPBACK_RANGE


def node_subnet(pod_range: str, block: int) -> str:
    """The `block`th /24 of `pod_range` (0-255)."""
    return str(list(ipaddress.ip_network(pod_range).subnets(new_prefix=24))[block % 256])
