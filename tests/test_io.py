"""Import and export of every layer (gisgrid.io) on real files written by geopandas/pyogrio,
pandas and openpyxl, against a real PostGIS (the session is rolled back after each test).

The district of conftest's ``two_grids`` (lon 113.99–114.03, lat 29.99–30.02) holds community
C (114.00–114.02 × 30.00–30.01) cut into grids G1 | G2 at x = 114.01. ``seed`` adds two records
of every other layer inside it.
"""
from __future__ import annotations

import json
from datetime import date, datetime, timezone

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from shapely.geometry import MultiLineString, Point, box
from sqlalchemy import text

from gisgrid import authz
from gisgrid.errors import InvalidInput
from gisgrid.io import exporter, formats, importer
from gisgrid.layers import writes
from gisgrid.spatial import crs as crs_mod

from conftest import COMMUNITY, DISTRICT

ADMIN = authz.Principal("test-admin", "admin")
ID1, ID2 = "420103197507270005", "420103198801011236"
LAYERS = ("admin_area", "grid", "building", "resident", "place", "patrol_point", "patrol_route", "road", "incident")
TABLES = LAYERS + ("audit_log", "incident_event")


def seed(session):
    writes.add(session, "building", [
        {"code": "B1", "name": "一号楼", "address": "解放大道1号", "households": 24, "floors": 6, "source": "survey",
         "geometry": box(114.002, 30.002, 114.003, 30.003)},
        {"code": "B2", "households": 0, "geometry": box(114.012, 30.004, 114.013, 30.005)}])
    writes.add(session, "resident", [
        {"code": "R1", "name": "张三", "gender": "M", "birth_date": date(1975, 7, 27), "id_number": ID1,
         "phone": "13812345678", "tags": ["独居老人", "低保"], "building_code": "B1"},
        {"code": "R2", "name": "李四", "gender": "F", "id_number": ID2, "geometry": Point(114.015, 30.006)}])
    writes.add(session, "place", [
        {"code": "P1", "name": "便利店", "category": "shop", "attributes": {"licence": "91420103", "楼层": 1},
         "geometry": Point(114.005, 30.005)},
        {"code": "P2", "name": "小学", "category": "school", "geometry": Point(114.018, 30.008)}])
    writes.add(session, "patrol_point", [
        {"code": "PP1", "name": "东门执勤点", "kind": "duty_post", "radius_m": 80.5, "visits_per_day": 3,
         "team": "一队", "geometry": Point(114.001, 30.001)},
        {"code": "PP2", "name": "西巷", "geometry": Point(114.011, 30.009)}])
    writes.add(session, "patrol_route", [
        {"code": "PR1", "name": "环线", "team": "一队",
         "geometry": MultiLineString([[(114.001, 30.001), (114.009, 30.001), (114.009, 30.009)]])},
        {"code": "PR2", "name": "二线", "geometry": MultiLineString([[(114.011, 30.002), (114.019, 30.002)],
                                                                    [(114.019, 30.003), (114.019, 30.008)]])}])
    writes.add(session, "road", [
        {"code": "RD1", "name": "解放大道", "kind": "primary", "source": "survey",
         "geometry": MultiLineString([[(113.995, 30.0), (114.025, 30.0)]])},
        {"code": "RD2", "geometry": MultiLineString([[(114.01, 29.995), (114.01, 30.015)]])}])
    writes.add(session, "incident", [
        {"code": "SJ1", "category": "noise", "state": "closed", "level": "grid", "description": "夜间施工",
         "address": "一号楼旁", "source": "resident", "reporter": "王五", "satisfaction": 5, "accuracy_m": 12.5,
         "reported_at": datetime(2026, 5, 1, 0, 30, tzinfo=timezone.utc),
         "closed_at": datetime(2026, 5, 2, 8, 0, tzinfo=timezone.utc), "geometry": Point(114.004, 30.004)},
        {"code": "SJ2", "category": "sanitation", "reported_at": datetime(2026, 6, 1, tzinfo=timezone.utc),
         "geometry": Point(114.016, 30.003)}])
    return session


@pytest.fixture
def world(two_grids):
    return seed(two_grids)


def counts(session) -> dict:
    return {t: session.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in TABLES}


