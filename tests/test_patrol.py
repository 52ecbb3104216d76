"""Patrol: the check-in rule at its boundary, idempotent check-ins, coverage on hand-made
geometry (straight line and along the streets), uncovered polygons, compliance, overdue
points, trails, statistics, and the API with its exports.

Hand-made geometry is drawn in metres in EPSG:4547 (CGCS2000 / 3-degree GK CM 114E, the zone
of the test grids) from an origin O inside G1 (conftest: G1 = 114.00–114.01, 30.00–30.01)::

        O+(0,400)                 O+(400,400)
                                      |  road 2
                                      |        • B (390,100): 10 m off road 2
        • P (0,10)        • C (230,120)
        O==========================O+(400,0)   road 1
                     • A (200,-20)

Straight line from P: A 202 m, C 255 m, B 400 m. Along the streets (walk to the road, along
it, walk off): A 10+200+20 = 230 m, C 10+230+120 = 360 m, B 10+400+100+10 = 520 m.
"""
from __future__ import annotations

import math
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import numpy as np
import pyproj
import pytest
from shapely.geometry import LineString, Point
from sqlalchemy import text

from gisgrid.errors import Conflict, InvalidInput, NotFound
from gisgrid.layers import patrol, patrol_coverage, writes
from gisgrid.spatial import network

from conftest import COMMUNITY, G1

GK = "EPSG:4547"
TO_GK = pyproj.Transformer.from_crs("EPSG:4326", GK, always_xy=True)
OX, OY = TO_GK.transform(114.001, 30.001)
GEOD = pyproj.Geod(ellps="WGS84")
ALL = ("TRUE", {})
SHANGHAI = ZoneInfo("Asia/Shanghai")


def at(x, y) -> Point:
    return Point(OX + x, OY + y)


# -- pure -------------------------------------------------------------------------------------
@pytest.mark.parametrize("radius, accuracy, allowed", [
    (50, None, 50), (50, 0, 50), (50, 20, 70), (50, 50, 100), (50, 500, 100), (30, 12.5, 42.5),
])
def test_allowed_metres_is_radius_plus_capped_accuracy(radius, accuracy, allowed):
    assert patrol.allowed_metres(radius, accuracy) == allowed


def test_network_distances_on_an_l_shaped_street():
    roads = [LineString([(0, 0), (400, 0)]), LineString([(400, 0), (400, 400)])]
    d = network.distances(roads, [Point(0, 10)], [Point(200, -20), Point(230, 120), Point(390, 100)], 1000)
    assert d.round(6).tolist() == [230.0, 360.0, 520.0]
    cut = network.distances(roads, [Point(0, 10)], [Point(200, -20), Point(390, 100)], 300)
    assert cut[0] == pytest.approx(230) and math.isinf(cut[1])


def test_crossing_roads_are_noded_and_nearest_source_wins():
    # a plus: two roads crossing at (0,0) without a shared vertex
    roads = [LineString([(-500, 0), (500, 0)]), LineString([(0, -500), (0, 500)])]
    d = network.distances(roads, [Point(-400, 0), Point(0, 450)], [Point(5, -300)], 1000)
    assert d.tolist() == pytest.approx([5 + 300 + 0 + min(400, 450)])      # via the crossing
    assert math.isinf(network.distances([], [Point(0, 0)], [Point(1, 1)], 100)[0])


# -- fixtures ---------------------------------------------------------------------------------
def add_point(session, code, geom, *, crs="EPSG:4326", radius=50, visits=None, team=None):
    writes.add(session, "patrol_point", [{"code": code, "name": code, "radius_m": radius, "visits_per_day": visits,
                                          "team": team, "geometry": geom}], crs=crs, actor="test")


def add_buildings(session, rows, crs=GK):
    writes.add(session, "building", [{"code": c, "households": hh, "geometry": g} for c, g, hh in rows], crs=crs)


def destination(lon, lat, metres, azimuth=90.0):
    x, y, _ = GEOD.fwd(lon, lat, azimuth, metres)
    return x, y


