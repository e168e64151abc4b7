"""Series tools: filename series, Fix COR Outliers and auto-skip of undersized scans (pure).

A *series* is the set of files whose name stems differ only in a trailing
number (``sample_0001.h5``, ``sample_0002.h5``, ...), matched as TomoGUI does
with ``^(.*?)[._-]*(\\d+)$``.  Only the file name counts, not its folder, so
that TomoGUI and this service group a table the same way.

Fix COR Outliers runs two passes over the *selected* rows of a table:

1. Per series, over its selected rows ordered by series index, and only when
   they hold at least 2 numeric CORs: the median and MAD of those CORs give
   ``threshold = min(max_delta, max(10, 5 * MAD))``.  A COR farther than the
   threshold from the median is *flagged* and replaced by the mean of its
   nearest non-flagged numeric neighbour on each side (or by the one
   neighbour when only one side has one).  An empty row takes the mean of its
   two nearest non-flagged numeric neighbours only when both exist and lie
   at most 10 px apart.  Statistics and neighbours come from the selected
   rows of the series only: the operator selected what to trust and to fix.
   Neighbours are looked up among the values the pass started with, so the
   order in which rows are fixed never matters and a value the pass made up
   never feeds another.
2. Every selected row still empty takes the mean of all numeric CORs of its
   series in the whole table after pass 1 (unselected rows are donors too,
   outlier CORs already replaced).  A series with no donor stays empty and
   is reported.

Unselected rows are never changed.  NaN and infinite CORs count as empty.

A row given with ``"manual": true`` (an operator's COR) is ground truth: it
counts in the statistics and serves as a neighbour and donor like any
trusted value, but it is never replaced, even when it lies beyond the
threshold; such a row is reported in :attr:`OutlierResult.manual_flagged`
instead.  Tables without the key (TomoGUI's) behave exactly as above.
"""
from __future__ import annotations

import logging
import math
import numbers
import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

log = logging.getLogger(__name__)

SERIES_RE = re.compile(r"^(.*?)[._-]*(\d+)$", re.ASCII | re.DOTALL)
DEFAULT_MAX_DELTA = 50.0     # px; TomoGUI's "Max COR delta" default
THRESHOLD_FLOOR = 10.0       # px; below this, COR scatter is noise, never an outlier
MAD_FACTOR = 5.0
NEIGHBOUR_FILL_TOL = 10.0    # px; an empty row is bridged only between agreeing neighbours
SOURCE_OUTLIER = "outlier-fixed"
SOURCE_FILLED = "series-filled"

DEFAULT_SKIP_THRESHOLD = 0.5
# Judging needs a median that a single aborted scan cannot drag: with 2 files the
# median is their mean and nothing tells which of the two is the odd one out.
MIN_FILES_TO_JUDGE = 3
DATA_PATH = "/exchange/data"

PathLike = Union[str, "os.PathLike[str]"]


# -- series key -----------------------------------------------------------------
def file_stem(path: PathLike) -> str:
    """File name without its extension; an all-digit "extension" (``sample.002``) is kept."""
    name = Path(path).name
    head, dot, ext = name.rpartition(".")
    if dot and head and not ext.isdigit():
        return head
    return name


def series_key(path: PathLike) -> Tuple[str, Optional[int]]:
    """``(series, index)`` of a file: ``sample_0001.h5`` -> ``('sample', 1)``, ``abc`` -> ``('abc', None)``."""
    stem = file_stem(path)
    m = SERIES_RE.fullmatch(stem)
    if not m:
        return stem, None
    return m.group(1), int(m.group(2))


# -- Fix COR Outliers -----------------------------------------------------------
@dataclass(frozen=True)
class CorChange:
    """One COR changed by Fix COR Outliers."""

    row: int                      # position in the input table
    file: str
    old: Optional[float]          # None when the row was empty (or NaN/inf)
    new: float
    source: str                   # outlier-fixed | series-filled
    reason: str
    neighbours: Tuple[str, ...] = ()
    donors: int = 0


@dataclass(frozen=True)
class SeriesStats:
    """Pass-1 statistics of one series (over its selected numeric CORs)."""

    series: str
    count: int
    median: float
    mad: float
    threshold: float
    flagged: Tuple[str, ...] = ()