def snapshot(session, layer: str) -> list[dict]:
    frame = exporter.records(session, layer, ADMIN, unmask=True)
    return frame.to_dict("records")


def same_records(before, after, tol=1e-9):
    assert [r["code"] for r in after] == [r["code"] for r in before]
    for a, b in zip(before, after):
        ga, gb = a.pop("geometry"), b.pop("geometry")
        assert (ga is None) == (gb is None), a["code"]
        if ga is not None:
            assert shapely.hausdorff_distance(ga, gb) < tol, (a["code"], ga.wkt, gb.wkt)
        clean = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in a.items()}
        assert clean == {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in b.items()}, a["code"]


# -- round trips ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", formats.EXPORT_FORMATS)
@pytest.mark.parametrize("layer", LAYERS)
def test_export_then_import_gives_back_the_same_records(world, tmp_path, layer, fmt):
    path = tmp_path / f"{layer}{formats.EXTENSIONS[fmt]}"
    n = exporter.export(world, layer, path, principal=ADMIN, unmask=True, reason="round trip test")
    before = snapshot(world, layer)
    assert n == len(before) >= 2
    if layer == "building":
        world.execute(text("DELETE FROM resident"))           # they reference the buildings
    mode = "upsert" if layer == "admin_area" else "replace"  # admin areas are referenced by grids
    rep = importer.run(world, layer, path, mode=mode, actor="test")
    assert rep.ok and rep.written, rep.text()
    assert rep.inserted + rep.updated == n
    same_records(before, snapshot(world, layer))


@pytest.mark.parametrize("target", ["gcj02", "bd09", "EPSG:4490", "EPSG:4547"])
def test_round_trip_through_chinese_coordinate_systems(world, tmp_path, target):
    path = tmp_path / "place.gpkg"
    exporter.export(world, "place", path, principal=ADMIN, crs=target)
    written = gpd.read_file(path)
    if target in ("gcj02", "bd09"):
        assert written.crs is None                             # no CRS definition exists for them
        offset = crs_mod.xy_from_storage(114.005, 30.005, target)
        p1 = written[written.code == "P1"].geometry.iloc[0]
        assert abs(p1.x - float(offset[0])) < 1e-9 and abs(p1.y - float(offset[1])) < 1e-9
    else:
        assert written.crs.to_epsg() == int(target[5:])
    before = snapshot(world, "place")
    rep = importer.run(world, "place", path, mode="replace", crs=target if target in ("gcj02", "bd09") else None)
    assert rep.ok, rep.text()
    same_records(before, snapshot(world, "place"), tol=1e-7)


def test_kml_imports_points_and_polygons(world, tmp_path):
    pts = gpd.GeoDataFrame({"code": ["K1", "K2"], "name": ["甲", "乙"], "category": ["shop", "hazard"]},
                           geometry=[Point(114.003, 30.004), Point(114.013, 30.004)], crs="EPSG:4326")
    pts.to_file(tmp_path / "places.kml", driver="LIBKML", engine="pyogrio")
    rep = importer.run(world, "place", tmp_path / "places.kml")
    assert rep.ok and rep.inserted == 2, rep.text()
    got = world.execute(text("SELECT code, grid_code FROM place LEFT JOIN place_link USING (id) WHERE code LIKE 'K%' ORDER BY code")).all()
    assert got == [("K1", COMMUNITY + "001"), ("K2", COMMUNITY + "002")]
    polys = gpd.GeoDataFrame({"code": ["B9"], "name": ["九号楼"], "households": [12]},
                             geometry=[box(114.004, 30.006, 114.005, 30.007)], crs="EPSG:4326")
    polys.to_file(tmp_path / "b.kml", driver="LIBKML", engine="pyogrio")
    rep = importer.run(world, "building", tmp_path / "b.kml")
    assert rep.ok and rep.inserted == 1, rep.text()
    assert world.execute(text("SELECT households, grid_code FROM building LEFT JOIN building_link USING (id) WHERE code = 'B9'")).one() == (12, COMMUNITY + "001")


