"""``tomocorioc demo``: the whole system live on loopback.

Starts the IOC (``tomocorioc serve``) and a simulated tomoScan
(``tomocorioc sim-tomoscan``) as subprocesses on free loopback ports, points
the IOC's automatic trigger at the scanner, and runs a short series of scans
through it: one is aborted (not queued), one has a per-dataset parameter that
mis-centres its try grid so its COR comes out off-series (Fix COR Outliers,
run by the IOC when the series' infers are done, corrects it before its full
reconstruction).  Progress is read live from the IOC's PVs; the end is a table
of found COR vs truth.  ``--offline`` runs the pipeline in-process instead.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from tomocorioc.ioc.net import free_ports, loopback_env, start_ca_repeater, stop_process

IOC_PREFIX = "TomoCorDemo:"
SCANNER_PREFIX = "TomoScanDemo:"
REPO_ADL = Path(__file__).resolve().parent.parent / "adl"


class _Proc:
    """A child server with its log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, cmd: List[str], env: Dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        self._fh = open(log, "ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._fh, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._fh.close()


class _Demo:
    """The live demo's state: children, CA channels, expectations."""

    def __init__(self, args: argparse.Namespace, outdir: Path) -> None:
        self.args, self.outdir = args, outdir
        self.data = outdir / "data"
        self.procs: List[_Proc] = []
        self.repeater: Optional[subprocess.Popen] = None
        self.pvs: Dict[str, Any] = {}

    # -- CA helpers (pyepics, imported after the environment is set) ------------------------
    def pv(self, name: str) -> Any:
        import epics
        if name not in self.pvs:
            self.pvs[name] = epics.PV(name, auto_monitor=False)
        return self.pvs[name]

    def get(self, name: str, as_string: bool = True) -> Any:
        return self.pv(name).get(as_string=as_string, timeout=5, use_monitor=False)

    def put(self, name: str, value: Any) -> None:
        pv = self.pv(name)
        if not pv.wait_for_connection(10):
            raise RuntimeError(f"cannot connect to {name}")
        if pv.put(value, wait=True, timeout=10) is None:
            raise RuntimeError(f"put {name}={value!r} timed out")

    def wait(self, what: str, predicate: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            for p in self.procs:
                if not p.alive():
                    raise RuntimeError(f"{p.name} stopped; see {p.log}")
            time.sleep(0.2)
        raise RuntimeError(f"timed out waiting for {what}")

    def ioc(self, name: str) -> str:
        return IOC_PREFIX + name

    def scanner(self, name: str) -> str:
        return SCANNER_PREFIX + name

    # -- steps ---------------------------------------------------------------------------
    def start(self) -> None:
        ioc_ca, scanner_ca, pva, pva_bcast, repeater = free_ports(5)
        ca = [ioc_ca, scanner_ca]
        loop_env = loopback_env(ca, pva, pva_bcast)
        # Our own repeater, detached from our stdout: one libca spawned would hold `demo | tee`'s pipe.
        own = dict(loop_env, EPICS_CA_REPEATER_PORT=str(repeater))
        env = dict(os.environ, **own, CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES", ""))
        os.environ.update(own)   # this process's pyepics reads it at its first channel
        self.repeater = start_ca_repeater(env)
        py = [sys.executable, "-m", "tomocorioc"]
        self.procs.append(_Proc("IOC", py + ["serve", "--prefix", IOC_PREFIX, "--state", str(self.outdir / "state"),
                                             "--data-root", str(self.data), "--interface", "127.0.0.1"],
                                dict(env, EPICS_CA_SERVER_PORT=str(ca[0])), self.outdir / "ioc.log"))
        self.procs.append(_Proc("sim-tomoscan", py + [
            "sim-tomoscan", "--prefix", SCANNER_PREFIX, "--outdir", str(self.data), "--interface", "127.0.0.1",
            "--width", str(self.args.width), "--rows", "8", "--nproj", "181", "--offset", "6.5",
            "--offset-jitter", "0.3", "--noise", "20000", "--frame-delay", "0.01", "--file-name", "sample"],
            dict(env, EPICS_CA_SERVER_PORT=str(ca[1])), self.outdir / "tomoscan.log"))
        print(f"IOC {IOC_PREFIX} and simulated tomoScan {SCANNER_PREFIX} starting on loopback "
              f"(logs in {self.outdir})", flush=True)
        self.wait("the IOC", lambda: self.get(self.ioc("ServerRunning")) == "Running", 120)
        self.wait("the simulated tomoScan", lambda: self.get(self.scanner("ServerRunning")) == "Running", 60)
        print("screens (in another shell, with this environment):", flush=True)
        exports = " ".join(f"{k}='{v}'" for k, v in sorted(loop_env.items())
                           if k.startswith("EPICS_CA_") or k.startswith("EPICS_PVA_"))
        adl = REPO_ADL if REPO_ADL.is_dir() else Path("adl")
        print(f"  export {exports}", flush=True)
        print(f"  python -m tomocorioc.ioc.pydm_launch {adl / 'tomoCor.adl'} P={IOC_PREFIX}", flush=True)
        print(f"  medm -x -macro P={IOC_PREFIX} {adl / 'tomoCor.adl'}", flush=True)

    def configure(self) -> None:
        for name, value in (("CenterSearchWidth", 12.0), ("CenterSearchStep", 0.5), ("MaxCorDelta", 5.0),
                            ("AutoFixOutliers", 1), ("SeriesBarrier", 1), ("TomoScanPrefix", SCANNER_PREFIX),
                            ("AutoTrigger", 1)):
            self.put(self.ioc(name), value)
        self.wait("the trigger link", lambda: "waiting for a scan" in str(self.get(self.ioc("TriggerStatus"))), 30)

    def scans(self, n: int, aborted: int, misset: int) -> List[str]:
        names = []
        for i in range(1, n + 1):
            name = f"sample_{i:04d}.h5"
            if i == misset:
                # A per-dataset parameter with a typo: the try grid sits 30 px off the axis.
                sidecar = self.data / f"sample_{i:04d}.tomocor.json"
                sidecar.write_text(json.dumps({"rotation_axis": self.args.width / 2 - 30.0}))
            if i == aborted:
                self.put(self.scanner("SimNextAbort"), 1)
            before = self.get(self.scanner("FullFileName"))
            self.put(self.scanner("StartScan"), 1)
            what = "aborted" if i == aborted else ("grid mis-set by its sidecar" if i == misset else "")
            print(f"scan {i}/{n}: {name} {('(' + what + ')') if what else ''}".rstrip(), flush=True)
            self.wait(f"scan {i}", lambda: self.get(self.scanner("FullFileName")) != before, 120)
            names.append(name)
            self.progress()
        return names

    def progress(self) -> None:
        g = self.get
        print(f"  IOC: {g(self.ioc('ReconStatus'))} | queue {g(self.ioc('QueueLength'))}, "
              f"done {g(self.ioc('NumDone'))}, failed {g(self.ioc('NumFailed'))} | "
              f"trigger: {g(self.ioc('TriggerStatus'))}", flush=True)

    def finish(self, expected: int) -> None:
        end = time.monotonic() + 600
        last = 0.0
        while time.monotonic() < end:
            done = int(self.get(self.ioc("NumDone"), as_string=False) or 0)
            failed = int(self.get(self.ioc("NumFailed"), as_string=False) or 0)
            busy = self.get(self.ioc("Busy"))
            if done + failed >= expected and busy == "Done":
                return
            if time.monotonic() - last > 3:
                self.progress()
                last = time.monotonic()
            time.sleep(0.3)
        raise RuntimeError("the queue did not finish in 10 minutes")

    def table(self, names: List[str], aborted: int, misset: int) -> int:
        truth = json.loads((self.data / "truth.json").read_text())
        print(f"\n{'file':<17} {'true COR':>9} {'found':>9} {'error':>7}  {'source':<14} status", flush=True)
        worst, bad = 0.0, 0
        for i, name in enumerate(names, 1):
            path = str(self.data / name)
            t = truth.get(name, {})
            if i == aborted:
                queued = int(self.get(self.ioc("QueueLength"), as_string=False))
                try:
                    self.put(self.ioc("SelectFile"), path)
                except RuntimeError:
                    pass
                time.sleep(0.2)
                # SelectFile refuses a file that is not in the queue and keeps its old value.
                in_queue = self.get(self.ioc("SelectFile")) == path
                print(f"{name:<17} {t.get('cor', float('nan')):>9.2f} {'-':>9} {'-':>7}  {'-':<14} "
                      f"aborted: {'QUEUED (wrong)' if in_queue else 'not queued'} ({queued} in queue)", flush=True)
                bad += in_queue
                continue
            try:
                self.put(self.ioc("SelectFile"), path)
            except RuntimeError:
                print(f"{name:<17} not in the queue", flush=True)
                bad += 1
                continue
            time.sleep(0.2)
            cor = float(self.get(self.ioc("Selected:Cor"), as_string=False))
            src = self.get(self.ioc("Selected:CorSource"))
            status = self.get(self.ioc("Selected:Status"))
            err = cor - float(t["cor"])
            worst = max(worst, abs(err))
            note = " <- Fix COR Outliers" if i == misset else ""
            print(f"{name:<17} {t['cor']:>9.2f} {cor:>9.2f} {err:>+7.2f}  {src:<14} {status}{note}", flush=True)
        kept = self.args.outdir or self.args.keep
        print(f"\nworst |error| {worst:.2f} px; outputs in {self.data.parent / 'data_rec'}"
              + ("" if kept else " (a temporary folder, removed now: --outdir DIR or --keep keeps it)"), flush=True)
        (self.outdir / "demo_result.json").write_text(json.dumps({"worst_error_px": worst, "problems": bad}))
        return 0 if worst <= 1.0 and bad == 0 else 1

    def stop(self) -> None:
        for pv in self.pvs.values():
            pv.disconnect()
        for p in reversed(self.procs):
            p.stop()
        stop_process(self.repeater)


def run_demo(args: argparse.Namespace) -> int:
    """Run the live demo; exit 1 if a COR is off by more than 1 px or the aborted scan was queued."""
    if args.offline:
        return run_offline_demo(args)
    outdir = Path(args.outdir) if args.outdir else Path(tempfile.mkdtemp(prefix="tomocorioc-demo-"))
    (outdir / "data").mkdir(parents=True, exist_ok=True)
    n = max(4, int(args.n))
    aborted, misset = 3, 4
    demo = _Demo(args, outdir)
    try:
        demo.start()
        demo.configure()
        names = demo.scans(n, aborted, misset)
        demo.finish(n - 1)
        code = demo.table(names, aborted, misset)
        if args.keep_running:
            print("\nserving until Ctrl-C (the screens above work now)", flush=True)
            try:
                while all(p.alive() for p in demo.procs):
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return code
    except (RuntimeError, OSError) as exc:
        print(f"tomocorioc demo: {exc}", file=sys.stderr)
        return 1
    finally:
        demo.stop()
        if not args.outdir and not args.keep:
            shutil.rmtree(outdir, ignore_errors=True)


def run_offline_demo(args: argparse.Namespace) -> int:
    """No EPICS: simulate, run try -> infer -> full through the service's own queue and workers, compare."""
    from tomocorioc.core.params import ReconParams
    from tomocorioc.core.settings import ServiceSettings
    from tomocorioc.service.local import slots_for
    from tomocorioc.service.service import Service
    from tomocorioc.sim import SimConfig, simulate_series

    outdir = Path(args.outdir) if args.outdir else Path(tempfile.mkdtemp(prefix="tomocorioc-demo-"))
    data = outdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    n = max(1, int(args.n))
    print(f"simulating {n} scans ({args.width} px wide) in {data} ...", flush=True)
    cfg = SimConfig(ncols=int(args.width), nrows=8, nproj=181, offset=7.3, noise=20000, phantom="beads", seed=1)
    truth = simulate_series(data, cfg, n, name="demo")
    settings = ServiceSettings(params=ReconParams(search_width=20.0, search_step=0.5),
                               hold_full_on_review=False)   # a demo has no operator to accept a COR
    service = Service(None, slots_for(None), {"backend": "auto", "device": args.device}, settings)
    ids = service.enqueue([str(data / t["file"]) for t in truth])
    service.start()
    try:
        service.wait_idle(3600)
    finally:
        service.stop()
    rows = {r.id: r for r in service.queue.rows()}
    print(f"{'file':<16} {'true COR':>9} {'found':>9} {'error':>7} {'conf':>5}  status")
    worst = 0.0
    for rid, t in zip(ids, truth):
        row = rows[rid]
        if row.status not in ("done", "review") or row.cor is None:
            print(f"{t['file']:<16} {t['cor']:>9.2f} {'-':>9} {'-':>7} {'-':>5}  FAILED: {row.error or row.status}")
            worst = float("inf")
            continue
        err = row.cor - t["cor"]
        worst = max(worst, abs(err))
        conf = f"{row.confidence:>5.2f}" if row.confidence is not None else f"{'-':>5}"
        print(f"{t['file']:<16} {t['cor']:>9.2f} {row.cor:>9.2f} {err:>+7.2f} {conf}  "
              f"{'review' if row.needs_review else 'ok'}")
    print(f"outputs: {data.parent / (data.name + '_rec')}")
    return 0 if worst <= 2.0 else 1


def add_demo_arguments(demo: argparse.ArgumentParser) -> None:
    """Options of ``tomocorioc demo``."""
    demo.add_argument("--outdir", type=Path, help="where to write (default: a temporary folder, removed after)")
    demo.add_argument("--n", type=int, default=5, help="scans in the series (default 5, at least 4)")
    demo.add_argument("--width", type=int, default=128, help="detector width of the simulated scans (default 128)")
    demo.add_argument("--keep-running", action="store_true", help="keep the IOC serving after the table")
    demo.add_argument("--keep", action="store_true", help="keep the temporary folder")
    demo.add_argument("--offline", action="store_true", help="no EPICS: run the pipeline in-process")
    demo.add_argument("--device", help="torch device for --offline")


__all__ = ["run_demo", "add_demo_arguments"]
