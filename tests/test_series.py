"""Series tools: series keys, Fix COR Outliers, auto-skip of undersized scans, fix-outliers CLI."""
from __future__ import annotations

import argparse
import json
import logging
import math

import h5py
import numpy as np
import pytest

from tomocorioc.cli.series import add_fix_outliers_arguments, run_fix_outliers
from tomocorioc.core import series as S
from tomocorioc.core.series import (
    ScanSize,
    SkipDecision,
    fix_cor_outliers,
    outlier_threshold,
    series_key,
    undersized_scans,
)
from tomocorioc.data.scansize import find_undersized, read_scan_size


def table(cors, name="sample", selected=None, start=1):
    """Rows ``/data/<name>_0001.h5 ...`` with the given CORs (all selected unless told)."""
    rows = []
    for i, c in enumerate(cors):
        row = {"file": f"/data/{name}_{start + i:04d}.h5", "cor": c}
        if selected is not None:
            row["selected"] = selected[i]
        rows.append(row)
    return rows


def cors(result):
    return [r["cor"] for r in result.rows]


def changed(result):
    return [i for i, r in enumerate(result.rows) if r["reason"]]


# -- series key -------------------------------------------------------------------
@pytest.mark.parametrize("name, key", [
    ("sample_0001", ("sample", 1)),
    ("sample.002", ("sample", 2)),
    ("s-3", ("s", 3)),
    ("abc", ("abc", None)),
    ("x_1_2", ("x_1", 2)),
    ("0001", ("", 1)),
    ("/data/run/sample_0001.h5", ("sample", 1)),
    ("sample.002.h5", ("sample", 2)),
    ("scan10.hdf5", ("scan", 10)),
    ("abc.h5", ("abc", None)),
    ("a__-.7", ("a", 7)),
])
def test_series_key(name, key):
    assert series_key(name) == key


# -- pass 1: outliers -----------------------------------------------------------------
def test_clear_outlier_replaced_by_two_neighbour_average():
    res = fix_cor_outliers(table([100.0, 101.0, 300.0, 102.0, 103.0]))
    assert cors(res) == [100.0, 101.0, 101.5, 102.0, 103.0]
    row = res.rows[2]
    assert row["cor_source"] == "outlier-fixed"
    assert "300.00 -> 101.50" in row["reason"] and "sample_0002.h5" in row["reason"] \
        and "sample_0004.h5" in row["reason"]
    assert changed(res) == [2]
    (c,) = res.changes
    assert (c.old, c.new, c.source) == (300.0, 101.5, "outlier-fixed")
    assert c.neighbours == ("/data/sample_0002.h5", "/data/sample_0004.h5")
    assert res.unfilled_series == [] and res.unresolved == []


def test_one_sided_neighbour_at_series_ends():
    res = fix_cor_outliers(table([10.0, 100.0, 101.0, 102.0, 200.0]))
    assert cors(res) == [100.0, 100.0, 101.0, 102.0, 102.0]
    assert "only neighbour sample_0002.h5" in res.rows[0]["reason"]
    assert "only neighbour sample_0004.h5" in res.rows[4]["reason"]


def test_rows_ordered_by_series_index_not_table_order():
    rows = table([100.0, 101.0, 300.0, 104.0])
    rows = [rows[3], rows[2], rows[0], rows[1]]  # 4, 3, 1, 2
    res = fix_cor_outliers(rows)
    # sample_0003's neighbours by index are sample_0002 (101) and sample_0004 (104).
    assert res.rows[1]["cor"] == pytest.approx(102.5)
    assert [r["file"] for r in res.rows] == [r["file"] for r in rows]


def test_two_adjacent_outliers_take_nearest_non_flagged_neighbours():
    res = fix_cor_outliers(table([100.0, 101.0, 300.0, 310.0, 103.0, 104.0]))
    # Both outliers skip each other: 101 on the left, 103 on the right.
    assert cors(res) == [100.0, 101.0, 102.0, 102.0, 103.0, 104.0]
    assert changed(res) == [2, 3]
    assert "sample_0002.h5" in res.rows[3]["reason"] and "sample_0005.h5" in res.rows[3]["reason"]