def test_spreadsheet_has_chinese_headers_and_resolved_names(world, tmp_path):
    from openpyxl import load_workbook

    exporter.export(world, "resident", tmp_path / "r.xlsx", principal=ADMIN)
    ws = load_workbook(tmp_path / "r.xlsx").active
    header = [c.value for c in ws[1]]
    assert header[:4] == ["编码", "名称", "性别", "出生日期"]
    assert {"网格名称", "社区名称", "街道名称", "区县名称", "身份证号(脱敏)", "经度", "纬度"} <= set(header)
    row = dict(zip(header, [c.value for c in ws[2]]))
    assert row["编码"] == "R1" and row["网格名称"] == "一网格" and row["社区名称"] == "测试社区"
    assert row["身份证号(脱敏)"] == "4201**********0005" and ID1 not in str([c.value for c in ws[2]])


def test_export_is_filtered_by_jurisdiction_and_area(world, tmp_path):
    g1 = authz.Principal("w1", "field", (COMMUNITY + "001",))
    frame = exporter.records(world, "place", g1)
    assert list(frame.code) == ["P1"]
    assert list(exporter.records(world, "place", ADMIN, area=COMMUNITY + "002").code) == ["P2"]
    assert list(exporter.records(world, "road", g1).code) == ["RD1", "RD2"]          # roads meeting G1
    with pytest.raises(InvalidInput, match="area"):
        exporter.records(world, "place", ADMIN, area="nope")


def test_unmasked_export_needs_pii_and_a_reason_and_is_audited(world, tmp_path):
    planner = authz.Principal("planner1", "planner", (DISTRICT,))
    with pytest.raises(authz.Forbidden):
        exporter.export(world, "resident", tmp_path / "r.csv", principal=planner, unmask=True, reason="x")
    with pytest.raises(InvalidInput, match="reason"):
        exporter.export(world, "resident", tmp_path / "r.csv", principal=ADMIN, unmask=True)
    exporter.export(world, "resident", tmp_path / "r.csv", principal=ADMIN, unmask=True, reason="核对")
    text_ = (tmp_path / "r.csv").read_text(encoding="utf-8-sig")
    assert ID1 in text_ and "身份证号" in text_
    rows = world.execute(text("SELECT entity_id, reason, after FROM audit_log WHERE action = 'read_pii' "
                              "ORDER BY entity_id")).all()
    assert len(rows) == 2 and {r.reason for r in rows} == {"核对"} and ID1 not in str([r.after for r in rows])


def test_shapefile_refuses_mixed_geometry_types(world, tmp_path):
    writes.add(world, "building", [{"code": "BP", "geometry": Point(114.001, 30.008)}])
    with pytest.raises(InvalidInput, match="one geometry type"):
        exporter.export(world, "building", tmp_path / "b.zip", principal=ADMIN)


# -- imports: modes ---------------------------------------------------------------------------------
def places_csv(path, rows, **kw):
    pd.DataFrame(rows).to_csv(path, index=False, **kw)
    return path


def test_gcj02_csv_is_converted_and_linked(world, tmp_path):
    wlon, wlat = 114.005, 30.002
    glon, glat = (float(v) for v in crs_mod.wgs84_to_gcj02(wlon, wlat))
    path = places_csv(tmp_path / "p.csv", [{"编码": "N1", "名称": "新店", "类别": "shop", "经度": glon, "纬度": glat}])
    rep = importer.run(world, "place", path, crs="gcj02", actor="test")
    assert rep.ok and rep.inserted == 1 and rep.crs == "gcj02", rep.text()
    x, y, grid = world.execute(text("SELECT ST_X(geom), ST_Y(geom), grid_code FROM place LEFT JOIN place_link USING (id) WHERE code = 'N1'")).one()
    assert abs(x - wlon) < 1e-8 and abs(y - wlat) < 1e-8 and grid == COMMUNITY + "001"
    audit = world.execute(text("SELECT action, after FROM audit_log WHERE entity = 'place' ORDER BY id DESC LIMIT 2")).all()
    assert audit[0].action == "import" and audit[0].after["inserted"] == 1 and audit[0].after["crs"] == "gcj02"
    new_id = world.execute(text("SELECT id FROM place WHERE code = 'N1'")).scalar()
    assert audit[0].after["created_ids"] == [[new_id, new_id]] and audit[0].after["updated_ids"] == []
    assert audit[1].after.get("code") != "N1"           # one row for the import, none per record


