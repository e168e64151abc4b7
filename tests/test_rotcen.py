"""TomoGUI ``rot_cen.json`` import/export."""
from __future__ import annotations

import json
import logging
import math
import os
import stat

import pytest

from tomocorioc.core.rotcen import format_cor, parse_cor, read_rot_cen, update_rot_cen, write_rot_cen


@pytest.mark.parametrize("cor, text", [
    (1024.5, "1024.5"), (1024.0, "1024.0"), (1024, "1024.0"), (1024.123, "1024.12"), (1024.126, "1024.13"),
    (0.0, "0.0"), (-0.001, "0.0"), (-3.25, "-3.25"), (123456.78, "123456.78"), (None, ""), (math.nan, ""),
])
def test_format_cor(cor, text):
    assert format_cor(cor) == text


def test_format_cor_rejects_non_numbers():
    for bad in ("1024.5", True, [1.0]):
        with pytest.raises(ValueError):
            format_cor(bad)


def test_round_trip(tmp_path):
    path = tmp_path / "rot_cen.json"
    mapping = {"/data/s/scan_0001.h5": 1024.5, "/data/s/scan_0002.h5": None, "/data/s/scan_0003.h5": 1000.0,
               "/data/s/scan_0004.h5": 1023.25}
    assert write_rot_cen(path, mapping) == path
    raw = json.loads(path.read_text())
    assert raw == {"/data/s/scan_0001.h5": "1024.5", "/data/s/scan_0002.h5": "", "/data/s/scan_0003.h5": "1000.0",
                   "/data/s/scan_0004.h5": "1023.25"}
    assert list(raw) == list(mapping)  # order kept, as TomoGUI lists it
    assert read_rot_cen(path) == mapping
    assert [p.name for p in tmp_path.iterdir()] == ["rot_cen.json"]  # no temp file left behind


def test_write_replaces_and_keeps_permissions(tmp_path):
    path = tmp_path / "rot_cen.json"
    write_rot_cen(path, {"/a_1.h5": 1.0})
    os.chmod(path, 0o664)
    write_rot_cen(path, {"/a_2.h5": 2.0})
    assert stat.S_IMODE(path.stat().st_mode) == 0o664
    assert read_rot_cen(path) == {"/a_2.h5": 2.0}


def test_failed_write_leaves_old_file(tmp_path):
    path = tmp_path / "rot_cen.json"
    write_rot_cen(path, {"/a_1.h5": 1.0})
    for bad in ({"/a_1.h5": "x"}, {"": 1.0}, {3: 1.0}):
        with pytest.raises(ValueError):
            write_rot_cen(path, bad)
    assert read_rot_cen(path) == {"/a_1.h5": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["rot_cen.json"]


def test_read_lenient_values(tmp_path, caplog):
    path = tmp_path / "rot_cen.json"
    path.write_text(json.dumps({"a": "1024.50", "b": "", "c": "abc", "d": 1000.25, "e": ["12.5"], "f": None,
                                "g": "nan", "h": " 7 ", "i": True, "j": {"x": 1}}))
    with caplog.at_level(logging.WARNING, logger="tomocorioc.core.rotcen"):
        got = read_rot_cen(path)
    assert got == {"a": 1024.5, "b": None, "c": None, "d": 1000.25, "e": 12.5, "f": None, "g": None, "h": 7.0,
                   "i": None, "j": None}
    for key in ("b", "c", "g", "i", "j"):
        assert any(r.getMessage().startswith(f"{key}:") for r in caplog.records), key


def test_parse_cor():
    assert parse_cor("1024.5") == 1024.5 and parse_cor(3) == 3.0 and parse_cor([]) is None
    assert parse_cor("inf") is None and parse_cor("1e3") == 1000.0


@pytest.mark.parametrize("text, needle", [
    ('["a", "b"]', "expected a JSON object"),
    ('"1024.5"', "expected a JSON object"),
    ("{bad json", "not valid JSON"),
    ("", "not valid JSON"),
])
def test_read_bad_files(tmp_path, text, needle):
    path = tmp_path / "rot_cen.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=needle):
        read_rot_cen(path)


def test_read_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_rot_cen(tmp_path / "rot_cen.json")


def test_update_merges(tmp_path):
    path = tmp_path / "rot_cen.json"
    assert update_rot_cen(path, {"/a_1.h5": 10.0}) == {"/a_1.h5": 10.0}
    merged = update_rot_cen(path, {"/a_2.h5": 20.5, "/a_1.h5": 11.0})
    assert merged == {"/a_1.h5": 11.0, "/a_2.h5": 20.5} == read_rot_cen(path)
