"""Fuzzing the GeoJSON and coordinate parsing (hypothesis, bounded and derandomised so CI is
repeatable): whatever comes in, the answer is a valid geometry or a clear gisgrid error,
never a crash, and a refused write leaves nothing behind."""
from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from gisgrid.errors import GisgridError, InvalidGeometry
from gisgrid.layers import writes
from gisgrid.spatial.geometry import check, from_geojson, point

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**20, 10**20),
                    st.floats(-200, 200), st.text(max_size=5), st.none(), st.booleans())
position = st.lists(numbers, min_size=0, max_size=4)
nested = st.recursive(position, lambda inner: st.lists(inner, max_size=5), max_leaves=40)
geom_types = st.sampled_from(["Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon",
                              "GeometryCollection", "Feature", "Circle", "", "point"])
geojson = st.one_of(
    st.fixed_dictionaries({"type": geom_types, "coordinates": nested}),
    st.fixed_dictionaries({"type": geom_types}, optional={"coordinates": nested, "geometries": st.lists(
        st.fixed_dictionaries({"type": geom_types, "coordinates": nested}), max_size=3)}),
    st.dictionaries(st.text(max_size=8), numbers, max_size=4),
    numbers, st.lists(numbers, max_size=3),
)
ALLOWED = [("Point",), ("MultiPolygon",), ("LineString", "MultiLineString"), ("Polygon", "MultiPolygon", "Point")]


@FUZZ
@given(obj=geojson, allowed=st.sampled_from(ALLOWED))
def test_geojson_parsing_gives_valid_geometry_or_clear_error(obj, allowed):
    try:
        g = check(from_geojson(obj), allowed)
    except InvalidGeometry as e:
        assert e.message and len(e.message) < 2000
        return
    assert g.is_valid and not g.is_empty and g.geom_type in allowed


@FUZZ
@given(lon=numbers, lat=numbers)
def test_point_parsing(lon, lat):
    try:
        p = point(lon, lat)
    except InvalidGeometry as e:
        assert e.field in ("lon/lat", "lon", "lat")
        return
    assert -180 <= p.x <= 180 and -90 <= p.y <= 90 and math.isfinite(p.x + p.y)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lon=st.one_of(st.text(max_size=12), st.floats(-400, 400).map(str)),
       lat=st.one_of(st.text(max_size=12), st.floats(-100, 100).map(str)),
       crs=st.one_of(st.none(), st.sampled_from(["EPSG:4326", "EPSG:4490", "EPSG:3857", "EPSG:4547", "EPSG:0",
                                                 "gcj02", "", "EPSG:4326'; DROP TABLE grid; --"]), st.text(max_size=10)))
def test_locate_endpoint_answers_200_400_or_404(client, lon, lat, crs):
    q = {"lon": lon, "lat": lat, **({"crs": crs} if crs is not None else {})}
    r = client.get("/api/locate", query_string=q)
    assert r.status_code in (200, 400, 404), r.data
    assert r.is_json and (r.status_code == 200 or r.json["message"])


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(obj=geojson)
def test_refused_writes_leave_nothing(two_grids, obj):
    session = two_grids
    before = session.execute(text("SELECT count(*) FROM incident")).scalar()
    try:
        with session.begin_nested():
            writes.add(session, "incident", [{"code": "FZ", "category": "noise", "geometry": obj}])
    except GisgridError:
        assert session.execute(text("SELECT count(*) FROM incident")).scalar() == before
        return
    row = session.execute(text("SELECT ST_IsValid(geom), grid_code FROM incident NATURAL LEFT JOIN incident_link WHERE code = 'FZ'")).one()
    assert row[0] is True
    session.execute(text("DELETE FROM incident WHERE code = 'FZ'"))