@dataclass
class OutlierResult:
    """New table plus what changed and what could not be filled."""

    rows: List[Dict[str, Any]]
    changes: List[CorChange] = field(default_factory=list)
    unfilled_series: List[str] = field(default_factory=list)
    unfilled_files: List[str] = field(default_factory=list)
    unresolved: List[str] = field(default_factory=list)  # flagged, but no trusted neighbour to take from
    stats: List[SeriesStats] = field(default_factory=list)
    manual_flagged: List[Tuple[str, str]] = field(default_factory=list)  # (file, why): kept, but beyond the rule


@dataclass
class _Work:
    pos: int
    file: str
    series: str
    index: Optional[int]
    selected: bool
    raw: Any                      # the COR as given, for reasons
    cor: Optional[float]          # finite COR, or None when empty
    manual: bool = False          # an operator's COR: never replaced


def _order(w: _Work) -> Tuple[bool, int, int]:
    # Series index first; rows without one (or with the same one) keep table order.
    return (w.index is None, w.index if w.index is not None else 0, w.pos)


def _parse_row(pos: int, row: Any) -> _Work:
    if not isinstance(row, Mapping):
        raise ValueError(f"row {pos}: expected an object with 'file', 'cor', 'selected', got {type(row).__name__}")
    file = row.get("file")
    if not isinstance(file, str) or not file:
        raise ValueError(f"row {pos}: missing 'file' (a non-empty string)")
    raw = row.get("cor")
    if raw is not None and (isinstance(raw, bool) or not isinstance(raw, numbers.Real)):
        raise ValueError(f"row {pos} ({file}): 'cor' must be a number or null, got {raw!r}")
    cor = float(raw) if raw is not None and math.isfinite(float(raw)) else None
    selected = row.get("selected", True)
    if not isinstance(selected, bool):
        raise ValueError(f"row {pos} ({file}): 'selected' must be true or false, got {selected!r}")
    manual = row.get("manual", False)
    if not isinstance(manual, bool):
        raise ValueError(f"row {pos} ({file}): 'manual' must be true or false, got {manual!r}")
    series, index = series_key(file)
    return _Work(pos, file, series, index, selected, raw, cor, manual and cor is not None)


def check_max_delta(max_delta: Any) -> float:
    """``max_delta`` as a float >= 0 (inf allowed: no cap); ValueError otherwise."""
    if isinstance(max_delta, bool) or not isinstance(max_delta, numbers.Real) or math.isnan(max_delta):
        raise ValueError(f"max_delta must be a number, got {max_delta!r}")
    if max_delta < 0:
        raise ValueError(f"max_delta must be >= 0 px, got {max_delta}")
    return float(max_delta)


def outlier_threshold(mad: float, max_delta: float = DEFAULT_MAX_DELTA) -> float:
    """``min(max_delta, max(10, 5 * MAD))``: the deviation beyond which a COR is an outlier."""
    return min(max_delta, max(THRESHOLD_FLOOR, MAD_FACTOR * mad))


def median_mad(values: Sequence[float]) -> Tuple[float, float]:
    """Median (mean of the middle two for an even count) and MAD = median of ``|v - median|``."""
    if not values:
        raise ValueError("median of no values")
    med = statistics.median(values)
    return float(med), float(statistics.median([abs(v - med) for v in values]))


def _name(w: _Work) -> str:
    return Path(w.file).name


def _old_text(w: _Work) -> str:
    if w.raw is None:
        return "empty"
    if w.cor is None:
        return f"empty ({w.raw})"  # NaN/inf
    return f"{w.cor:.2f}"


def _nearest(anchors: List[Tuple[int, _Work]], k: int) -> Tuple[Optional[_Work], Optional[_Work]]:
    """Nearest anchor strictly before and strictly after ordered position ``k``."""
    left = right = None
    for j, w in anchors:
        if j < k:
            left = w
        elif j > k:
            right = w
            break
    return left, right