def test_threshold_formula():
    assert outlier_threshold(0.0) == 10.0            # floor
    assert outlier_threshold(3.0) == 15.0            # 5 x MAD
    assert outlier_threshold(20.0) == 50.0           # capped by max_delta
    assert outlier_threshold(20.0, max_delta=200.0) == 100.0
    assert outlier_threshold(0.0, max_delta=5.0) == 5.0  # the cap wins over the floor
    assert S.median_mad([1.0, 2.0, 3.0, 10.0]) == (2.5, 1.0)


def test_mad_threshold_above_the_floor():
    # median 100, MAD 5 -> threshold 25: deviations of 20 are scatter, not outliers.
    res = fix_cor_outliers(table([80.0, 95.0, 100.0, 105.0, 120.0]))
    assert changed(res) == []
    assert res.stats[0].threshold == 25.0 and res.stats[0].mad == 5.0
    res = fix_cor_outliers(table([80.0, 95.0, 100.0, 105.0, 130.0]))
    assert changed(res) == [4] and res.rows[4]["cor"] == 105.0


def test_floor_of_ten_px():
    # MAD 0 -> threshold is the floor 10: 109 stays, 111 is an outlier.
    res = fix_cor_outliers(table([100.0, 100.0, 109.0, 100.0, 100.0, 111.0, 100.0]))
    assert res.stats[0].threshold == 10.0
    assert changed(res) == [5]


def test_max_delta_caps_the_threshold():
    values = [100.0, 120.0, 140.0, 160.0, 180.0, 260.0]  # median 150, MAD 30 -> 5*MAD = 150
    res = fix_cor_outliers(table(values))
    assert res.stats[0].threshold == 50.0
    assert changed(res) == [5] and res.rows[5]["cor"] == 180.0
    res = fix_cor_outliers(table(values), max_delta=200.0)
    assert res.stats[0].threshold == 150.0 and changed(res) == []


def test_bad_max_delta():
    for bad in (-1.0, float("nan"), "50", True):
        with pytest.raises(ValueError):
            fix_cor_outliers(table([1.0, 2.0]), max_delta=bad)
    assert changed(fix_cor_outliers(table([100.0, 300.0, 100.0]), max_delta=math.inf)) == [1]


def test_outliers_without_trusted_neighbour_are_left_and_reported():
    res = fix_cor_outliers(table([0.0, 200.0]))  # median 100, both 100 away > 50
    assert cors(res) == [0.0, 200.0] and changed(res) == []
    assert res.unresolved == ["/data/sample_0001.h5", "/data/sample_0002.h5"]


def test_single_numeric_cor_is_not_judged():
    res = fix_cor_outliers(table([500.0, None], selected=[True, True]))
    assert res.stats == []
    assert cors(res) == [500.0, 500.0] and res.rows[1]["cor_source"] == "series-filled"


# -- pass 1: empty rows ------------------------------------------------------------------
def test_empty_row_filled_from_close_neighbours():
    res = fix_cor_outliers(table([100.0, 104.0, None, 110.0, 200.0, 112.0]))
    row = res.rows[2]
    assert row["cor"] == 107.0 and row["cor_source"] == "series-filled"
    assert "mean of neighbours sample_0002.h5 (104.00) and sample_0004.h5 (110.00)" in row["reason"]
    (c,) = [c for c in res.changes if c.row == 2]
    assert c.old is None and c.neighbours == ("/data/sample_0002.h5", "/data/sample_0004.h5")


def test_empty_row_neighbours_exactly_ten_apart_is_filled():
    res = fix_cor_outliers(table([100.0, None, 110.0]))
    assert res.rows[1]["cor"] == 105.0 and "neighbours" in res.rows[1]["reason"]


def test_empty_row_with_far_neighbours_goes_to_pass_two():
    res = fix_cor_outliers(table([100.0, None, 111.0, 105.0]))
    row = res.rows[1]
    # Neighbours 100 and 111 are 11 px apart: the series mean of 100, 111, 105 instead.
    assert row["cor"] == pytest.approx(316.0 / 3)
    assert row["cor_source"] == "series-filled" and "mean of 3 COR(s) of series 'sample'" in row["reason"]
    assert res.changes[0].donors == 3