# -- check-ins ----------------------------------------------------------------------------------
@pytest.mark.parametrize("accuracy, allowed", [(None, 50.0), (20, 70.0), (500, 100.0)])
@pytest.mark.parametrize("azimuth", [0, 90, 225])
def test_checkin_is_accepted_up_to_radius_plus_accuracy_and_rejected_beyond(two_grids, accuracy, allowed, azimuth):
    s = two_grids
    add_point(s, "PP1", Point(114.005, 30.005), radius=50)
    results = {}
    for label, metres in (("inside", allowed - 0.05), ("outside", allowed + 0.05)):
        lon, lat = destination(114.005, 30.005, metres, azimuth)
        out, created = patrol.check_in(s, "w1", ALL, point="PP1", lon=lon, lat=lat, accuracy_m=accuracy,
                                       idempotency_key=f"k-{label}-{accuracy}-{azimuth}")
        assert created and out["distance_m"] == pytest.approx(metres, abs=0.01) and out["allowed_m"] == allowed
        results[label] = out["status"]
    assert results == {"inside": "accepted", "outside": "rejected"}
    stored = s.execute(text("SELECT accepted, round(distance_m::numeric, 1) FROM patrol_checkin "
                            "ORDER BY distance_m")).all()
    assert [r[0] for r in stored] == [True, False]       # the rejected attempt is kept, with its distance
    assert float(stored[1][1]) == pytest.approx(allowed + 0.05, abs=0.1)


def test_checkin_is_idempotent_and_checks_its_input(two_grids):
    s = two_grids
    add_point(s, "PP1", Point(114.005, 30.005), radius=50)
    first, created = patrol.check_in(s, "w1", ALL, point="PP1", lon=114.005, lat=30.005, idempotency_key="same")
    again, created2 = patrol.check_in(s, "w1", ALL, point="PP1", lon=114.9, lat=30.9, idempotency_key="same")
    assert created and not created2 and again == first
    assert s.execute(text("SELECT count(*) FROM patrol_checkin")).scalar() == 1
    with pytest.raises(NotFound, match="no patrol point 'NOPE'"):
        patrol.check_in(s, "w1", ALL, point="NOPE", lon=114.005, lat=30.005)
    with pytest.raises(NotFound):          # a point outside the worker's jurisdiction is not revealed
        patrol.check_in(s, "w1", ("pl.grid_code = :g", {"g": "elsewhere"}), point="PP1", lon=114.005, lat=30.005)
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    with pytest.raises(InvalidInput, match="in the future") as e:
        patrol.check_in(s, "w1", ALL, point="PP1", lon=114.005, lat=30.005, at=future)
    assert e.value.field == "at"
    with pytest.raises(InvalidInput, match="time zone"):
        patrol.check_in(s, "w1", ALL, point="PP1", lon=114.005, lat=30.005, at="2026-11-20T10:00:00")
    with pytest.raises(InvalidInput, match="accuracy_m must be between"):
        patrol.check_in(s, "w1", ALL, point="PP1", lon=114.005, lat=30.005, accuracy_m=-1)
    assert s.execute(text("SELECT count(*) FROM patrol_checkin")).scalar() == 1


# -- coverage -----------------------------------------------------------------------------------
@pytest.fixture
def l_street(two_grids):
    s = two_grids
    add_point(s, "P", at(0, 10), crs=GK)
    add_buildings(s, [("A", at(200, -20), 10), ("C", at(230, 120), 30), ("B", at(390, 100), 20)])
    add_buildings(s, [("FAR", Point(114.015, 30.005), 7)], crs="EPSG:4326")      # in G2
    return s


def _cov(s, **kw):
    rows = patrol_coverage.coverage(s, ALL, ALL, ALL, **kw)
    return {r["code"]: r for r in rows}