def _pass_one(series: str, chosen: List[_Work], max_delta: float,
              changes: List[CorChange], unresolved: List[str],
              manual_flagged: List[Tuple[str, str]]) -> Optional[SeriesStats]:
    """Flag and replace outliers, bridge empty rows; ``chosen`` are the series' selected rows, ordered."""
    numeric = [w.cor for w in chosen if w.cor is not None]
    if len(numeric) < 2:
        return None
    med, mad = median_mad(numeric)
    thr = outlier_threshold(mad, max_delta)
    beyond = [w for w in chosen if w.cor is not None and abs(w.cor - med) > thr]
    # A manual COR is ground truth: reported, never flagged, so it stays an anchor for its neighbours.
    for w in beyond:
        if w.manual:
            manual_flagged.append((w.file, f"manual COR {w.cor:.2f} is {abs(w.cor - med):.2f} px from the series "
                                           f"median {med:.2f} (threshold {thr:.2f} px); kept"))
    flagged = {w.pos for w in beyond if not w.manual}
    # Trusted values as the pass found them; replacements are applied afterwards.
    anchors = [(k, w) for k, w in enumerate(chosen) if w.cor is not None and w.pos not in flagged]
    planned: List[Tuple[_Work, CorChange]] = []
    for k, w in enumerate(chosen):
        left, right = _nearest(anchors, k)
        if w.pos in flagged:
            used = [n for n in (left, right) if n is not None]
            if not used:
                log.warning("%s: outlier COR %.2f has no trusted neighbour in series %r; left unchanged",
                            w.file, w.cor, series)
                unresolved.append(w.file)
                continue
            new = math.fsum(n.cor for n in used) / len(used)
            if len(used) == 2:
                how = f"mean of neighbours {_name(left)} ({left.cor:.2f}) and {_name(right)} ({right.cor:.2f})"
            else:
                how = f"from the only neighbour {_name(used[0])} ({used[0].cor:.2f})"
            reason = (f"outlier {w.cor:.2f} -> {new:.2f}: |{w.cor:.2f} - median {med:.2f}| = "
                      f"{abs(w.cor - med):.2f} > threshold {thr:.2f} px; {how}")
            planned.append((w, CorChange(w.pos, w.file, w.cor, new, SOURCE_OUTLIER, reason,
                                         tuple(n.file for n in used))))
        elif w.cor is None and left is not None and right is not None:
            gap = abs(left.cor - right.cor)
            if gap > NEIGHBOUR_FILL_TOL:
                continue  # neighbours disagree: pass 2 fills it from the series mean
            new = (left.cor + right.cor) / 2.0
            reason = (f"{_old_text(w)} -> {new:.2f}: mean of neighbours {_name(left)} ({left.cor:.2f}) and "
                      f"{_name(right)} ({right.cor:.2f}), {gap:.2f} px apart (<= {NEIGHBOUR_FILL_TOL:g} px)")
            planned.append((w, CorChange(w.pos, w.file, None, new, SOURCE_FILLED, reason,
                                         (left.file, right.file))))
    for w, change in planned:
        w.cor = change.new
        changes.append(change)
    names = tuple(w.file for w in chosen if w.pos in flagged)
    return SeriesStats(series, len(numeric), med, mad, thr, names)


def fix_cor_outliers(rows: Sequence[Mapping[str, Any]], max_delta: float = DEFAULT_MAX_DELTA) -> OutlierResult:
    """Fix COR Outliers (both passes) over the selected rows; ValueError on a malformed row."""
    max_delta = check_max_delta(max_delta)
    work = [_parse_row(pos, row) for pos, row in enumerate(rows)]
    by_series: Dict[str, List[_Work]] = {}
    for w in work:
        by_series.setdefault(w.series, []).append(w)
    result = OutlierResult(rows=[])
    for series, members in by_series.items():
        chosen = sorted((w for w in members if w.selected), key=_order)
        stats = _pass_one(series, chosen, max_delta, result.changes, result.unresolved, result.manual_flagged)
        if stats is not None:
            result.stats.append(stats)
    for series, members in by_series.items():
        empty = sorted((w for w in members if w.selected and w.cor is None), key=_order)
        if not empty:
            continue
        # Donors are taken before filling, so pass-2 values never feed each other.
        donors = [w.cor for w in members if w.cor is not None]
        if not donors:
            log.warning("series %r: no COR in the table to fill %d empty row(s) from", series, len(empty))
            result.unfilled_series.append(series)
            result.unfilled_files.extend(w.file for w in empty)
            continue
        new = math.fsum(donors) / len(donors)
        for w in empty:
            reason = f"{_old_text(w)} -> {new:.2f}: mean of {len(donors)} COR(s) of series {series!r}"
            result.changes.append(CorChange(w.pos, w.file, None, new, SOURCE_FILLED, reason, donors=len(donors)))
            w.cor = new
    result.changes.sort(key=lambda c: c.row)
    by_pos = {c.row: c for c in result.changes}
    for w, row in zip(work, rows):
        change = by_pos.get(w.pos)
        out = dict(row)
        out["cor"] = w.cor
        out["selected"] = w.selected
        out["cor_source"] = change.source if change else row.get("cor_source")
        out["reason"] = change.reason if change else None
        result.rows.append(out)
    for change in result.changes:
        log.info("%s: %s", change.file, change.reason)
    return result