def test_upsert_updates_never_duplicates(world, tmp_path):
    rows = [{"code": "P1", "name": "改名便利店", "category": "shop", "lon": 114.006, "lat": 30.006},
            {"code": "P3", "name": "新药店", "category": "shop", "lon": 114.016, "lat": 30.006}]
    path = places_csv(tmp_path / "p.csv", rows)
    for _ in range(2):
        rep = importer.run(world, "place", path, mode="upsert")
        assert rep.ok and rep.written, rep.text()
    assert (rep.inserted, rep.updated) == (0, 2)
    got = world.execute(text("SELECT code, name, attributes FROM place ORDER BY code")).all()
    assert [(c, n) for c, n, _ in got] == [("P1", "改名便利店"), ("P2", "小学"), ("P3", "新药店")]
    assert got[0].attributes == {"licence": "91420103", "楼层": 1}        # a column the file lacks is kept


def test_grid_upsert_keeps_history_and_relinks(world, tmp_path):
    # G1 grows east to 114.015: P2? no – B2 (114.012) moves from G2 to G1
    frame = gpd.GeoDataFrame({"code": [COMMUNITY + "001"], "name": ["一网格(新)"]},
                             geometry=[box(114.00, 30.00, 114.015, 30.01)], crs="EPSG:4326")
    frame.to_file(tmp_path / "g.gpkg", engine="pyogrio")
    rep = importer.run(world, "grid", tmp_path / "g.gpkg", mode="upsert", actor="planner")
    assert rep.ok and (rep.inserted, rep.updated) == (0, 1), rep.text()
    rows = world.execute(text("SELECT name, valid_to IS NULL FROM grid WHERE code = :c ORDER BY id"),
                         {"c": COMMUNITY + "001"}).all()
    assert rows == [("一网格", False), ("一网格(新)", True)]
    assert world.execute(text("SELECT grid_code FROM building LEFT JOIN building_link USING (id) WHERE code = 'B2'")).scalar() == COMMUNITY + "001"


def test_replace_deletes_the_layer_first(world, tmp_path):
    path = places_csv(tmp_path / "p.csv", [{"code": "P9", "name": "唯一", "category": "shop", "lon": 114.005,
                                            "lat": 30.005}])
    rep = importer.run(world, "place", path, mode="replace", actor="test")
    assert (rep.inserted, rep.deleted) == (1, 2)
    assert world.execute(text("SELECT array_agg(code) FROM place")).scalar() == ["P9"]
    assert world.execute(text("SELECT count(*) FROM audit_log WHERE entity = 'place' AND action = 'delete'")).scalar() == 2


def test_admin_areas_and_their_parents_in_one_file(two_grids, tmp_path):
    frame = gpd.GeoDataFrame({"code": ["420103002000", "420103002001"], "name": ["新街道", "新社区"]},
                             geometry=[box(114.02, 30.0, 114.03, 30.01), box(114.02, 30.0, 114.03, 30.01)],
                             crs="EPSG:4326")
    frame.to_file(tmp_path / "a.geojson", engine="pyogrio")
    rep = importer.run(two_grids, "admin_area", tmp_path / "a.geojson")
    assert rep.ok and rep.inserted == 2, rep.text()
    got = two_grids.execute(text("SELECT code, level, parent_code, street_code FROM admin_area "
                                 "WHERE code LIKE '420103002%' ORDER BY code")).all()
    assert got == [("420103002000", "street", DISTRICT, "420103002000"),
                   ("420103002001", "community", "420103002000", "420103002000")]


def test_column_mapping_and_gbk_csv(world, tmp_path):
    path = tmp_path / "gbk.csv"
    pd.DataFrame([{"编号": "M1", "店名": "老字号", "类别": "shop", "X坐标": 114.003, "Y坐标": 30.003}]).to_csv(
        path, index=False, encoding="gb18030")
    rep = importer.run(world, "place", path, mapping={"code": "编号", "name": "店名", "lon": "X坐标", "lat": "Y坐标"})
    assert rep.ok and rep.inserted == 1, rep.text()
    assert world.execute(text("SELECT name FROM place WHERE code = 'M1'")).scalar() == "老字号"


