"""A small caproto server for tests/test_ca_robust.py: ``python _robust_server.py stock|robust PREFIX``.

The same PVGroup on stock caproto or on tomocorioc's RobustContext, so a test
can read both with real clients and compare every reply.  ``Bump`` changes
every value, alarm and metadata the reads show; ``Lock`` takes away the read
right on ``Secret`` (for clients already connected too), ``Lock=2`` makes the
access check of ``Boom`` raise; ``Slow`` takes 1 s to write and ``Writes``
counts the puts in flight (RobustContext only).
"""
from __future__ import annotations

import asyncio
import sys

from tomocorioc.ioc.serve import configure_network  # before caproto is imported (it reads the env at import)


def main(kind: str, prefix: str) -> int:
    configure_network(["127.0.0.1"])
    from caproto import AccessRights, AlarmSeverity, AlarmStatus, ChannelType
    from caproto.asyncio.server import Context
    from caproto.server import PVGroup, pvproperty

    from tomocorioc.ioc.ca_robust import RobustContext

    class Group(PVGroup):
        running = pvproperty(name="ServerRunning", value="Running", dtype=str, read_only=True)
        val = pvproperty(name="Val", value=1.25, dtype=float, precision=3, units="mm", alarm_group="val",
                         upper_ctrl_limit=100.0,
                         lower_ctrl_limit=-100.0)
        count = pvproperty(name="Count", value=7, dtype=int, units="rows")
        mode = pvproperty(name="Mode", value="Idle", dtype=ChannelType.ENUM, enum_strings=["Idle", "Busy", "Done"])
        text = pvproperty(name="Text", value="hello", dtype=str)
        path = pvproperty(name="Path", value="/data/2bma/one.h5", dtype=ChannelType.CHAR, max_length=256,
                          report_as_string=True)
        arr = pvproperty(name="Arr", value=list(range(40)), dtype=int, max_length=40)
        secret = pvproperty(name="Secret", value=3.5, dtype=float)
        alm = pvproperty(name="Alm", value=2.0, dtype=float, alarm_group="alm")   # Bump: only its alarm changes
        meta = pvproperty(name="Meta", value=5.0, dtype=float, units="mm")        # Bump: only its units change
        lock = pvproperty(name="Lock", value=0, dtype=int)
        boom = pvproperty(name="Boom", value=1.0, dtype=float)   # its access check raises: an error reply
        slow = pvproperty(name="Slow", value=0, dtype=int)       # a put that takes 1 s
        writes = pvproperty(name="Writes", value=0, dtype=int, read_only=True)   # puts in flight (robust)

        @slow.putter
        async def slow(self, instance, value):
            await asyncio.sleep(1.0)
            return value

        @writes.getter
        async def writes(self, instance):
            return len(getattr(self.context, "writes_in_flight", ()))
        bump = pvproperty(name="Bump", value=0, dtype=int)

        @bump.putter
        async def bump(self, instance, value):
            n = int(value)
            sev = AlarmSeverity.MAJOR_ALARM if n % 2 else AlarmSeverity.NO_ALARM
            await self.val.write(1.25 + n)
            await self.val.alarm.write(status=AlarmStatus.HIHI if n % 2 else AlarmStatus.NO_ALARM,
                                       severity=sev)   # the alarm alone: the value stays
            await self.alm.alarm.write(status=AlarmStatus.LOLO if n % 2 else AlarmStatus.NO_ALARM,
                                       severity=AlarmSeverity.MINOR_ALARM if n % 2 else AlarmSeverity.NO_ALARM)
            await self.meta.write_metadata(units=f"mm{n}")
            await self.count.write(7 + n)
            await self.count.write_metadata(units=f"rows{n}")   # metadata alone: no new value
            await self.mode.write(["Idle", "Busy", "Done"][n % 3])
            await self.text.write(f"hello {n}")
            await self.path.write(f"/data/2bma/scan_{n:04d}.h5")
            await self.arr.write([i * (n + 1) for i in range(40)])
            return n

    many = {f"n{i:02d}": pvproperty(name=f"N{i:02d}", value=float(i) + 0.5, dtype=float) for i in range(100)}
    cls = type("ManyGroup", (Group,), many)
    group = cls(prefix=prefix)
    group.secret.check_access = lambda host, user: (AccessRights.NO_ACCESS if group.lock.value == 1
                                                    else AccessRights.READ)
    def boom(host, user):   # Lock=2: the check raises (after the client connected)
        if group.lock.value == 2:
            raise RuntimeError("access check failed")
        return AccessRights.READ | AccessRights.WRITE
    group.boom.check_access = boom
    context = {"stock": Context, "robust": RobustContext}[kind]

    async def serve() -> None:   # the Context's queues must be made inside the running loop
        group.context = context(group.pvdb, ["127.0.0.1"])
        await group.context.run(log_pv_names=False)
    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