def test_straight_coverage_counts_buildings_and_households_within_distance(l_street):
    g1, g2 = COMMUNITY + "001", COMMUNITY + "002"
    by_grid = _cov(l_street, level="grid", distance_m=300)
    assert {k: (r["points"], r["buildings"], r["buildings_covered"], r["households"], r["households_covered"])
            for k, r in by_grid.items()} == {g1: (1, 3, 2, 60, 40), g2: (0, 1, 0, 7, 0)}
    assert by_grid[g1]["building_share"] == pytest.approx(2 / 3, abs=1e-4)
    assert by_grid[g2]["grids_without_point"] == 1 and by_grid[g1]["grids_without_point"] == 0
    by_comm = _cov(l_street, level="community", distance_m=300)
    assert (by_comm[COMMUNITY]["buildings_covered"], by_comm[COMMUNITY]["household_share"]) == (2, round(40 / 67, 4))
    # exactly at the edge: C is 255.15 m from P
    c_dist = math.hypot(230, 110)
    assert _cov(l_street, distance_m=c_dist + 0.05)[g1]["buildings_covered"] == 2
    assert _cov(l_street, distance_m=c_dist - 0.05)[g1]["buildings_covered"] == 1
    wp = patrol_coverage.grids_without_point(l_street, ALL)
    assert wp == {"total": 1, "items": [{"code": g2, "name": "二网格"}]}


def test_network_coverage_walks_along_the_streets(l_street):
    g1 = COMMUNITY + "001"
    with pytest.raises(Conflict, match="no road layer"):
        _cov(l_street, method="network", distance_m=300)
    writes.add(l_street, "road", [{"code": "R1", "geometry": LineString([at(0, 0), at(400, 0)])},
                                  {"code": "R2", "geometry": LineString([at(400, 0), at(400, 400)])}], crs=GK)
    net = _cov(l_street, method="network", distance_m=300, metric_crs=GK)[g1]
    assert (net["buildings_covered"], net["households_covered"]) == (1, 10)        # A only; C is 360 m away
    assert _cov(l_street, method="network", distance_m=365)[g1]["buildings_covered"] == 2   # default CRS: the GK zone
    assert _cov(l_street, method="network", distance_m=525)[g1]["buildings_covered"] == 3
    straight = _cov(l_street, method="straight", distance_m=300)[g1]
    assert straight["buildings_covered"] == 2                                      # A and C


@pytest.mark.parametrize("kw, field", [({"level": "block"}, "level"), ({"method": "bus"}, "method"),
                                       ({"distance_m": 0}, "distance"), ({"distance_m": "far"}, "distance"),
                                       ({"distance_m": 5001}, "distance")])
def test_coverage_refuses_bad_options(two_grids, kw, field):
    with pytest.raises(InvalidInput) as e:
        patrol_coverage.coverage(two_grids, ALL, ALL, ALL, **kw)
    assert e.value.field == field


def test_uncovered_polygons_are_grid_minus_circles(two_grids):
    s = two_grids
    add_point(s, "MID", Point(114.005, 30.005))
    fc = patrol_coverage.uncovered(s, ALL, distance_m=300)
    by = {f["properties"]["code"]: f for f in fc["features"]}
    g1_m2 = s.execute(text("SELECT ST_Area(ST_GeomFromText(:w, 4326)::geography)"), {"w": G1.wkt}).scalar()
    circle = 0.5 * 64 * 300 ** 2 * math.sin(2 * math.pi / 64)      # the 64-gon drawn for the circle
    assert by[COMMUNITY + "001"]["properties"]["uncovered_m2"] == pytest.approx(g1_m2 - circle, rel=0.002)
    assert by[COMMUNITY + "002"]["properties"]["share"] == 1.0       # no point near G2: all of it uncovered
    assert by[COMMUNITY + "001"]["geometry"]["type"] == "Polygon"
    assert len(by[COMMUNITY + "001"]["geometry"]["coordinates"]) == 2  # the grid with a hole where the circle is
    with pytest.raises(InvalidInput, match="2 grids in scope"):
        patrol_coverage.uncovered(s, ALL, limit=1)


