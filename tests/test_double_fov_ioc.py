"""The scan geometry through the real IOC: ``Selected:Geometry`` (CA) and the Queue table's column (PVA)."""
import time

from _ioc import IOC  # noqa: I001 - before any CA client: sets the CA address list

from tomocorioc.sim import SimConfig, simulate_scan


def test_geometry_pv_and_queue_column(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    files = {
        str(data / "half_0001.h5"): ("180", SimConfig(ncols=96, nrows=4, nproj=91, offset=1.5, seed=3)),
        str(data / "edge_0001.h5"): ("360-offset", SimConfig(ncols=96, nrows=4, nproj=240, offset=-30.0,
                                                             theta_range=360.0, half_acquisition=True, seed=3)),
    }
    for path, (_, cfg) in files.items():
        simulate_scan(path, cfg)
    ioc = IOC(tmp_path, data).start()
    try:
        assert ioc.caput("CenterSearchWidth", "4").returncode == 0   # small try grids: quick phases
        assert ioc.caput("Enqueue", str(data), string=True).returncode == 0
        for path, (geometry, cfg) in files.items():
            deadline = time.monotonic() + 300
            while not (ioc.caput("SelectFile", path, string=True).returncode == 0
                       and ioc.caget("Selected:Status") in ("done", "review", "failed")):
                assert time.monotonic() < deadline, ioc.log()
                time.sleep(0.5)
            assert ioc.caget("Selected:Status") == "done", ioc.log()
            assert ioc.caget("Selected:Geometry") == geometry
            assert abs(float(ioc.caget("Selected:Cor")) - cfg.cor) < 0.5
        table = ioc.pva_get("Queue").value
        got = dict(zip(table["file"], table["geometry"]))
        assert got == {path: geometry for path, (geometry, _) in files.items()}
    finally:
        ioc.kill()