# -- auto-skip of undersized scans ----------------------------------------------
@dataclass(frozen=True)
class ScanSize:
    """Size of one scan: projections in ``/exchange/data`` and bytes on disk (None when unknown)."""

    file: str
    nproj: Optional[int] = None
    nbytes: Optional[int] = None
    error: Optional[str] = None   # why the file could not be read, when it could not
    ntheta: Optional[int] = None  # length of /exchange/theta
    planned: Optional[int] = None  # tomoScan's planned projections (/process/acquisition/rotation/num_angles)


def own_verdict(s: ScanSize) -> Tuple[Optional[bool], str]:
    """What the file says of itself: (True: aborted, with why; False: complete; None: it cannot tell).

    A scan that records its plan is judged against it alone (projections and
    theta both reach the planned count); without a plan, a theta longer than
    the data shows an acquisition that stopped early.  Only a file that cannot
    tell is compared with its series' median.
    """
    if s.nproj is None:
        return None, ""
    if s.planned:
        if s.nproj < s.planned:
            return True, f"aborted: {s.nproj} of {s.planned} planned projections"
        if s.ntheta is not None and s.ntheta < s.planned:
            return True, f"aborted: theta holds {s.ntheta} of {s.planned} planned angles"
        return False, ""
    if s.ntheta is not None and s.ntheta > s.nproj:
        return True, f"aborted: {s.nproj} projections for {s.ntheta} angles in theta"
    return None, ""


@dataclass(frozen=True)
class SkipDecision:
    """A file to skip and why."""

    file: str
    reason: str


def check_skip_threshold(threshold: Any) -> float:
    """The undersize threshold as a fraction in [0, 1]; ValueError otherwise."""
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not (0.0 <= threshold <= 1.0):
        raise ValueError(f"skip threshold must be a fraction in [0, 1], got {threshold!r}")
    return float(threshold)


def _size_text(value: float, measure: str) -> str:
    if measure == "nproj":
        return f"{value:g} projections"
    return f"{value / 1e6:.1f} MB"


def undersized_scans(records: Iterable[Union[ScanSize, Tuple[str, Optional[int], Optional[int]]]],
                     threshold: float = DEFAULT_SKIP_THRESHOLD) -> List[SkipDecision]:
    """Aborted acquisitions: by the file's own evidence (:func:`own_verdict`) first, else by size.

    A file that cannot tell is skipped when its size is below ``threshold`` x
    its series' median: per series (of such files), projections are compared when at least 3 files know them,
    else bytes when at least 3 files know those; files that do not know the
    chosen measure, and unreadable ones, are not judged.  The median is taken
    over every judged file of the series, the file itself included.
    """
    threshold = check_skip_threshold(threshold)
    sizes = [r if isinstance(r, ScanSize) else ScanSize(*r) for r in records]
    skips: List[SkipDecision] = []
    by_series: Dict[str, List[ScanSize]] = {}
    for s in sizes:
        if s.error is not None:
            continue
        verdict, why = own_verdict(s)
        if verdict is True:
            skips.append(SkipDecision(s.file, why))
        elif verdict is None:   # only files that cannot tell are judged by their series
            by_series.setdefault(series_key(s.file)[0], []).append(s)
    for series, members in by_series.items():
        for measure in ("nproj", "nbytes"):
            known = [(s, getattr(s, measure)) for s in members if getattr(s, measure) is not None]
            if len(known) >= MIN_FILES_TO_JUDGE:
                break
        else:
            log.debug("series %r: fewer than %d sized files, not judged", series, MIN_FILES_TO_JUDGE)
            continue
        med = float(statistics.median(v for _, v in known))
        limit = threshold * med
        for s, value in known:
            if value < limit:
                reason = (f"undersized: {_size_text(value, measure)} < {threshold:.0%} of the series "
                          f"median {_size_text(med, measure)} (aborted acquisition?)")
                skips.append(SkipDecision(s.file, reason))
    return skips


__all__ = [
    "SERIES_RE", "DEFAULT_MAX_DELTA", "DEFAULT_SKIP_THRESHOLD", "MIN_FILES_TO_JUDGE", "SOURCE_OUTLIER",
    "SOURCE_FILLED", "CorChange", "SeriesStats", "OutlierResult", "ScanSize", "SkipDecision", "file_stem",
    "series_key", "fix_cor_outliers", "check_max_delta", "outlier_threshold", "median_mad",
    "undersized_scans", "check_skip_threshold", "own_verdict",
]