def test_empty_row_neighbours_skip_flagged_and_other_empty_rows():
    res = fix_cor_outliers(table([100.0, None, 400.0, None, 102.0, 103.0]))
    # Both empties bridge 100 .. 102 (the flagged 400 never serves as a neighbour).
    assert cors(res) == [100.0, 101.0, 101.0, 101.0, 102.0, 103.0]
    assert [res.rows[i]["cor_source"] for i in (1, 2, 3)] == ["series-filled", "outlier-fixed", "series-filled"]


def test_empty_at_series_end_goes_to_pass_two():
    res = fix_cor_outliers(table([None, 100.0, 102.0]))
    assert res.rows[0]["cor"] == 101.0 and "mean of 2 COR(s)" in res.rows[0]["reason"]


def test_nan_and_inf_are_empty():
    res = fix_cor_outliers(table([100.0, math.nan, 102.0, math.inf, 104.0]))
    assert cors(res) == [100.0, 101.0, 102.0, 103.0, 104.0]
    assert res.rows[1]["reason"].startswith("empty (nan) -> 101.00")
    assert all(c.old is None for c in res.changes)


# -- pass 2 -----------------------------------------------------------------------------
def test_series_without_donor_stays_empty_and_is_reported():
    rows = table([None, None], name="lost") + table([100.0, 101.0])
    res = fix_cor_outliers(rows)
    assert cors(res)[:2] == [None, None] and changed(res) == []
    assert res.unfilled_series == ["lost"]
    assert res.unfilled_files == ["/data/lost_0001.h5", "/data/lost_0002.h5"]


def test_unselected_rows_are_donors_but_never_changed():
    rows = table([None, 100.0, 400.0, None, 104.0], selected=[True, False, False, False, True])
    res = fix_cor_outliers(rows)
    # Selected: one empty and one numeric (too few to judge); pass 2 mean of 100, 400, 104.
    assert res.rows[0]["cor"] == pytest.approx(604.0 / 3)
    assert res.rows[0]["cor_source"] == "series-filled"
    assert cors(res)[1:] == [100.0, 400.0, None, 104.0]
    assert changed(res) == [0]
    assert [r["selected"] for r in res.rows] == [True, False, False, False, True]


def test_pass_one_uses_selected_rows_only():
    # The unselected 150 sits between the selected rows but is neither a statistic nor a neighbour.
    rows = table([100.0, 150.0, 300.0, 102.0], selected=[True, False, True, True])
    res = fix_cor_outliers(rows)
    assert res.stats[0].count == 3 and res.stats[0].median == 102.0
    assert res.rows[2]["cor"] == 101.0 and "sample_0001.h5" in res.rows[2]["reason"]
    assert res.rows[1]["cor"] == 150.0 and res.rows[1]["reason"] is None


def test_pass_two_donors_use_fixed_values():
    rows = table([100.0, 500.0, 102.0, None], selected=[True, True, True, True])
    res = fix_cor_outliers(rows)
    # 500 was replaced by 101 in pass 1, so the empty row gets mean(100, 101, 102).
    assert res.rows[3]["cor"] == 101.0


def test_several_series_in_one_table():
    rows = (table([100.0, 300.0, 102.0], name="a") + table([500.0, None, 506.0], name="b")
            + table([None], name="c") + [{"file": "/data/b.007.h5", "cor": 50.0}])
    res = fix_cor_outliers(rows)
    assert cors(res)[:3] == [100.0, 101.0, 102.0]
    assert res.rows[4]["cor"] == 503.0   # neighbours 500 and 506
    assert res.rows[7]["cor"] == 506.0   # b.007's 50 is an outlier of series b; its only neighbour is b_0003
    assert res.rows[6]["cor"] is None and res.unfilled_series == ["c"]
    assert {s.series for s in res.stats} == {"a", "b"}


def test_stems_without_numbers_are_their_own_series():
    rows = [{"file": "/x/abc.h5", "cor": None}, {"file": "/y/abc.h5", "cor": 90.0, "selected": False},
            {"file": "/x/abd.h5", "cor": None}]
    res = fix_cor_outliers(rows)
    assert res.rows[0]["cor"] == 90.0 and "series 'abc'" in res.rows[0]["reason"]
    assert res.rows[2]["cor"] is None and res.unfilled_series == ["abd"]


