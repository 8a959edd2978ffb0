"""The VM's primary IPv4 address: the source address of its default route.

The API server advertises it (so the ``kubernetes`` Service has an endpoint
pods can reach), and the real node's kubelet uses it as ``--node-ip``.
"""

from __future__ import annotations

import json
import subprocess


def primary_ipv4() -> str:
    """``ip route get`` towards a public address (nothing is sent); falls back
    to the first global IPv4 address when there is no default route."""
    proc = subprocess.run(["ip", "-j", "-4", "route", "get", "198.51.100.1"], capture_output=True, text=True)
    if proc.returncode == 0:
        routes = json.loads(proc.stdout or "[]")
        if routes and routes[0].get("prefsrc"):
            return routes[0]["prefsrc"]
    addrs = json.loads(subprocess.run(["ip", "-j", "-4", "addr", "show", "scope", "global"],
                                      capture_output=True, text=True, check=True).stdout or "[]")
    for link in addrs:
        for info in link.get("addr_info", []):
            if info.get("family") == "inet" and not info["local"].startswith("127."):
                return info["local"]
    raise RuntimeError("no global IPv4 address on this machine")
