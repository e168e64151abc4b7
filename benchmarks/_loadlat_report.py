"""bench_load_latency's figures: one window's analysis from the clients' records, and the report."""
from __future__ import annotations

import argparse
import math
import os
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence, Tuple

# Helper modules next to this file (the script's folder is on sys.path when run as a script).
from _common import pct, ratio

# What a window runs (jobs, the 8 load clients) and the goals.
PHASES = ("idle", "loaded", "jobs", "clients")
JOBS = {"idle": False, "loaded": True, "jobs": True, "clients": False}
CLIENTS = {"idle": False, "loaded": True, "jobs": False, "clients": True}
SETTING_PV = "MaxCorDelta"
PROBE_PVS = (SETTING_PV, "NumRunning", "NumDone", "Watchdog", "ServerRunning")
N_READERS = N_MONITORS = 4
GOAL_ACK_P99 = 0.020
GOAL_MONITOR = 0.100
SPY_RATE = 100


def ms(x: float) -> str:
    """Seconds as milliseconds for the tables; '–' for nan."""
    return "–" if x != x else (f"{x * 1e3:.2f}" if x < 0.1 else f"{x * 1e3:.0f}")


def share(xs: Sequence[float], limit: float) -> str:
    return "–" if not xs else f"{sum(1 for x in xs if x <= limit) / len(xs):.1%}"


def analyse(status_names: Sequence[str], kind: str, w: Dict[str, Any], probe: List[List[Any]],
            mons: List[List[List[Any]]], rstats: List[Dict[str, Any]], t0: float, t1: float, running0: float,
            done0: float) -> Dict[str, Any]:
    """Figures of one window from the writer's reply and the monitors' records."""
    sent = {round(v, 4): wall for v, wall in zip(w["values"], w["wall"])}
    # settings PV: per client kind, delay of every (value, client) pair, and how many arrived
    set_delay: Dict[str, List[float]] = {"probe": [], "monitors": []}
    delivered = {"probe": 0, "monitors": 0}
    expected = {"probe": len(sent), "monitors": len(sent) * len(mons)}
    i_set_probe = PROBE_PVS.index(SETTING_PV)
    i_set_mon = len(status_names)

    def settings_from(recs: List[List[Any]], idx: int, who: str) -> None:
        seen = set()
        for i, arr, _ts, num in recs:
            if i != idx or num is None:
                continue
            key = round(num, 4)
            if key in sent and key not in seen:
                seen.add(key)
                set_delay[who].append(arr - sent[key])
        delivered[who] += len(seen)

    settings_from(probe, i_set_probe, "probe")
    for recs in mons:
        settings_from(recs, i_set_mon, "monitors")
    # context from the probe: share of the window with NumRunning >= 2, rows finished, lowest watchdog
    i_run, i_done, i_wd = (PROBE_PVS.index(n) for n in ("NumRunning", "NumDone", "Watchdog"))
    running = [(arr, num) for i, arr, _ts, num in probe if i == i_run and num is not None]
    both = share_ge(running, 2, t0, t1, running0)
    done_vals = [num for i, _arr, _ts, num in probe if i == i_done and num is not None]
    wd = [num for i, _arr, _ts, num in probe if i == i_wd and num is not None]
    out: Dict[str, Any] = {
        "puts": len(w["ack"]), "put_fails": w["fails"], "ack": w["ack"],
        "set_delay": set_delay["probe"] + set_delay["monitors"], "set_delay_probe": set_delay["probe"],
        "set_delay_monitors": set_delay["monitors"], "set_delivered": delivered, "set_expected": expected,
        "both_busy": both, "rows_done": max(done_vals) - done0 if done_vals else 0,
        "watchdog_min_probe": min(wd) if wd else None,
    }
    # status PVs at the 4 monitors: delay from the CA timestamp, completeness, Elapsed gaps
    if mons:
        names = status_names
        elapsed = {names.index(f"Slot{n}:Elapsed") for n in (1, 2)}   # each published every 0.5 s
        i_wd_m = names.index("Watchdog")
        i_sr_m = names.index("ServerRunning")
        delays: List[float] = []
        per_update: Dict[Tuple[int, float], int] = defaultdict(int)
        gaps: List[float] = []
        wd_min: Optional[float] = None
        stopped = 0
        for recs in mons:
            last_el: Dict[int, float] = {}
            for i, arr, ts, num in recs:
                if i >= len(names) or ts < t0 or ts > t1:      # settings PV, or written outside the window
                    continue
                delays.append(arr - ts)
                per_update[(i, round(ts, 6))] += 1
                if i in elapsed:          # per slot; a slot between two jobs publishes 0.0 then pauses
                    if i in last_el and num:
                        gaps.append(arr - last_el[i])
                    last_el[i] = arr
                if i == i_wd_m and num is not None:
                    wd_min = num if wd_min is None else min(wd_min, num)
                if i == i_sr_m and num == 0:
                    stopped += 1
        complete = sum(1 for n in per_update.values() if n >= len(mons))
        out.update({"status_delay": delays, "status_updates": len(per_update),
                    "status_complete": complete, "elapsed_gap_max": max(gaps) if gaps else None,
                    "elapsed_updates": len(gaps), "watchdog_min": wd_min, "server_stopped": stopped})
    if rstats:
        reads = sum(r["reads"] for r in rstats)
        secs = max(r["seconds"] for r in rstats)
        sweeps = [s for r in rstats for s in r["sweeps"]]
        out.update({"reads_per_s": reads / secs if secs > 0 else 0.0, "read_fails": sum(r["fails"] for r in rstats),
                    "sweep_p50": pct(sweeps, 50), "sweep_p99": pct(sweeps, 99)})
    return out