def test_input_is_not_mutated_and_extra_keys_are_kept():
    rows = table([100.0, 300.0, 102.0])
    rows[1]["cor_source"] = "ai"
    rows[0]["id"] = 7
    before = json.loads(json.dumps(rows))
    res = fix_cor_outliers(rows)
    assert rows == before
    assert res.rows[0]["id"] == 7 and res.rows[0]["cor_source"] is None and res.rows[0]["reason"] is None
    assert res.rows[1]["cor_source"] == "outlier-fixed"
    assert set(res.rows[2]) == {"file", "cor", "selected", "cor_source", "reason"}


@pytest.mark.parametrize("row", [{"cor": 1.0}, {"file": "", "cor": 1.0}, {"file": 3, "cor": 1.0},
                                 {"file": "a_1", "cor": "100"}, {"file": "a_1", "cor": True},
                                 {"file": "a_1", "cor": 1.0, "selected": "yes"}, ["a_1", 1.0]])
def test_malformed_rows_raise(row):
    with pytest.raises(ValueError):
        fix_cor_outliers([row])


def test_empty_table():
    res = fix_cor_outliers([])
    assert res.rows == [] and res.changes == [] and res.unfilled_series == []


# -- auto-skip ----------------------------------------------------------------------------
def sizes(nprojs, name="scan", nbytes=None):
    return [ScanSize(f"/d/{name}_{i:03d}.h5", n, None if nbytes is None else nbytes[i])
            for i, n in enumerate(nprojs)]


def test_undersized_at_forty_percent_is_skipped():
    skips = undersized_scans(sizes([1000, 1000, 400, 1000]))
    assert [s.file for s in skips] == ["/d/scan_002.h5"]
    assert "400 projections < 50% of the series median 1000 projections" in skips[0].reason


def test_ninety_percent_is_kept():
    assert undersized_scans(sizes([1000, 900, 1000, 1000])) == []


def test_fewer_than_three_files_not_judged():
    assert undersized_scans(sizes([1000, 100])) == []
    assert len(undersized_scans(sizes([1000, 1000, 100]))) == 1


def test_threshold_is_configurable():
    assert undersized_scans(sizes([1000, 1000, 800]), threshold=0.9)[0].file == "/d/scan_002.h5"
    assert undersized_scans(sizes([1000, 1000, 0]), threshold=0.0) == []
    for bad in (-0.1, 1.5, math.nan, "0.5"):
        with pytest.raises(ValueError):
            undersized_scans([], threshold=bad)


def test_bytes_used_when_projections_unknown_and_series_separate():
    recs = sizes([None, None, None], nbytes=[5_000_000, 1_000_000, 5_000_000])
    recs += sizes([10, 10, 3], name="other")
    recs.append(("/d/scan_009.h5", None, None))  # plain tuples are accepted; unknown size: not judged
    skips = undersized_scans(recs)
    assert [s.file for s in skips] == ["/d/scan_001.h5", "/d/other_002.h5"]
    assert "1.0 MB" in skips[0].reason and "5.0 MB" in skips[0].reason


def test_errored_records_are_not_judged():
    recs = sizes([1000, 1000, 300]) + [ScanSize("/d/scan_010.h5", error="unreadable: x")]
    assert [s.file for s in undersized_scans(recs)] == ["/d/scan_002.h5"]
    assert undersized_scans(sizes([1000, 300]) + [ScanSize("/d/scan_010.h5", error="x")]) == []


def write_scan(path, nproj):
    with h5py.File(path, "w") as fh:
        fh.create_dataset("exchange/data", data=np.zeros((nproj, 2, 3), dtype=np.uint16))
    return path


