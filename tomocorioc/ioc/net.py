"""Loopback networking helpers shared by the demo, the benchmarks and the tests (no EPICS imports)."""
from __future__ import annotations

import socket
from typing import Dict, List


def free_port() -> int:
    """A loopback port free for both TCP and UDP (CA and PVA use both on the same number)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port")


def loopback_env(ca_ports: List[int], pva_port: int, pva_bcast: int) -> Dict[str, str]:
    """EPICS environment that keeps every CA/PVA server and client on loopback.

    Clients search every port in ``ca_ports`` by unicast (``127.0.0.1:PORT``);
    a server also needs ``EPICS_CA_SERVER_PORT`` set to its own port.
    """
    return {
        "EPICS_CA_ADDR_LIST": " ".join(f"127.0.0.1:{p}" for p in ca_ports), "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1", "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO", "EPICS_PVA_ADDR_LIST": "127.0.0.1",
        "EPICS_PVA_AUTO_ADDR_LIST": "NO", "EPICS_PVA_SERVER_PORT": str(pva_port),
        "EPICS_PVAS_SERVER_PORT": str(pva_port), "EPICS_PVA_BROADCAST_PORT": str(pva_bcast),
        "EPICS_PVAS_BROADCAST_PORT": str(pva_bcast), "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
    }


__all__ = ["free_port", "loopback_env"]