# -- compliance, overdue, trail, statistics ------------------------------------------------------
def noon(day: date, hour=12) -> str:
    return datetime(day.year, day.month, day.day, hour, tzinfo=SHANGHAI).isoformat()


@pytest.fixture
def plans(two_grids):
    """P1 (point schedule 2/day, team A) and P2 on route R (route schedule 1/day, team T); P3
    has no schedule but visits_per_day 1. On day D: P1 visited 3 times (and one rejected try)."""
    s = two_grids
    add_point(s, "P1", Point(114.003, 30.003), team="A")
    add_point(s, "P2", Point(114.004, 30.004))
    add_point(s, "P3", Point(114.015, 30.005), visits=1)
    patrol.add_routes(s, [{"type": "Feature", "geometry": {"type": "LineString",
                                                           "coordinates": [[114.003, 30.003], [114.004, 30.004]]},
                           "properties": {"code": "R", "name": "一号线", "team": "T", "points": ["P1", "P2"]}}],
                      "test", ALL)
    patrol.add_schedule(s, "test", ALL, ("TRUE", {}), point="P1", visits_per_day=2, team="A")
    patrol.add_schedule(s, "test", ALL, ("TRUE", {}), route="R", visits_per_day=1)
    d = datetime.now(SHANGHAI).date() - timedelta(days=2)
    for h in (8, 12, 16):
        patrol.check_in(s, "w1", ALL, point="P1", lon=114.003, lat=30.003, at=noon(d, h), route="R")
    patrol.check_in(s, "w1", ALL, point="P2", lon=114.006, lat=30.006, at=noon(d, 17))     # ~300 m off: rejected
    return s, d


def test_compliance_by_point_route_team_and_day(plans):
    s, d = plans
    one = dict(since=d, until=d + timedelta(days=1))

    def rows(by):
        return {r["key"]: (r["planned"], r["actual"], r["done"], r["rate"])
                for r in patrol.compliance(s, ALL, by=by, **one)}
    assert rows("point") == {"P1": (3, 3, 3, 1.0), "P2": (1, 0, 0, 0.0), "P3": (1, 0, 0, 0.0)}
    assert rows("route") == {"R": (2, 1, 1, 0.5)}
    assert rows("team") == {"A": (2, 2, 2, 1.0), "T": (2, 1, 1, 0.5)}
    assert rows("day") == {d.isoformat(): (5, 3, 3, 0.6)}
    two_days = patrol.compliance(s, ALL, by="point", since=d, until=d + timedelta(days=2), per_day=True)
    assert [(r["key"], r["day"], r["done"]) for r in two_days if r["key"] == "P1"] == [
        ("P1", d.isoformat(), 3), ("P1", (d + timedelta(days=1)).isoformat(), 0)]
    with pytest.raises(InvalidInput, match="until"):
        patrol.compliance(s, ALL, by="point", since=d, until=d)


def test_overdue_points_and_trail(plans):
    s, d = plans
    now = datetime.now(timezone.utc)
    patrol.check_in(s, "w2", ALL, point="P3", lon=114.015, lat=30.005, at=(now - timedelta(hours=1)).isoformat())
    late = {r["code"]: r for r in patrol.overdue(s, ALL)}
    assert set(late) == {"P1", "P2"}                # P3 (1/day) seen an hour ago; P1 (3/day) two days ago
    assert late["P1"]["interval_hours"] == 8.0 and late["P2"]["last_visit"] is None
    fc = patrol.trail(s, ALL, "w1", d)
    line, *pts = fc["features"]
    assert line["geometry"]["type"] == "LineString" and len(line["geometry"]["coordinates"]) == 4
    assert [p["properties"]["status"] for p in pts] == ["accepted"] * 3 + ["rejected"]
    assert patrol.trail(s, ALL, "w1", d + timedelta(days=1))["features"] == []


