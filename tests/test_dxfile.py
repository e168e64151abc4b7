"""Dataset reading and validation: one typed, one-line error per problem."""
import os

import h5py
import numpy as np
import pytest

from tomocorioc.data import errors as E
from tomocorioc.data.dxfile import DXFile


def write_dx(path, nproj=12, nrows=4, ncols=16, theta=True, flats=True, data=None, **over):
    with h5py.File(path, "w") as h5:
        d = data if data is not None else np.full((nproj, nrows, ncols), 1000, np.uint16)
        if d.ndim == 3:
            nrows, ncols = d.shape[1:]
        h5["/exchange/data"] = d
        if flats:
            h5["/exchange/data_white"] = over.get("white", np.full((3, nrows, ncols), 2000, np.uint16))
            h5["/exchange/data_dark"] = over.get("dark", np.full((2, nrows, ncols), 100, np.uint16))
        if theta is True:
            h5["/exchange/theta"] = np.linspace(0, 180, d.shape[0], endpoint=False)
        elif theta is not None and theta is not False:
            h5["/exchange/theta"] = theta
    return path


def test_good_file_reads_only_requested_rows(tmp_path):
    p = write_dx(tmp_path / "a.h5")
    with DXFile(p) as dx:
        assert dx.shape == (12, 4, 16) and dx.is_complete()
        blk = dx.read_rows(1, 3)
        assert blk.proj.shape == (12, 2, 16) and blk.flat.shape == (2, 16) and blk.proj.dtype == np.float32
        assert float(blk.flat.mean()) == 2000 and float(blk.dark.mean()) == 100
        assert dx.row_index(0.5) == 1 and dx.row_index(0) == 0 and dx.row_index(1) == 3
        np.testing.assert_allclose(dx.theta_deg()[:2], [0, 15])


def test_binning_averages_blocks(tmp_path):
    data = np.arange(12 * 4 * 16, dtype=np.uint16).reshape(12, 4, 16)
    p = write_dx(tmp_path / "b.h5", data=data)
    with DXFile(p) as dx:
        blk = dx.read_rows(0, 2, binning=1)
    assert blk.proj.shape == (12, 1, 8)
    assert blk.proj[0, 0, 0] == pytest.approx(data[0, :2, :2].mean())


def test_missing_theta_is_evenly_spaced_and_incomplete(tmp_path, caplog):
    p = write_dx(tmp_path / "c.h5", theta=False)
    with DXFile(p) as dx:
        assert not dx.is_complete()
        th = dx.theta_deg()
    assert th.shape == (12,) and th[1] == 15.0
    assert "evenly spaced" in caplog.text


@pytest.mark.parametrize("setup,exc,text", [
    (lambda p: None, E.NotAFileError, "no such file"),
    (lambda p: p.mkdir(), E.NotAFileError, "not a regular file"),
    (lambda p: p.write_text("hello, not hdf5"), E.NotHDF5Error, "not an HDF5"),
    (lambda p: p.write_bytes(b""), E.NotHDF5Error, "not an HDF5"),
])
def test_not_a_dataset(tmp_path, setup, exc, text):
    p = tmp_path / "x.h5"
    setup(p)
    with pytest.raises(exc, match=text) as ei:
        DXFile(p)
    assert "\n" not in str(ei.value)


def test_truncated_file(tmp_path):
    p = write_dx(tmp_path / "t.h5", nproj=50, nrows=8, ncols=64)
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 3])
    with pytest.raises((E.TruncatedFileError, E.MissingDatasetError)) as ei:
        with DXFile(p) as dx:
            dx.read_rows(0, 8)
    assert str(p) in str(ei.value)


def test_unreadable(tmp_path, monkeypatch):
    p = write_dx(tmp_path / "u.h5")
    p.chmod(0)
    if os.geteuid() == 0:
        # root reads any file, so stand in for the kernel's EACCES on this one path.
        import builtins
        real_open = builtins.open

        def deny(file, *a, **k):
            if str(file) == str(p):
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *a, **k)
        monkeypatch.setattr(builtins, "open", deny)
    with pytest.raises(E.UnreadableError, match="permission denied"):
        DXFile(p)


def test_missing_and_bad_shapes(tmp_path):
    p = tmp_path / "m.h5"
    with h5py.File(p, "w") as h5:
        h5["/exchange/data_white"] = np.ones((1, 2, 2))
    with pytest.raises(E.MissingDatasetError, match="/exchange/data"):
        DXFile(p)
    p2 = write_dx(tmp_path / "nf.h5", flats=False)
    with pytest.raises(E.MissingDatasetError, match="data_white"):
        DXFile(p2)
    with pytest.raises(E.ShapeError, match="3-D"):
        DXFile(write_dx(tmp_path / "r.h5", data=np.ones((4, 4), np.uint16)))
    with pytest.raises(E.ShapeError, match="data_white frame"):
        DXFile(write_dx(tmp_path / "w.h5", white=np.ones((2, 3, 16), np.uint16)))
    with pytest.raises(E.EmptyDataError):
        DXFile(write_dx(tmp_path / "e.h5", data=np.ones((0, 4, 16), np.uint16), theta=None))
    with pytest.raises(E.EmptyDataError, match="no frames"):
        DXFile(write_dx(tmp_path / "e2.h5", dark=np.ones((0, 4, 16), np.uint16)))
    with DXFile(write_dx(tmp_path / "th.h5", theta=np.arange(5.0))) as dx:
        assert not dx.is_complete()
        with pytest.raises(E.ShapeError, match="5 angles for 12"):
            dx.theta_deg()


def test_non_finite_rows(tmp_path):
    d = np.ones((6, 4, 8), np.float32)
    d[2, 3, 1] = np.nan
    p = write_dx(tmp_path / "n.h5", data=d)
    with DXFile(p) as dx:
        dx.read_rows(0, 3)  # the NaN is in row 3: rows 0..2 are fine
        with pytest.raises(E.NonFiniteError, match="1 NaN/Inf values in rows 3..4"):
            dx.read_rows(3, 4)
    with DXFile(write_dx(tmp_path / "nt.h5", theta=np.array([0, np.nan] + [1.0] * 10))) as dx:
        with pytest.raises(E.NonFiniteError):
            dx.theta_deg()


def test_flat_no_brighter_than_dark_is_refused(tmp_path):
    """A zeroed (or shutter-closed) flat normalised to a clamped constant: the job looked done with a COR."""
    for name, white in (("zero.h5", np.zeros((3, 4, 16), np.uint16)), ("dim.h5", np.full((3, 4, 16), 100, np.uint16))):
        with DXFile(write_dx(tmp_path / name, white=white)) as dx:
            with pytest.raises(E.FlatFieldError, match=r"data_white is not brighter than data_dark in rows 0\.\.2 "
                                                        r"\(median white - dark = -?\d+\)"):
                dx.read_rows(0, 2)
    half = np.full((3, 4, 16), 2000, np.uint16)
    half[:, :, :5] = 0      # a few dead flat pixels: the rest is a usable flat field
    with DXFile(write_dx(tmp_path / "partly.h5", white=half)) as dx:
        assert dx.read_rows(0, 2).flat.shape == (2, 16)
