"""`gisgrid import` / `gisgrid export` through the real CLI (subprocesses) on a committed database
holding conftest's tiny district and test_io's seed records."""
from __future__ import annotations

import os
import subprocess

import geopandas as gpd
import pandas as pd
import pytest
from shapely.geometry import box
from sqlalchemy import text

from gisgrid.db import migrate
from gisgrid.db.engine import make_engine
from gisgrid.spatial import crs as crs_mod

from conftest import COMMUNITY, DISTRICT, G1, G2, STREET, create_database, gisgrid_env
from test_cli import GISGRID
from test_io import TABLES, seed


@pytest.fixture(scope="module")
def url(db_url):
    from gisgrid.db.engine import make_sessionmaker
    from gisgrid.layers import writes

    u = create_database(db_url, "gisgrid_io_cli")
    eng = make_engine(u)
    migrate.upgrade(eng)
    with make_sessionmaker(eng).begin() as s:
        community = box(114.00, 30.00, 114.02, 30.01)
        writes.add(s, "admin_area", [{"code": DISTRICT, "name": "测试区", "geometry": box(113.99, 29.99, 114.03, 30.02)}])
        writes.add(s, "admin_area", [{"code": STREET, "name": "测试街道", "geometry": community}])
        writes.add(s, "admin_area", [{"code": COMMUNITY, "name": "测试社区", "geometry": community}])
        writes.add(s, "grid", [{"code": COMMUNITY + "001", "name": "一网格", "geometry": G1},
                               {"code": COMMUNITY + "002", "name": "二网格", "geometry": G2}])
        seed(s)
    yield u
    eng.dispose()


@pytest.fixture
def db(url):
    eng = make_engine(url)
    yield eng
    eng.dispose()


def gg(url, *args):
    env = gisgrid_env(GISGRID_DATABASE_URL=url, GISGRID_PII_KEY=os.environ["GISGRID_PII_KEY"])
    return subprocess.run([GISGRID, *args], capture_output=True, text=True, timeout=300, env=env)


def counts(db) -> dict:
    with db.connect() as c:
        return {t: c.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in TABLES}


def test_import_gcj02_csv_links_and_commits(url, db, tmp_path):
    glon, glat = (float(v) for v in crs_mod.wgs84_to_gcj02(114.015, 30.002))
    pd.DataFrame([{"编码": "CLI-1", "名称": "网点", "类别": "shop", "经度": glon, "纬度": glat}]).to_csv(
        tmp_path / "p.csv", index=False)
    r = gg(url, "import", "place", str(tmp_path / "p.csv"), "--crs", "gcj02")
    assert r.returncode == 0, r.stderr
    assert "1 inserted" in r.stdout and "import place" in r.stderr           # the progress bar, on stderr
    with db.connect() as c:
        x, y, grid = c.execute(text("SELECT ST_X(geom), ST_Y(geom), grid_code FROM place LEFT JOIN place_link USING (id) WHERE code = 'CLI-1'")).one()
    assert abs(x - 114.015) < 1e-8 and abs(y - 30.002) < 1e-8 and grid == COMMUNITY + "002"
    r = gg(url, "import", "place", str(tmp_path / "p.csv"), "--crs", "gcj02", "--mode", "upsert")
    assert r.returncode == 0 and "1 updated" in r.stdout
    with db.connect() as c:
        assert c.execute(text("SELECT count(*) FROM place WHERE code = 'CLI-1'")).scalar() == 1