def test_statistics_per_grid(plans):
    s, d = plans
    rows = {r["code"]: r for r in patrol.statistics(s, ALL, level="grid", since=d, until=d + timedelta(days=1))}
    g1 = rows[COMMUNITY + "001"]
    assert (g1["points"], g1["checkins"], g1["accepted"], g1["rejected"], g1["workers"]) == (2, 4, 3, 1, 1)
    assert (g1["planned"], g1["done"], g1["compliance_rate"], g1["acceptance_rate"]) == (4, 3, 0.75, 0.75)
    assert rows[COMMUNITY + "002"]["planned"] == 1 and rows[COMMUNITY + "002"]["acceptance_rate"] is None


def test_route_update_and_delete_are_audited(plans):
    s, d = plans
    patrol.update(s, "route", "R", {"points": ["P2", "P3", "P1"], "name": "改线"}, "test", ALL, point_scope=ALL)
    fc = patrol.route_features(s, ALL)
    assert fc["features"][0]["properties"]["points"] == ["P2", "P3", "P1"]
    with pytest.raises(Exception, match="no patrol point 'NOPE'"):
        patrol.update(s, "route", "R", {"points": ["NOPE"]}, "test", ALL, point_scope=ALL)
    patrol.update(s, "point", "P3", {"geometry": {"type": "Point", "coordinates": [114.005, 30.005]}}, "test", ALL)
    assert s.execute(text("SELECT l.grid_code FROM patrol_point p JOIN patrol_point_link l ON l.id = p.id "
                          "WHERE p.code = 'P3'")).scalar() == COMMUNITY + "001"
    patrol.delete(s, "point", "P1", "test", ALL)
    assert s.execute(text("SELECT count(*) FROM patrol_checkin")).scalar() == 1      # P1's went with it
    acts = [r[0] for r in s.execute(text("SELECT action FROM audit_log WHERE entity IN ('patrol_point', "
                                         "'patrol_route') AND actor = 'test' ORDER BY id DESC LIMIT 3"))]
    assert acts == ["delete", "update", "update"]


def test_schedule_input_is_checked(plans):
    s, _ = plans
    for kw, field in (({"point": "P1", "route": "R", "visits_per_day": 1}, "point"),
                      ({"point": "P1", "visits_per_day": 0}, "visits_per_day"),
                      ({"point": "P1", "visits_per_day": 1, "weekdays": "189"}, "weekdays"),
                      ({"point": "P1", "visits_per_day": 1, "start_time": "25:00"}, "start_time"),
                      ({"point": "P1", "visits_per_day": 1, "valid_from": "2026-02-01", "valid_to": "2026-01-01"},
                       "valid_to")):
        with pytest.raises(InvalidInput) as e:
            patrol.add_schedule(s, "test", ALL, ALL, **kw)
        assert e.value.field == field
    weekend = patrol.add_schedule(s, "test", ALL, ALL, point="P3", visits_per_day=4, weekdays="76")
    assert weekend["weekdays"] == "67"


# -- API ------------------------------------------------------------------------------------------
def call(client, method, url, body=None, headers=None):
    """A session request that changes something: with the CSRF token, as the pages send it."""
    import re

    token = re.search(rb'name="csrf_token" value="([^"]+)"', client.get("/login").data).group(1).decode()
    return client.open(url, method=method.upper(), json=body, headers={"X-CSRFToken": token, **(headers or {})})