def test_dry_run_checks_and_writes_nothing(world, tmp_path):
    before = counts(world)
    path = places_csv(tmp_path / "p.csv", [{"code": "D1", "name": "店", "category": "shop", "lon": 114.005,
                                            "lat": 30.005}])
    rep = importer.run(world, "place", path, dry_run=True)
    assert rep.ok and rep.valid == 1 and not rep.written
    assert counts(world) == before


def test_make_valid_repairs_and_says_so(world, tmp_path):
    bowtie = "POLYGON ((114.002 30.006, 114.004 30.008, 114.004 30.006, 114.002 30.008, 114.002 30.006))"
    path = places_csv(tmp_path / "b.csv", [{"code": "BT", "wkt": bowtie}])
    before = counts(world)
    rep = importer.run(world, "building", path)
    assert not rep.written and counts(world) == before
    assert [(p.row, p.field) for p in rep.problems] == [(2, "geometry")]
    assert "Self-intersection" in rep.problems[0].reason and "--make-valid" in rep.problems[0].reason
    rep = importer.run(world, "building", path, make_valid=True)
    assert rep.ok and rep.inserted == 1 and any("row 2: geometry repaired (Self-intersection" in n for n in rep.notes)
    assert world.execute(text("SELECT ST_IsValid(geom), ST_GeometryType(geom) FROM building WHERE code = 'BT'")).one() \
        == (True, "ST_MultiPolygon")


def test_skip_invalid_writes_the_good_rows(world, tmp_path):
    rows = [{"code": "S1", "name": "好", "category": "shop", "lon": 114.005, "lat": 30.005},
            {"code": "S2", "name": "坏", "category": "spaceport", "lon": 114.005, "lat": 30.005},
            {"code": "S3", "name": "好", "category": "shop", "lon": 114.015, "lat": 30.005}]
    rep = importer.run(world, "place", places_csv(tmp_path / "p.csv", rows), skip_invalid=True)
    assert rep.written and (rep.inserted, rep.skipped) == (2, 1)
    assert [(p.row, p.field, p.value) for p in rep.problems] == [(3, "category", "spaceport")]
    assert world.execute(text("SELECT array_agg(code ORDER BY code) FROM place WHERE code LIKE 'S%'")).scalar() == ["S1", "S3"]


def test_skip_invalid_never_skips_a_problem_of_the_whole_file(world, tmp_path):
    before = counts(world)
    rows = [{"code": "S1", "name": "好", "category": "shop", "lon": 114.005, "lat": 30.005, "colour": "red"}]
    rep = importer.run(world, "place", places_csv(tmp_path / "p.csv", rows), skip_invalid=True)
    assert not rep.written and counts(world) == before
    assert [(p.row, p.field) for p in rep.problems] == [(None, "colour")]


# -- imports: every bad input, the report's content, nothing written ----------------------------
_OUT = (116.39, 39.9)     # Beijing: far outside the test district
_G = tuple(float(v) for v in crs_mod.wgs84_to_gcj02(114.028, 30.005))     # a GCJ-02 point near the east edge
_B = tuple(float(v) for v in crs_mod.wgs84_to_bd09(114.028, 30.005))