def test_bad_file_exits_2_with_the_report_beside_and_writes_nothing(url, db, tmp_path):
    path = tmp_path / "bad.csv"
    pd.DataFrame([{"code": "CLI-2", "name": "好", "category": "shop", "lon": 114.005, "lat": 30.005},
                  {"code": "CLI-3", "name": "", "category": "shop", "lon": 114.005, "lat": 30.005},
                  {"code": "CLI-4", "name": "外", "category": "shop", "lon": 116.4, "lat": 39.9}]).to_csv(path, index=False)
    before = counts(db)
    r = gg(url, "import", "place", str(path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "nothing written" in r.stdout and "row 3\tname" in r.stdout and "row 4\tgeometry" in r.stdout
    report = pd.read_csv(str(path) + ".report.csv", encoding="utf-8-sig", dtype=str)
    assert list(report["行号 row"]) == ["3", "4"] and "outside the district" in report["原因 reason"].iloc[1]
    assert counts(db) == before
    r = gg(url, "import", "place", str(path), "--dry-run")
    assert r.returncode == 2 and counts(db) == before
    r = gg(url, "import", "place", str(path), "--skip-invalid", "--report", str(tmp_path / "r.csv"))
    assert r.returncode == 0 and "1 inserted" in r.stdout and "2 skipped" in r.stdout
    assert len(pd.read_csv(tmp_path / "r.csv", encoding="utf-8-sig")) == 2


def test_map_option_and_json_report(url, tmp_path):
    pd.DataFrame([{"编号": "CLI-5", "店名": "老店", "类别": "shop", "X": 114.003, "Y": 30.003}]).to_csv(
        tmp_path / "m.csv", index=False)
    r = gg(url, "import", "place", str(tmp_path / "m.csv"), "--map", "code=编号", "--map", "name=店名",
           "--map", "lon=X", "--map", "lat=Y", "--dry-run", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    import json

    rep = json.loads(r.stdout)
    assert rep["valid"] == 1 and rep["written"] is False and rep["problems"] == []
    r = gg(url, "import", "place", str(tmp_path / "m.csv"), "--map", "code")
    assert r.returncode == 2 and "--map must be field=column" in r.stderr


@pytest.mark.parametrize("args, message", [
    (["import", "place", "/nonexistent.csv"], "does not exist"),
    (["import", "nowhere", "x.csv"], "'nowhere' is not one of 'admin_area'"),
    (["export", "place", "x.kml"], "cannot export to 'kml'"),
    (["export", "place", "x.csv", "--where", "grid=1"], "--where takes area=CODE"),
    (["export", "place", "x.csv", "--crs", "mars"], "unknown CRS"),
])
def test_refusals_are_messages(url, tmp_path, args, message):
    r = gg(url, *[a if not a.startswith("x.") else str(tmp_path / a) for a in args])
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_unreadable_file_exits_2(url, db, tmp_path):
    (tmp_path / "broken.gpkg").write_bytes(b"not a geopackage")
    before = counts(db)
    r = gg(url, "import", "building", str(tmp_path / "broken.gpkg"))
    assert r.returncode == 2 and "cannot read 'broken.gpkg'" in r.stderr and "Traceback" not in r.stderr
    assert counts(db) == before


def test_export_then_import_through_the_cli(url, db, tmp_path):
    out = tmp_path / "routes.zip"
    r = gg(url, "export", "patrol_route", str(out), "--crs", "EPSG:4490")
    assert r.returncode == 0 and "2 records written" in r.stdout
    routes = gpd.read_file(f"zip://{out}")
    assert routes.crs.to_epsg() == 4490 and set(routes.code) == {"PR1", "PR2"}
    r = gg(url, "import", "patrol_route", str(out), "--mode", "upsert")
    assert r.returncode == 0 and "2 updated" in r.stdout, r.stdout + r.stderr
    xlsx = tmp_path / "g1.xlsx"
    r = gg(url, "export", "building", str(xlsx), "--where", f"area={COMMUNITY}001")
    assert r.returncode == 0 and "1 records written" in r.stdout
    sheet = pd.read_excel(xlsx, dtype=str)
    assert list(sheet["编码"]) == ["B1"] and list(sheet["网格名称"]) == ["一网格"] and "几何(WKT)" in sheet.columns


def test_unmasked_export_needs_a_reason_and_is_audited(url, db, tmp_path):
    r = gg(url, "export", "resident", str(tmp_path / "r.csv"), "--unmask", "年度核查")
    assert r.returncode == 0
    assert "420103197507270005" in (tmp_path / "r.csv").read_text(encoding="utf-8-sig")
    with db.connect() as c:
        assert c.execute(text("SELECT count(*) FROM audit_log WHERE action = 'read_pii' AND reason = '年度核查'")).scalar() == 2
    r = gg(url, "export", "resident", str(tmp_path / "r.csv"), "--unmask", " ")
    assert r.returncode == 2 and "needs a reason" in r.stderr
