"""Bad input on the write path: a clear error naming the record and the reason, nothing stored."""
from __future__ import annotations

import pytest
from shapely.geometry import Point, Polygon, box
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from gisgrid.errors import DuplicateCode, InvalidGeometry, InvalidInput, UnknownReference
from gisgrid.layers import writes

from conftest import COMMUNITY

BOWTIE = Polygon([(114.0, 30.0), (114.01, 30.01), (114.01, 30.0), (114.0, 30.01)])


def count(session, table):
    return session.execute(text(f"SELECT count(*) FROM {table}")).scalar()


@pytest.mark.parametrize("layer, records, error, match", [
    ("grid", [{"code": COMMUNITY + "003", "name": "x", "geometry": BOWTIE}], InvalidGeometry,
     r"\[grid #1 420103001001003\] geometry: invalid geometry: Self-intersection"),
    ("grid", [{"code": "420103001099001", "name": "x", "geometry": box(114.03, 30, 114.04, 30.01)}],
     UnknownReference, "community '420103001099' does not exist"),
    ("grid", [{"code": COMMUNITY + "001", "name": "again", "geometry": box(114.03, 30, 114.04, 30.01)}],
     DuplicateCode, r"Key \(code\)=\(420103001001001\) already exists"),
    ("grid", [{"code": COMMUNITY + "007", "name": "pt", "geometry": Point(114.0, 30.0)}], InvalidGeometry,
     "type Point not allowed"),
    ("building", [{"code": "B1", "geometry": box(114, 30, 114.001, 30.001)},
                  {"code": "B1", "geometry": box(114, 30, 114.001, 30.001)}], DuplicateCode,
     r"appears twice in this batch \(records #2 and #3\)"),
    ("building", [{"code": "B2", "geometry": box(114, 30, 114.001, 30.001), "colour": "red"}], InvalidInput,
     r"unknown fields \['colour'\]"),
    ("building", [{"code": "B3", "geometry": box(114, 30, 114.001, 30.001), "households": -3}], InvalidInput,
     "violates ck_building_households"),
    ("building", [{"code": "B4", "geometry": Point(30.005, 114.005)}], InvalidGeometry,
     "outside lon/lat range"),
    ("building", [{"code": "B5"}], InvalidInput, "geometry is required"),
    ("resident", [{"code": "R1", "name": "无址"}], InvalidInput, "needs a building .* or a point"),
    ("resident", [{"code": "R2", "name": "张三", "building_code": "NOPE"}], UnknownReference,
     "building 'NOPE' does not exist"),
    ("incident", [{"code": "E1", "category": "noise", "geometry": {"type": "Point", "coordinates": "x"}}],
     InvalidGeometry, "malformed GeoJSON"),
    ("admin_area", [{"code": "42010300100", "name": "short"}], InvalidInput, "12 digits"),
    ("admin_area", [{"code": "420103009000", "name": "orphan", "parent_code": "420199000000"}], UnknownReference,
     "parent admin area '420199000000' does not exist"),
    ("nonsense", [{}], InvalidInput, "unknown layer 'nonsense'"),
])
def test_bad_records_are_refused_and_nothing_is_written(two_grids, layer, records, error, match):
    session = two_grids
    before = {t: count(session, t) for t in ("grid", "building", "resident", "incident", "admin_area")}
    good_first = {"code": "OK-1", "geometry": box(114.001, 30.001, 114.002, 30.002)}
    if layer == "building":      # a good record before the bad one must not survive either
        records = [good_first] + records
    with pytest.raises(error, match=match):
        writes.add(session, layer, records)
    assert {t: count(session, t) for t in before} == before


def test_unknown_crs_is_refused(two_grids):
    with pytest.raises(InvalidInput, match="unknown CRS 'EPSG:0'"):
        writes.add(two_grids, "incident", [{"code": "E1", "category": "noise", "geometry": Point(1, 2)}],
                   crs="EPSG:0")


def test_projected_input_is_reprojected_and_linked(two_grids):
    from pyproj import Transformer

    x, y = Transformer.from_crs(4326, 4547, always_xy=True).transform(114.005, 30.005)
    writes.add(two_grids, "incident", [{"code": "E1", "category": "noise", "geometry": Point(x, y)}], crs="EPSG:4547")
    row = two_grids.execute(text("SELECT grid_code, ST_X(geom), ST_Y(geom) FROM incident NATURAL LEFT JOIN incident_link")).one()
    assert row[0] == COMMUNITY + "001"
    assert row[1] == pytest.approx(114.005, abs=1e-8) and row[2] == pytest.approx(30.005, abs=1e-8)


@pytest.mark.parametrize("sql, match", [
    ("INSERT INTO building (code, geom) VALUES ('W', ST_GeomFromText('POINT(12720000 3570000)', 3857))",
     "SRID"),
    ("INSERT INTO building (code, geom) VALUES ('W', ST_GeomFromText("
     "'POLYGON((114 30, 114.01 30.01, 114.01 30, 114 30.01, 114 30))', 4326))", "ck_building_geom_valid"),
    ("INSERT INTO grid (code, name, community_code, street_code, district_code, geom) VALUES "
     "('420103001001009', 'l', '420103001001', '420103001000', '420103000000', "
     "ST_GeomFromText('MULTILINESTRING((114 30, 115 31))', 4326))", "Geometry type .MultiLineString. does not match"),
])
def test_database_refuses_what_bypasses_the_layer_code(two_grids, sql, match):
    with pytest.raises(DBAPIError, match=match):
        with two_grids.begin_nested():
            two_grids.execute(text(sql))