def share_ge(timeline: List[Tuple[float, float]], level: int, t0: float, t1: float, start: float) -> float:
    """Share of [t0, t1] during which the last value seen (by arrival) was >= ``level``; ``start`` is the
    value when the window opened."""
    cur, t, busy = start, t0, 0.0
    for arr, num in sorted(timeline):
        arr = min(max(arr, t0), t1)
        if cur >= level:
            busy += arr - t
        cur, t = num, arr
    if cur >= level:
        busy += t1 - t
    return busy / (t1 - t0) if t1 > t0 else 0.0


def report(a: argparse.Namespace, r: Dict[str, Any]) -> None:
    """Print the tables (and the goal lines) of a finished run from its results."""
    by: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
    for w in r["windows"]:
        by[w["kind"]].append(w)

    def cat(kind: str, key: str) -> List[float]:
        return [x for w in by[kind] for x in w.get(key, [])]

    summary: Dict[str, Any] = {}
    print()
    print(f"## Settings put -> ack and settings-PV monitor delay ({a.rounds} rounds x {a.phase_seconds:g} s per "
          f"phase, one put every {a.put_period * 1e3:.0f} ms; monitor delay = arrival at each monitoring client "
          "- the writer's put start)")
    print()
    print("| phase | puts | put->ack p50 ms | p99 ms | max ms | monitor delay p50 ms | p99 ms | max ms "
          "| within 100 ms | delivered |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind in a.phases:
        ack, md = cat(kind, "ack"), cat(kind, "set_delay")
        got = sum(sum(w["set_delivered"].values()) for w in by[kind])
        exp = sum(sum(w["set_expected"].values()) for w in by[kind])
        fails = sum(w["put_fails"] for w in by[kind])
        print(f"| {kind} | {len(ack)}{f' ({fails} failed)' if fails else ''} | {ms(pct(ack, 50))} "
              f"| {ms(pct(ack, 99))} | {ms(max(ack) if ack else float('nan'))} | {ms(pct(md, 50))} "
              f"| {ms(pct(md, 99))} | {ms(max(md) if md else float('nan'))} | {share(md, GOAL_MONITOR)} "
              f"| {got / max(1, exp):.1%} |")
        summary[kind] = {"puts": len(ack), "put_fails": fails, "ack_p50_ms": pct(ack, 50) * 1e3,
                         "ack_p99_ms": pct(ack, 99) * 1e3, "ack_max_ms": (max(ack) if ack else math.nan) * 1e3,
                         "mon_p50_ms": pct(md, 50) * 1e3, "mon_p99_ms": pct(md, 99) * 1e3,
                         "mon_max_ms": (max(md) if md else math.nan) * 1e3,
                         "mon_within_100ms": sum(1 for x in md if x <= GOAL_MONITOR) / max(1, len(md)),
                         "mon_delivered": got / max(1, exp)}
    if "idle" in by:
        print()
        print("| ratio to idle | put->ack p50 | p99 | max | monitor delay p50 | p99 | max |")
        print("|---|---|---|---|---|---|---|")
        i_ack, i_md = cat("idle", "ack"), cat("idle", "set_delay")
        for kind in a.phases:
            if kind == "idle":
                continue
            ack, md = cat(kind, "ack"), cat(kind, "set_delay")
            print(f"| {kind} / idle | {ratio(pct(ack, 50), pct(i_ack, 50))} "
                  f"| {ratio(pct(ack, 99), pct(i_ack, 99))} "
                  f"| {ratio(max(ack), max(i_ack))} | {ratio(pct(md, 50), pct(i_md, 50))} "
                  f"| {ratio(pct(md, 99), pct(i_md, 99))} | {ratio(max(md), max(i_md))} |")
    print()
    print("Settings-PV monitor delay by client (ms, p50 / p99 / max):")
    print()
    print("| phase | probe (monitors 5 PVs) | 4 load monitors (143 PVs each) |")
    print("|---|---|---|")
    for kind in a.phases:
        p, m = cat(kind, "set_delay_probe"), cat(kind, "set_delay_monitors")
        fm = "–" if not m else f"{ms(pct(m, 50))} / {ms(pct(m, 99))} / {ms(max(m))}"
        print(f"| {kind} | {ms(pct(p, 50))} / {ms(pct(p, 99))} / {ms(max(p)) if p else '–'} | {fm} |")
    mon_kinds = [k for k in a.phases if CLIENTS[k]]
    if mon_kinds:
        print()
        print("## Status PVs at the 4 monitors (delay = arrival - the update's CA timestamp)")
        print()
        print("| phase | updates (distinct) | reached all 4 | delay p50 ms | p99 ms | max ms | within 100 ms "
              "| largest gap between Slot Elapsed updates | lowest Watchdog | ServerRunning=Stopped seen |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for kind in mon_kinds:
            ws = by[kind]
            d = cat(kind, "status_delay")
            upd = sum(w["status_updates"] for w in ws)
            comp = sum(w["status_complete"] for w in ws)
            gaps = [w["elapsed_gap_max"] for w in ws if w.get("elapsed_gap_max") is not None]
            wds = [w["watchdog_min"] for w in ws if w.get("watchdog_min") is not None]
            stopped = sum(w["server_stopped"] for w in ws)
            if not upd:
                print(f"| {kind} | 0 (nothing changed: no job ran) | – | – | – | – | – | – "
                      f"| {min(wds) if wds else 'no change (4)'} | {stopped} |")
                continue
            print(f"| {kind} | {upd} | {comp / max(1, upd):.1%} | {ms(pct(d, 50))} | {ms(pct(d, 99))} "
                  f"| {ms(max(d) if d else float('nan'))} | {share(d, GOAL_MONITOR)} "
                  f"| {('%.2f s' % max(gaps)) if gaps else '– (no job ran)'} "
                  f"| {min(wds) if wds else 'no change (4)'} | {stopped} |")
            summary[kind].update({"status_updates": upd, "status_complete": comp / max(1, upd),
                                  "status_p50_ms": pct(d, 50) * 1e3, "status_p99_ms": pct(d, 99) * 1e3,
                                  "status_max_ms": (max(d) if d else math.nan) * 1e3,
                                  "status_within_100ms": sum(1 for x in d if x <= GOAL_MONITOR) / max(1, len(d)),
                                  "elapsed_gap_max_s": max(gaps) if gaps else None})
    print()
    print(f"## Context (per window, mean over rounds; CPU in % of one core, {os.cpu_count()} cores; other = host "
          "busy - this benchmark's processes: the machine may be shared)")
    print()
    print("| phase | both slots running | rows finished / window | IOC CPU | workers CPU | clients CPU "
          "| host busy (other processes) | reads/s (4 readers) | reader sweep p50 / p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind in a.phases:
        ws = by[kind]

        def mean(key: str) -> float:
            xs = [w[key] for w in ws if w.get(key) is not None]
            return sum(xs) / len(xs) if xs else float("nan")
        rd = "–" if not CLIENTS[kind] else f"{mean('reads_per_s'):.0f}"
        sw = "–" if not CLIENTS[kind] else f"{ms(mean('sweep_p50'))} / {ms(mean('sweep_p99'))}"
        busy = f"{mean('both_busy'):.0%}" if JOBS[kind] else "–"
        print(f"| {kind} | {busy} | {mean('rows_done'):.1f} | {mean('cpu_ioc'):.0%} | {mean('cpu_workers'):.0%} "
              f"| {mean('cpu_clients'):.0%} | {mean('cpu_host'):.0%} ({mean('cpu_other'):.0%}) | {rd} | {sw} |")
        summary[kind].update({"cpu_host": mean("cpu_host"), "cpu_other": mean("cpu_other"),
                              "both_busy": mean("both_busy"), "cpu_ioc": mean("cpu_ioc"),
                              "cpu_workers": mean("cpu_workers"), "cpu_clients": mean("cpu_clients")})
    print()
    print("## IOC threads (schedstat; % of the window: on a CPU / runnable but waiting for a CPU)")
    print()
    names = sorted({n for w in r["windows"] for n in w.get("threads", {})},
                   key=lambda n: -sum(w.get("threads", {}).get(n, (0, 0))[0] for w in r["windows"]))
    shown = [n for n in names if n in ("MainThread", "ioc-put_0")] + \
            [n for n in names if n not in ("MainThread", "ioc-put_0")][:3]
    print("| phase | " + " | ".join(shown) + " | all threads |")
    print("|---|" + "---|" * (len(shown) + 1))
    for kind in a.phases:
        cells = []
        for n in shown + [None]:
            vals = [w["threads"].get(n, (0.0, 0.0)) if n else
                    tuple(map(sum, zip(*w["threads"].values()))) for w in by[kind] if w.get("threads")]
            if not vals:
                cells.append("–")
                continue
            c = sum(v[0] for v in vals) / len(vals)
            q = sum(v[1] for v in vals) / len(vals)
            cells.append(f"{c:.0%} / {q:.0%}")
        print(f"| {kind} | " + " | ".join(cells) + " |")
    spied = [w for w in r["windows"] if w.get("pyspy")]
    for w in spied:
        print()
        print(f"## py-spy of the IOC during the {w['kind']} window of round {w['round'] + 1} "
              f"({SPY_RATE} Hz, --nonblocking; % of the window active; raw: {w['pyspy_file']})")
        for th, t in list(w["pyspy"].items())[:4]:
            print()
            print(f"{th}: active {t['active']:.0%}")
            for what, f in t["top"][:7]:
                print(f"  {f:6.1%}  {what}")
    r["summary"] = summary
    print()
    print("## Goal")
    print()
    lo = summary.get("loaded")
    if lo is None:
        print("no loaded phase run")
    else:
        idle = summary.get("idle", {})
        ok_ack = lo["ack_p99_ms"] <= GOAL_ACK_P99 * 1e3
        print(f"* settings put -> ack p99 under load {lo['ack_p99_ms']:.2f} ms (idle "
              f"{idle.get('ack_p99_ms', math.nan):.2f} ms) vs goal <= 20 ms: {'MET' if ok_ack else 'NOT MET'}")
        sd = lo.get("status_max_ms", math.nan)
        ok_mon = (lo["mon_max_ms"] <= GOAL_MONITOR * 1e3 and lo["mon_delivered"] >= 1.0
                  and (sd != sd or sd <= GOAL_MONITOR * 1e3))
        print(f"* every monitor update within 100 ms under load: settings PV max {lo['mon_max_ms']:.1f} ms "
              f"({lo['mon_within_100ms']:.1%} within, {lo['mon_delivered']:.1%} delivered; idle max "
              f"{idle.get('mon_max_ms', math.nan):.1f} ms), status PVs max {sd:.1f} ms "
              f"({lo.get('status_within_100ms', math.nan):.1%} within): {'MET' if ok_mon else 'NOT MET'}")
        r["goal"] = {"ack": ok_ack, "monitor": ok_mon}
    print()
    errs = "; ".join(r["log_errors"])[:300] or "none"
    print(f"IOC log errors: {errs}; tracebacks: {len(r['log_tracebacks'])}")
    le = r["load_end"]
    print(f"load average at end {le[0]:.2f} {le[1]:.2f} {le[2]:.2f}; runtime {r['runtime_s']:.0f} s")