def test_read_scan_size_and_unreadable_files(tmp_path, caplog):
    good = [write_scan(tmp_path / f"s_{i:03d}.h5", n) for i, n in enumerate([20, 20, 8, 19])]
    broken = tmp_path / "s_004.h5"
    broken.write_text("not hdf5")
    nodata = tmp_path / "s_005.h5"
    with h5py.File(nodata, "w") as fh:
        fh.create_group("exchange")
    size = read_scan_size(good[0])
    assert size.nproj == 20 and size.nbytes == good[0].stat().st_size and size.error is None
    assert read_scan_size(broken).error.startswith("unreadable:")
    assert "no /exchange/data" in read_scan_size(nodata).error
    assert "unreadable" in read_scan_size(tmp_path / "missing.h5").error
    paths = good + [broken, nodata, tmp_path / "missing.h5"]
    with caplog.at_level(logging.WARNING, logger="tomocorioc.core.series"):
        skips = find_undersized(paths)
    assert skips == [SkipDecision(str(good[2]), skips[0].reason)] and "8 projections" in skips[0].reason
    assert "s_004.h5" in caplog.text and "not judged" in caplog.text
    skips = find_undersized(paths, skip_unreadable=True)
    assert [s.file for s in skips] == [str(p) for p in (good[2], broken, nodata, tmp_path / "missing.h5")]
    assert all(s.reason.startswith("unreadable") for s in skips[1:])


# -- CLI ------------------------------------------------------------------------------------
def run_cli(tmp_path, capsys, data, *extra, raw=None):
    path = tmp_path / "table.json"
    path.write_text(raw if raw is not None else json.dumps(data))
    parser = argparse.ArgumentParser()
    add_fix_outliers_arguments(parser)
    rc = run_fix_outliers(parser.parse_args([str(path), *extra]))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_json_output(tmp_path, capsys):
    data = [{"file": "/d/s_1.h5", "cor": 100}, {"file": "/d/s_2.h5", "cor": 300},
            {"file": "/d/s_3.h5", "cor": 102, "selected": True}, {"file": "/d/t_1.h5", "cor": None}]
    rc, out, err = run_cli(tmp_path, capsys, data, "--json")
    assert rc == 0
    rows = json.loads(out)
    assert [r["cor"] for r in rows] == [100, 101, 102, None]
    assert rows[1]["reason"].startswith("outlier 300.00 -> 101.00") and rows[1]["cor_source"] == "outlier-fixed"
    assert rows[0]["reason"] is None and rows[0]["selected"] is True
    assert "series left empty" in err and "'t'" in err


def test_cli_text_output_and_max_delta(tmp_path, capsys):
    data = [{"file": "/d/s_1.h5", "cor": 100}, {"file": "/d/s_2.h5", "cor": 130}, {"file": "/d/s_3.h5", "cor": 102},
            {"file": "/d/s_4.h5", "cor": None, "selected": False}, {"file": "/d/u_1.h5", "cor": None}]
    rc, out, err = run_cli(tmp_path, capsys, data)
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["file", "series", "index", "sel", "cor", "source", "reason"]
    assert "130.00 -> 101.00" in lines[2] and "outlier-fixed" in lines[2]
    assert lines[1].index("100.00") == lines[0].index("cor")   # columns line up
    assert "1 COR(s) changed" in out and "series left empty (no COR to fill from): 'u'" in out
    rc, out, _ = run_cli(tmp_path, capsys, data, "--max-delta", "1")  # threshold 1 px: 100 is off too
    assert rc == 0 and "2 COR(s) changed" in out


@pytest.mark.parametrize("raw, extra, needle", [
    ("{not json", (), "not valid JSON"),
    ('{"file": "a", "cor": 1}', (), "expected a JSON list"),
    ('[{"cor": 1}]', (), "missing 'file'"),
    ('[{"file": "a_1", "cor": "100"}]', (), "'cor' must be a number or null"),
    ('[{"file": "a_1", "cor": 1}]', ("--max-delta", "-1"), "--max-delta"),
    ('[{"file": "a_1", "cor": 1}]', ("--max-delta", "nan"), "--max-delta"),
])
def test_cli_bad_input_exits_2(tmp_path, capsys, raw, extra, needle):
    rc, out, err = run_cli(tmp_path, capsys, None, *extra, raw=raw)
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err and err.startswith("tomocorioc fix-outliers: error:")


def test_cli_missing_table_exits_1(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_fix_outliers_arguments(parser)
    rc = run_fix_outliers(parser.parse_args([str(tmp_path / "nope.json")]))
    _, err = capsys.readouterr()
    assert rc == 1 and "cannot read" in err


def test_cli_defaults():
    parser = argparse.ArgumentParser()
    add_fix_outliers_arguments(parser)
    args = parser.parse_args(["t.json"])
    assert args.max_delta == 50.0 and args.json is False and args.table == "t.json"