def test_api_points_crud_import_export_and_checkin(app, client):
    import io
    import uuid

    from openpyxl import load_workbook

    from conftest import login_as

    worker = login_as(app, "gridworker")
    me = worker.get("/api/me").json
    grid = me["jurisdiction"][0]
    g = worker.get("/api/grids").json["features"][0]
    lon, lat = np.mean(g["geometry"]["coordinates"][0][0], axis=0)
    code = f"PPAPI{uuid.uuid4().hex[:6]}"
    fc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon, lat]},
         "properties": {"code": code, "name": "接口测试点", "kind": "duty_post", "radius_m": 40, "team": "巡防一队"}}]}
    assert call(worker, "post", "/api/patrol/points", fc).status_code == 403          # field staff do not plan
    bad = call(client, "post", "/api/patrol/points", {"type": "FeatureCollection", "features": [
        {**fc["features"][0], "properties": {**fc["features"][0]["properties"], "radius_m": -5}}]})
    assert bad.status_code == 400 and bad.json["field"] == "radius_m", bad.json
    r = call(client, "post", "/api/patrol/points", fc)
    assert r.status_code == 201 and r.json == {"codes": [code]}
    try:
        one = worker.get(f"/api/patrol/points/{code}").json
        assert one["properties"]["grid_code"] == grid and one["properties"]["kind"] == "duty_post"
        assert call(client, "patch", f"/api/patrol/points/{code}", {"radius_m": 60, "color": "red"}).status_code == 400
        assert call(client, "patch", f"/api/patrol/points/{code}", {"radius_m": 60}).status_code == 200
        assert worker.get(f"/api/patrol/points/{code}").json["properties"]["radius_m"] == 60
        # a check-in through the API: 201, a resend with the same key 200 and the same answer
        east, north, _ = GEOD.fwd(lon, lat, 90, 75)
        body = {"point": code, "lon": east, "lat": north, "accuracy_m": 10}
        key = {"Idempotency-Key": str(uuid.uuid4())}
        first = call(worker, "post", "/api/patrol/checkins", body, key)
        again = call(worker, "post", "/api/patrol/checkins", body, key)
        assert first.status_code == 201 and again.status_code == 200 and again.json == first.json
        assert first.json["accepted"] is False and first.json["allowed_m"] == 70 and first.json["status"] == "rejected"
        assert call(worker, "post", "/api/patrol/checkins", {**body, "extra": 1}).status_code == 400
        listed = worker.get(f"/api/patrol/checkins?point={code}").json
        assert listed["total"] == 1 and listed["items"][0]["worker"] == "gridworker"
        today = datetime.now(SHANGHAI).date().isoformat()
        page = worker.get(f"/?trail=gridworker&day={today}").get_data(as_text=True)
        import json
        names = json.dumps([f"巡逻轨迹 gridworker {today}", "巡逻盲区（300米外）"])[1:-1].split(", ")
        assert all(n.strip('"') in page or n in page for n in names), names      # the switcher's patrol overlays
        trail = worker.get(f"/api/patrol/trail?worker=gridworker&day={today}")          # what the trail overlay draws
        assert f"/api/patrol/trail?worker=gridworker&amp;day={today}" in page or "/api/patrol/trail?" in page
        assert trail.status_code == 200 and code in json.dumps(trail.json, ensure_ascii=False)
        assert worker.get("/?trail=gridworker&day=yesterday").status_code == 400
        # exports: CSV with a byte-order mark and Chinese headers, XLSX readable; viewers may not export
        csv = client.get("/api/patrol/points?format=csv")
        assert csv.status_code == 200 and csv.data.startswith("\ufeff编码".encode()) and code.encode() in csv.data
        wb = load_workbook(io.BytesIO(client.get("/api/patrol/coverage?level=community&format=xlsx").data))
        assert wb.active["A1"].value == "区域编码" and wb.active.max_row >= 2
        assert login_as(app, "viewer").get("/api/patrol/stats?format=csv").status_code == 403
        stats = client.get("/api/patrol/compliance?by=day&format=csv&lang=en")
        assert stats.data.startswith("\ufeffsubject".encode())
    finally:
        assert call(client, "delete", f"/api/patrol/points/{code}").status_code == 200
    assert worker.get(f"/api/patrol/points/{code}").status_code == 404


