"""Access security and the audit trail on the caproto server: who may read and write which PV.

Each PV's group (``PVDef.asg``) is looked up in the rules of ``serve --acf
FILE`` (:mod:`tomocorioc.core.acf`).  The rights are given to caproto per
channel through each PV instance's ``check_access(hostname, username)``:
caproto sends them to the client when it creates the channel (``cainfo``
shows the PV read-only; libca refuses the put with "no write access") and
checks them again on every write, so a client that ignores its rights is
refused by the server all the same, before any value changes.

Host and user names are the ones the client reports (``HostNameRequest``,
``ClientNameRequest``), as in EPICS base; they are not authenticated.  With
``check_ip`` the host name a client reports is replaced by its address, and
HAG host names are resolved to addresses when the file is loaded (EPICS'
``asCheckClientIP``).

``ReloadAcf`` re-reads the file; the new rights are sent at once to every
connected channel (an ``AccessRightsResponse``, as an EPICS IOC does when its
rules change), so connected clients need not reconnect.  A file that no
longer parses leaves the old rules in force and the put fails with the reason.

Every put by a client, accepted, refused by validation or denied by the
rules, goes to the :class:`~.audit.AuditLog` with the client's identity, and
its one-line summary to ``AuditLast``.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
from caproto import AccessRights, AccessRightsResponse, ChannelType

from tomocorioc.core.acf import Access, AccessConfig, AcfError, parse_acf
from tomocorioc.ioc.audit import AuditLog, bounded
from tomocorioc.ioc.convert import PutError
from tomocorioc.ioc.pvdefs import PVDef

log = logging.getLogger(__name__)

_RIGHTS = {Access.NONE: AccessRights.NO_ACCESS, Access.READ: AccessRights.READ,
           Access.WRITE: AccessRights.READ | AccessRights.WRITE}


def load_acf(path: Path, check_ip: bool = False) -> AccessConfig:
    """Parse an ACF file (AcfError with file:line, or OSError's reason, as one line)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AcfError(f"cannot read access-security file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    config = parse_acf(text, str(path))
    if check_ip:
        config = _resolved(config)
    return config


def _resolved(config: AccessConfig) -> AccessConfig:
    """HAG host names -> their IPv4 addresses (a name that does not resolve matches nothing; logged)."""
    hags = {}
    for name, hosts in config.hags.items():
        addrs = set()
        for h in hosts:
            try:
                addrs.update(socket.gethostbyname_ex(h)[2])
            except OSError:
                log.warning("%s: HAG(%s) host %s does not resolve; it matches no client", config.source, name, h)
        hags[name] = frozenset(addrs)
    return AccessConfig(config.uags, hags, config.asgs, config.source)


def wire_value(data: Any, data_type: Any) -> Any:
    """A client's put value as sent (before caproto converts it): a string, a number or a list."""
    try:
        if isinstance(data, np.ndarray) and data.dtype == np.uint8 or data_type == ChannelType.CHAR:
            return bytes(np.asarray(data, dtype=np.uint8)).split(b"\0")[0].decode("utf-8", "replace")
        items = list(data)
    except TypeError:
        return bounded(data)
    items = [i.split(b"\0")[0].decode("utf-8", "replace") if isinstance(i, bytes) else i for i in items]
    return bounded(items[0] if len(items) == 1 else items)


class AccessControl:
    """The rules in force (``--acf``, ``--read-only``), their enforcement on a PVGroup, and the audit trail."""

    def __init__(self, acf: Optional[Path] = None, read_only: bool = False, check_ip: bool = False,
                 audit: Optional[AuditLog] = None) -> None:
        self.path = Path(acf).resolve() if acf is not None else None
        self.read_only = read_only
        self.check_ip = check_ip
        self.audit = audit
        self.config: Optional[AccessConfig] = load_acf(self.path, check_ip) if self.path is not None else None
        self.context: Any = None          # the caproto server Context, for pushing rights after a reload
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.on_entry: Optional[Callable[[Dict[str, Any]], None]] = None   # AuditLast

    def describe(self) -> str:
        """One line for the log: what is enforced."""
        if self.read_only:
            return "read-only mode: every PV is read-only to every client"
        if self.config is None:
            return "access security is off: every client may write every writable PV (serve --acf FILE)"
        return (f"access security from {self.path}: groups {', '.join(sorted(self.config.asgs))}"
                + (" (hosts matched by address)" if self.check_ip else ""))

    def rights(self, p: PVDef, host: str, user: str) -> AccessRights:
        """What a client (as it reports itself) may do with PV ``p``."""
        most = Access.WRITE if p.kind.writable and not self.read_only else Access.READ
        if self.config is not None:
            most = min(most, self.config.access(p.asg or "DEFAULT", user or "", host or ""))
        return _RIGHTS[most]

    # -- enforcement on the caproto PV instances --------------------------------------------
    def install(self, defs: Dict[str, PVDef], instances: Dict[str, Any]) -> None:
        """Give every PV instance its access check, and every writable one the audited write."""
        for name, p in defs.items():
            inst = instances[name]
            inst.check_access = (lambda host, user, p=p: self.rights(p, host, user))
            if p.kind.writable:
                self._audited_write(p, inst)

    def _audited_write(self, p: PVDef, inst: Any) -> None:
        original = inst.auth_write

        async def auth_write(hostname: str, username: str, data: Any, data_type: Any, metadata: Any, *,
                             flags: int = 0, user_address: Any = None) -> Any:
            old = inst.value
            who = {"host": hostname, "user": username, "address": user_address[0] if user_address else None,
                   "pv": inst.pvname, "name": p.name, "asg": p.asg, "old": bounded(old)}
            if AccessRights.WRITE not in self.rights(p, hostname, username):
                why = "read-only mode" if self.read_only else f"no write access (ASG {p.asg})"
                self._record({**who, "new": wire_value(data, data_type), "outcome": "denied", "reason": why})
                raise PutError(f"{p.name}: {why} for {username}@{hostname}")
            try:
                result = await original(hostname, username, data, data_type, metadata, flags=flags,
                                        user_address=user_address)
            except Exception as exc:   # noqa: BLE001 - recorded, then re-raised unchanged
                self._record({**who, "new": wire_value(data, data_type), "outcome": "refused",
                              "reason": str(exc) or type(exc).__name__})
                raise
            self._record({**who, "new": bounded(inst.value), "outcome": "accepted"})
            return result

        inst.auth_write = auth_write

    def _record(self, entry: Dict[str, Any]) -> None:
        if self.audit is not None:
            entry = self.audit.record(entry)
        if self.on_entry is not None:
            self.on_entry(entry)

    # -- reload ----------------------------------------------------------------------------------
    def reload(self) -> str:
        """Re-read the file (any thread); the new rights go to connected clients.  Its message, or PutError."""
        if self.path is None:
            raise PutError("ReloadAcf: access security is off (serve --acf FILE)")
        try:
            config = load_acf(self.path, self.check_ip)
        except AcfError as exc:
            raise PutError(f"ReloadAcf: {exc}; the previous rules stay in force") from None
        self.config = config
        log.warning("access security reloaded from %s", self.path)
        if self.loop is not None and self.context is not None:
            self.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self.push_rights()))
        return f"access security reloaded from {self.path.name}"

    def attach(self, context: Any, loop: asyncio.AbstractEventLoop) -> None:
        """The server whose connected channels get new rights after a reload."""
        self.context, self.loop = context, loop

    async def push_rights(self) -> int:
        """Send every connected channel its rights under the rules now in force; returns how many were sent."""
        sent = 0
        for circuit in list(getattr(self.context, "circuits", ())):
            for chan in list(circuit.circuit.channels.values()):
                try:
                    entry = self.context[chan.name]
                    rights = entry.check_access(circuit.client_hostname, circuit.client_username)
                    await circuit.send(AccessRightsResponse(cid=chan.cid, access_rights=rights))
                    sent += 1
                except Exception as exc:  # noqa: BLE001 - a closing channel or circuit: the others still get theirs
                    log.debug("access rights not sent to %s: %s", chan.name, exc)
        return sent


__all__ = ["AccessControl", "load_acf", "wire_value"]