BAD = {
    "unknown column": ("place", [{"code": "X1", "name": "n", "category": "shop", "lon": 114.005, "lat": 30.005,
                                  "colour": "red"}], [(None, "colour", "unknown column")]),
    "missing required column": ("place", [{"code": "X1", "name": "n", "lon": 114.005, "lat": 30.005}],
                                [(None, "category", "required column 'category'")]),
    "missing required value": ("place", [{"code": "X1", "name": "", "category": "shop", "lon": 114.005,
                                          "lat": 30.005}], [(2, "name", "is required")]),
    "missing code": ("place", [{"code": None, "name": "n", "category": "shop", "lon": 114.005, "lat": 30.005}],
                     [(2, "code", "is required")]),
    "wrong types": ("building", [{"code": "X1", "households": "many", "floors": "2.5", "wkt": "POINT (114.005 30.005)"}],
                    [(2, "floors", "whole number"), (2, "households", "whole number")]),
    "wrong date": ("resident", [{"code": "X1", "name": "n", "birth_date": "yesterday", "lon": 114.005, "lat": 30.005}],
                   [(2, "birth_date", "not a date")]),
    "wrong json": ("place", [{"code": "X1", "name": "n", "category": "shop", "attributes": "[1, 2",
                              "lon": 114.005, "lat": 30.005}], [(2, "attributes", "JSON object")]),
    "not a number": ("place", [{"code": "X1", "name": "n", "category": "shop", "lon": "abc", "lat": 30.005}],
                     [(2, "lon", "not a number")]),
    "value not allowed": ("place", [{"code": "X1", "name": "n", "category": "spaceport", "lon": 114.005,
                                     "lat": 30.005}], [(2, "category", "must be one of")]),
    "too long": ("place", [{"code": "X" * 41, "name": "n", "category": "shop", "lon": 114.005, "lat": 30.005}],
                 [(2, "code", "longer than 40")]),
    "self-intersecting polygon": ("building", [{"code": "X1", "wkt": "POLYGON ((114.002 30.006, 114.004 30.008, "
                                               "114.004 30.006, 114.002 30.008, 114.002 30.006))"}],
                                  [(2, "geometry", "Self-intersection")]),
    "empty geometry": ("building", [{"code": "X1", "wkt": "POLYGON EMPTY"}], [(2, "geometry", "geometry is empty")]),
    "not WKT": ("building", [{"code": "X1", "wkt": "POLYGON ((1 2, 3"}], [(2, "wkt", "not WKT")]),
    "missing geometry": ("place", [{"code": "X1", "name": "n", "category": "shop", "lon": None, "lat": None}],
                         [(2, "geometry", "geometry is missing")]),
    "no geometry column": ("place", [{"code": "X1", "name": "n", "category": "shop"}],
                           [(None, "geometry", "lon and lat")]),
    "wrong geometry type": ("grid", [{"code": COMMUNITY + "009", "name": "n", "wkt": "POINT (114.005 30.005)"}],
                            [(2, "geometry", "not allowed for grid")]),
    "outside the district": ("place", [{"code": "X1", "name": "n", "category": "shop", "lon": _OUT[0],
                                        "lat": _OUT[1]}], [(2, "geometry", "outside the district")]),
    "swapped lat/lon": ("place", [{"code": "X1", "name": "n", "category": "shop", "lon": 30.005, "lat": 114.005}],
                        [(2, "geometry", "lat/lon swapped")]),
    "swapped lat/lon inside the range": ("building", [{"code": "X1", "wkt": "POINT (30.005 30.005)"}],
                                         [(2, "geometry", "outside the district")]),
    "GCJ-02 declared as WGS84": ("place", [{"code": "X1", "name": "n", "category": "shop", "lon": _G[0],
                                            "lat": _G[1]}], [(2, "geometry", "look like GCJ-02 (--crs gcj02)")]),
    "BD-09 declared as WGS84": ("place", [{"code": "X1", "name": "n", "category": "shop", "lon": _B[0],
                                           "lat": _B[1]}], [(2, "geometry", "look like BD-09")]),
    "duplicate codes in the file": ("place", [
        {"code": "X1", "name": "a", "category": "shop", "lon": 114.005, "lat": 30.005},
        {"code": "X2", "name": "b", "category": "shop", "lon": 114.005, "lat": 30.005},
        {"code": "X1", "name": "c", "category": "shop", "lon": 114.005, "lat": 30.005}],
        [(2, "code", "also on rows 4"), (4, "code", "also on rows 2")]),
    "code already stored": ("place", [{"code": "P1", "name": "n", "category": "shop", "lon": 114.005, "lat": 30.005}],
                            [(2, "code", "already in the database (use --mode upsert")]),
    "unknown community": ("grid", [{"code": "420103001999001", "name": "n",
                                    "wkt": "POLYGON ((114 30, 114.01 30, 114.01 30.01, 114 30))"}],
                          [(2, "code", "community (the code's first 12 digits) is not in the database")]),
    "unknown parent area": ("admin_area", [{"code": "420103009001", "name": "n"}],
                            [(2, "parent_code", "parent admin area is neither")]),
    "malformed admin code": ("admin_area", [{"code": "4201", "name": "n"}], [(2, "code", "12 digits")]),
    "unknown building": ("resident", [{"code": "X1", "name": "n", "building_code": "NOPE"}],
                         [(2, "building_code", "building is not in the database")]),
    "resident nowhere": ("resident", [{"code": "X1", "name": "n"}], [(2, "building_code", "needs a building")]),
    "bad ID number": ("resident", [{"code": "X1", "name": "n", "id_number": "420103197507270004", "lon": 114.005,
                                    "lat": 30.005}], [(2, "id_number", "wrong check digit")]),
    "unknown incident category": ("incident", [{"code": "X1", "category": "ufo", "lon": 114.005, "lat": 30.005}],
                                  [(2, "category", "unknown category")]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_reported_and_nothing_is_written(world, tmp_path, case):
    layer, rows, expected = BAD[case]
    path = places_csv(tmp_path / "in.csv", rows)
    before = counts(world)
    rep = importer.run(world, layer, path, actor="test")
    assert not rep.written and counts(world) == before
    got = sorted((p.row, p.field, p.reason) for p in rep.problems)
    assert len(got) == len(expected), rep.text()
    for (row, field, reason), (erow, efield, ereason) in zip(got, sorted(expected)):
        assert (row, field) == (erow, efield) and ereason in reason, rep.text()


def test_bad_id_number_is_masked_in_the_report(world, tmp_path):
    rows = [{"code": "X1", "name": "n", "id_number": "420103197507270004", "lon": 114.005, "lat": 30.005}]
    rep = importer.run(world, "resident", places_csv(tmp_path / "r.csv", rows))
    assert rep.problems[0].value == "4201**********0004"
    assert "420103197507270004" not in rep.text() and "420103197507270004" not in json.dumps(rep.to_dict())


def test_every_problem_of_a_file_is_listed(world, tmp_path):
    rows = [{"code": "X1", "name": "", "category": "shop", "lon": 114.005, "lat": 30.005},
            {"code": "X2", "name": "n", "category": "ufo", "lon": 114.005, "lat": 30.005},
            {"code": "X3", "name": "n", "category": "shop", "lon": _OUT[0], "lat": _OUT[1]}]
    rep = importer.run(world, "place", places_csv(tmp_path / "p.csv", rows))
    assert [(p["row"], p["field"]) for p in rep.to_dict()["problems"]] == [(2, "name"), (3, "category"), (4, "geometry")]
    rep.write_csv(tmp_path / "report.csv")
    report = pd.read_csv(tmp_path / "report.csv", encoding="utf-8-sig")
    assert list(report.columns) == ["行号 row", "字段 field", "值 value", "原因 reason"] and len(report) == 3


def test_xlsx_rows_are_numbered_as_excel_shows_them(world, tmp_path):
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.append(["编码", "名称", "类别", "经度", "纬度"])
    ws.append(["X1", "店", "shop", 114.005, 30.005])
    ws.append(["X2", "店", "shop", "东经114度", 30.005])
    wb.save(tmp_path / "p.xlsx")
    rep = importer.run(world, "place", tmp_path / "p.xlsx")
    assert [(p.row, p.field, p.value) for p in rep.problems] == [(3, "lon", "东经114度")]


@pytest.mark.parametrize("name, content", [("broken.gpkg", b"not a geopackage at all"),
                                           ("broken.zip", b"PK\x03\x04 truncated"),
                                           ("broken.xlsx", b"<html>not a workbook</html>"),
                                           ("broken.geojson", b'{"type": "FeatureCollection", "features": [')])
def test_unreadable_file_is_refused_by_name(world, tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    before = counts(world)
    with pytest.raises(InvalidInput, match=f"cannot read '{name}'"):
        importer.run(world, "place", tmp_path / name)
    assert counts(world) == before


def test_unknown_suffix_mode_and_crs(world, tmp_path):
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(InvalidInput, match="cannot tell the format"):
        importer.run(world, "place", tmp_path / "p.txt")
    path = places_csv(tmp_path / "p.csv", [{"code": "X1", "name": "n", "category": "shop", "lon": 1, "lat": 2}])
    with pytest.raises(InvalidInput, match="mode must be one of"):
        importer.run(world, "place", path, mode="merge")
    rep = importer.run(world, "place", path, crs="EPSG:999999")
    assert [(p.row, p.field) for p in rep.problems] == [(None, "crs")] and "unknown CRS" in rep.problems[0].reason


def test_projected_file_is_read_in_its_crs(world, tmp_path):
    # a Gauss-Krüger (CGCS2000, CM 114E) GeoPackage: the .gpkg SRS says so, no --crs needed
    frame = gpd.GeoDataFrame({"code": ["GK1"], "name": ["店"], "category": ["shop"]},
                             geometry=[Point(114.005, 30.005)], crs="EPSG:4490").to_crs("EPSG:4547")
    frame.to_file(tmp_path / "gk.gpkg", engine="pyogrio")
    rep = importer.run(world, "place", tmp_path / "gk.gpkg")
    assert rep.ok and rep.crs == "EPSG:4547", rep.text()
    x, y = world.execute(text("SELECT ST_X(geom), ST_Y(geom) FROM place WHERE code = 'GK1'")).one()
    assert abs(x - 114.005) < 1e-7 and abs(y - 30.005) < 1e-7


def test_projected_csv_without_crs_is_caught(world, tmp_path):
    x, y = crs_mod.xy_from_storage(114.005, 30.005, "EPSG:4547")
    rows = [{"code": "X1", "name": "n", "category": "shop", "lon": float(x), "lat": float(y)}]
    rep = importer.run(world, "place", places_csv(tmp_path / "p.csv", rows))
    assert "outside lon/lat range" in rep.problems[0].reason and "projected" in rep.problems[0].reason
    rep = importer.run(world, "place", places_csv(tmp_path / "p.csv", rows), crs="EPSG:4547", dry_run=True)
    assert rep.ok and rep.valid == 1, rep.text()


def test_shapefile_names_fit_ten_characters_and_are_unique():
    from gisgrid.io import fields

    for layer in fields.LAYERS.values():
        names = [f.shp for f in (*layer.fields, *fields.derived_for(layer))]
        assert all(len(n) <= 10 for n in names), layer.name
        assert len(set(names)) == len(names), layer.name


def test_a_large_file_takes_the_bulk_paths(world, tmp_path):
    # over 10,000 codes: stored codes are looked up through COPY, links polygon-driven
    rng = np.random.default_rng(7)
    n = 12_000
    rows = pd.DataFrame({"code": [f"L{i:05d}" for i in range(n)], "name": "店", "category": "shop",
                         "lon": rng.uniform(114.0005, 114.0195, n), "lat": rng.uniform(30.0005, 30.0095, n)})
    rows.loc[n - 1, "code"] = "P1"                                  # already stored
    path = tmp_path / "many.csv"
    rows.to_csv(path, index=False)
    before = counts(world)
    rep = importer.run(world, "place", path)
    assert [(p.row, p.field, p.value) for p in rep.problems] == [(n + 1, "code", "P1")] and counts(world) == before
    rep = importer.run(world, "place", path, skip_invalid=True)
    assert rep.inserted == n - 1
    linked = world.execute(text("SELECT count(*) FILTER (WHERE grid_code = :g1 AND ST_X(geom) < 114.01) + "
                                "count(*) FILTER (WHERE grid_code = :g2 AND ST_X(geom) > 114.01) "
                                "FROM place LEFT JOIN place_link USING (id) WHERE code LIKE 'L%'"), {"g1": COMMUNITY + "001", "g2": COMMUNITY + "002"})
    assert linked.scalar() == n - 1


def test_residents_with_points_only_are_linked_by_their_points(world, tmp_path):
    rows = [{"code": "RP1", "name": "赵六", "lon": 114.004, "lat": 30.004},
            {"code": "RP2", "name": "钱七", "lon": 114.014, "lat": 30.004},
            {"code": "RP3", "name": "孙八", "lon": 114.025, "lat": 30.015}]          # in the district, no grid
    rep = importer.run(world, "resident", places_csv(tmp_path / "r.csv", rows))
    assert rep.ok and rep.inserted == 3, rep.text()
    got = world.execute(text("SELECT code, grid_code, district_code FROM resident LEFT JOIN resident_link USING (id) WHERE code LIKE 'RP%' ORDER BY code")).all()
    assert got == [("RP1", COMMUNITY + "001", DISTRICT), ("RP2", COMMUNITY + "002", DISTRICT), ("RP3", None, DISTRICT)]