def test_api_planner_cannot_place_a_point_outside_the_jurisdiction(app):
    from conftest import login_as

    with app.extensions["gisgrid"]["sessions"]() as s:
        from gisgrid.layers import users
        if s.execute(text("SELECT 1 FROM app_user WHERE username = 'gridplanner'")).scalar() is None:
            first = s.execute(text("SELECT code FROM grid WHERE valid_to IS NULL ORDER BY code LIMIT 1")).scalar()
            users.add(s, "gridplanner", "planner", [first], "gridplanner-password")
            s.commit()
    planner = login_as(app, "gridplanner")
    far = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [114.2, 30.55]},
           "properties": {"code": "PPFAR", "name": "辖区外"}}
    r = call(planner, "post", "/api/patrol/points", far)
    assert r.status_code == 403 and "outside your jurisdiction" in r.json["message"]
    with app.extensions["gisgrid"]["sessions"]() as s:
        assert s.execute(text("SELECT count(*) FROM patrol_point WHERE code = 'PPFAR'")).scalar() == 0


def test_api_coverage_and_uncovered_answer_for_the_caller(app):
    from conftest import login_as

    worker = login_as(app, "gridworker")
    cov = worker.get("/api/patrol/coverage?level=grid&distance=300").json
    assert len(cov["areas"]) == 1 and cov["areas"][0]["buildings"] > 0
    net = worker.get("/api/patrol/coverage?level=grid&distance=300&method=network")
    assert net.status_code == 200                                     # the demo has roads
    assert net.json["areas"][0]["buildings_covered"] <= cov["areas"][0]["buildings_covered"]
    assert worker.get("/api/patrol/coverage?distance=-1").json["field"] == "distance"
    assert worker.get("/api/patrol/uncovered?area=12").json["field"] == "area"
    fc = worker.get("/api/patrol/uncovered?distance=100").json
    assert all(f["properties"]["code"] == cov["areas"][0]["code"] for f in fc["features"])


def test_checkins_are_rate_limited_per_user_in_the_database(app, client):
    """GISGRID_REPORT_LIMIT also bounds check-ins (auth.limited): counted per user in the shared
    rate_limit table; past it 429 with Retry-After, and the refused check-in is not stored.
    Another user's count is their own."""
    import uuid

    from conftest import login_as
    from gisgrid.web import create_app

    settings = app.extensions["gisgrid"]["settings"]
    limited = create_app({"database_url": settings.database_url, "home": settings.home,
                          "report_limit": "2 per minute"})
    g = client.get("/api/grids").json["features"][0]
    lon, lat = np.mean(g["geometry"]["coordinates"][0][0], axis=0)
    code = f"PPLIM{uuid.uuid4().hex[:6]}"
    fc = {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {
        "type": "Point", "coordinates": [lon, lat]}, "properties": {"code": code, "name": "限流测试点", "radius_m": 40}}]}
    assert call(client, "post", "/api/patrol/points", fc).status_code == 201
    try:
        with limited.extensions["gisgrid"]["sessions"]() as s:
            s.execute(text("DELETE FROM rate_limit WHERE key LIKE 'patrol.checkin:%'"))
            s.commit()
        worker, admin = login_as(limited, "gridworker"), login_as(limited, "admin")

        def check_in(who):
            return call(who, "post", "/api/patrol/checkins", {"point": code, "lon": lon, "lat": lat},
                        {"Idempotency-Key": str(uuid.uuid4())})

        answers = [check_in(worker) for _ in range(3)]
        assert [r.status_code for r in answers] == [201, 201, 429]
        assert [r.headers["X-RateLimit-Remaining"] for r in answers] == ["1", "0", "0"]
        assert all(r.headers["X-RateLimit-Limit"] == "2" for r in answers)
        assert 1 <= int(answers[2].headers["Retry-After"]) <= 60 and "Retry-After" not in answers[1].headers
        assert answers[2].json["error"] == "Exceeded" and "at most 2 requests per 60 s" in answers[2].json["message"]
        assert worker.get(f"/api/patrol/checkins?point={code}").json["total"] == 2       # the refused one is not kept
        assert check_in(admin).status_code == 201                                         # a count of their own
    finally:
        assert call(client, "delete", f"/api/patrol/points/{code}").status_code == 200
        limited.extensions["gisgrid"]["engine"].dispose()
