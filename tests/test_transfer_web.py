"""Import and export through the API (demo district): multipart upload with the planner role,
the same report as the CLI, the size limit, downloads filtered by jurisdiction with personal
data masked, and the ``crs`` parameter of the APIs that take a coordinate."""
from __future__ import annotations

import io
import json
import uuid

import pandas as pd
import pytest
from shapely.geometry import shape
from sqlalchemy import text

from gisgrid.layers import users
from gisgrid.spatial import crs as crs_mod

from conftest import login_as
from test_incidents import csrf


@pytest.fixture(scope="module")
def spot(app):
    """A point inside the first demo grid, and that grid."""
    with app.extensions["gisgrid"]["sessions"]() as s:
        g = s.execute(text("SELECT code, street_code, ST_AsGeoJSON(geom) AS gj FROM grid WHERE valid_to IS NULL "
                           "ORDER BY code LIMIT 1")).mappings().one()
    p = shape(json.loads(g["gj"])).representative_point()
    return {"grid": g["code"], "street": g["street_code"], "lon": p.x, "lat": p.y}


@pytest.fixture
def cleanup(app):
    yield
    with app.extensions["gisgrid"]["sessions"]() as s:
        s.execute(text("DELETE FROM place WHERE code LIKE 'WEBTEST-%'"))
        s.commit()


def csv_upload(rows) -> io.BytesIO:
    buf = io.BytesIO()
    pd.DataFrame(rows).to_csv(buf, index=False, encoding="utf-8-sig")
    buf.seek(0)
    return buf


def upload(client, layer, rows, name="places.csv", **form):
    data = {"file": (csv_upload(rows), name), **form}
    return client.post(f"/api/import/{layer}", data=data, content_type="multipart/form-data",
                       headers={"X-CSRFToken": csrf(client)})


def places_in(app, pattern="WEBTEST-%"):
    with app.extensions["gisgrid"]["sessions"]() as s:
        return s.execute(text("SELECT code, grid_code, ST_X(geom) AS x, ST_Y(geom) AS y FROM place LEFT JOIN place_link USING (id) "
                              "WHERE code LIKE :p ORDER BY code"), {"p": pattern}).mappings().all()


def test_planner_imports_a_gcj02_sheet_and_gets_the_report(app, spot, cleanup):
    glon, glat = (float(v) for v in crs_mod.wgs84_to_gcj02(spot["lon"], spot["lat"]))
    rows = [{"编码": "WEBTEST-1", "名称": "网上导入", "类别": "shop", "经度": glon, "纬度": glat}]
    r = upload(login_as(app, "planner"), "place", rows, crs="gcj02")
    assert r.status_code == 200, r.json
    assert r.json["inserted"] == 1 and r.json["crs"] == "gcj02" and r.json["written"] is True
    got = places_in(app)
    assert [p["grid_code"] for p in got] == [spot["grid"]]
    assert abs(got[0]["x"] - spot["lon"]) < 1e-8 and abs(got[0]["y"] - spot["lat"]) < 1e-8
    with app.extensions["gisgrid"]["sessions"]() as s:
        actor = s.execute(text("SELECT actor FROM audit_log WHERE action = 'import' ORDER BY id DESC LIMIT 1")).scalar()
    assert actor == "planner"


def test_bad_upload_is_422_with_the_report_and_writes_nothing(app, spot, cleanup):
    rows = [{"code": "WEBTEST-1", "name": "好", "category": "shop", "lon": spot["lon"], "lat": spot["lat"]},
            {"code": "WEBTEST-2", "name": "坏", "category": "shop", "lon": spot["lat"], "lat": spot["lon"]},
            {"code": "WEBTEST-1", "name": "重", "category": "shop", "lon": spot["lon"], "lat": spot["lat"]}]
    r = upload(login_as(app, "planner"), "place", rows)
    assert r.status_code == 422 and r.json["error"] == "ImportRefused"
    problems = [(p["row"], p["field"]) for p in r.json["report"]["problems"]]
    assert problems == [(2, "code"), (3, "geometry"), (4, "code")]
    assert "swapped" in r.json["report"]["problems"][1]["reason"]
    assert places_in(app) == []
    r = upload(login_as(app, "planner"), "place", rows, skip_invalid="1")
    assert r.status_code == 200 and r.json["inserted"] == 0 and r.json["skipped"] == 3


def test_dry_run_through_the_api(app, spot, cleanup):
    rows = [{"code": "WEBTEST-1", "name": "好", "category": "shop", "lon": spot["lon"], "lat": spot["lat"]}]
    r = upload(login_as(app, "planner"), "place", rows, dry_run="1")
    assert r.status_code == 200 and r.json["valid"] == 1 and r.json["written"] is False
    assert places_in(app) == []


@pytest.mark.parametrize("who", ["viewer", "gridworker", "commander"])
def test_roles_without_import_are_refused(app, spot, who):
    rows = [{"code": "WEBTEST-1", "name": "好", "category": "shop", "lon": spot["lon"], "lat": spot["lat"]}]
    r = upload(login_as(app, who), "place", rows)
    assert r.status_code == 403
    assert places_in(app) == []


def test_import_outside_the_jurisdiction_is_refused(app, spot, cleanup):
    with app.extensions["gisgrid"]["sessions"]() as s:
        far = s.execute(text("SELECT code, ST_AsGeoJSON(ST_PointOnSurface(geom)) FROM grid WHERE valid_to IS NULL "
                             "AND street_code <> :s ORDER BY code LIMIT 1"), {"s": spot["street"]}).one()
        if s.execute(text("SELECT 1 FROM app_user WHERE username = 'street-planner'")).scalar() is None:
            users.add(s, "street-planner", "planner", [spot["street"]], "street-planner-password")
            s.commit()
    p = json.loads(far[1])["coordinates"]
    rows = [{"code": "WEBTEST-1", "name": "内", "category": "shop", "lon": spot["lon"], "lat": spot["lat"]},
            {"code": "WEBTEST-2", "name": "外", "category": "shop", "lon": p[0], "lat": p[1]}]
    r = upload(login_as(app, "street-planner"), "place", rows)
    assert r.status_code == 422
    assert [(x["row"], x["reason"]) for x in r.json["report"]["problems"]] == [(3, "outside your jurisdiction")]
    assert places_in(app) == []


def test_upload_over_the_limit_is_413(app, demo_url, settings, spot, cleanup):
    from gisgrid.web import create_app

    small = create_app({"database_url": demo_url, "home": settings.home, "import_limit_mb": 0.1})
    try:       # 100 KB allowed, about 200 KB sent (small enough for the test client to keep in memory)
        rows = [{"code": f"WEBTEST-{i}", "name": "x" * 40, "category": "shop", "lon": spot["lon"], "lat": spot["lat"]}
                for i in range(2000)]
        r = upload(login_as(small, "planner"), "place", rows)
        assert r.status_code == 413 and r.json["error"] == "Request Entity Too Large"
    finally:
        small.extensions["gisgrid"]["engine"].dispose()
    assert places_in(app) == []


def test_unreadable_upload_and_bad_parameters(app):
    c = login_as(app, "planner")
    r = c.post("/api/import/place", data={"file": (io.BytesIO(b"garbage"), "p.gpkg")},
               content_type="multipart/form-data", headers={"X-CSRFToken": csrf(c)})
    assert r.status_code == 400 and "cannot read" in r.json["message"]
    r = c.post("/api/import/place", data={}, content_type="multipart/form-data", headers={"X-CSRFToken": csrf(c)})
    assert r.status_code == 400 and r.json["field"] == "file"
    r = upload(c, "nowhere", [{"code": "x"}])
    assert r.status_code == 400 and r.json["field"] == "layer"
    r = upload(c, "place", [{"code": "x"}], mode="merge")
    assert r.status_code == 400 and r.json["field"] == "mode"


def test_export_download_is_masked_and_scoped(app, spot):
    c = login_as(app, "planner")
    r = c.get("/api/export/resident?format=csv")
    assert r.status_code == 200 and r.mimetype == "text/csv"
    assert "attachment" in r.headers["Content-Disposition"]
    frame = pd.read_csv(io.BytesIO(r.data), dtype=str, encoding="utf-8-sig")
    assert "身份证号(脱敏)" in frame.columns and "身份证号" not in frame.columns
    assert frame["身份证号(脱敏)"].str.fullmatch(r"\d{4}\*{10}[\dX]{4}").all()
    assert c.get("/api/export/resident?format=csv&unmask=1&reason=x").status_code == 403   # planner: no PII
    one = c.get(f"/api/export/place?format=geojson&area={spot['grid']}").json
    assert {f["properties"]["grid_code"] for f in one["features"]} == {spot["grid"]}


def test_admin_unmasked_export_is_audited(app, spot):
    c = login_as(app, "admin")
    r = c.get(f"/api/export/resident?format=xlsx&area={spot['grid']}&unmask=1&reason=年度核查")
    assert r.status_code == 200
    frame = pd.read_excel(io.BytesIO(r.data), dtype=str)
    assert frame["身份证号"].str.fullmatch(r"\d{17}[\dX]").all() and len(frame) > 0
    with app.extensions["gisgrid"]["sessions"]() as s:
        n = s.execute(text("SELECT count(*) FROM audit_log WHERE action = 'read_pii' AND reason = '年度核查' "
                           "AND after->>'via' = 'export'")).scalar()
    assert n == len(frame)


def test_export_of_another_street_holds_nothing_of_mine(app, spot):
    with app.extensions["gisgrid"]["sessions"]() as s:
        other = s.execute(text("SELECT code FROM admin_area WHERE level = 'street' AND code <> :s "
                               "AND EXISTS (SELECT 1 FROM grid g WHERE g.street_code = admin_area.code) LIMIT 1"),
                          {"s": spot["street"]}).scalar()
        if s.execute(text("SELECT 1 FROM app_user WHERE username = 'other-planner'")).scalar() is None:
            users.add(s, "other-planner", "planner", [other], "other-planner-password")
            s.commit()
    r = login_as(app, "other-planner").get("/api/export/place?format=geojson")
    assert r.status_code == 200 and r.json["features"]
    assert spot["grid"] not in r.data.decode()


@pytest.mark.parametrize("fmt, mime", [("gpkg", "application/geopackage+sqlite3"), ("shp", "application/zip"),
                                       ("xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")])
def test_every_export_format_downloads(app, fmt, mime):
    r = login_as(app, "commander").get(f"/api/export/patrol_point?format={fmt}&crs=gcj02")
    assert r.status_code == 200 and r.mimetype == mime and len(r.data) > 100


def test_reports_and_lookups_take_chinese_coordinates(app, spot):
    c = login_as(app, "gridworker")
    for name in ("gcj02", "bd09"):
        x, y = (float(v) for v in crs_mod.xy_from_storage(spot["lon"], spot["lat"], name))
        r = c.get(f"/api/locate?lon={x}&lat={y}&crs={name}")
        assert r.status_code == 200 and r.json["grid"]["code"] == spot["grid"]
        assert abs(r.json["lon"] - spot["lon"]) < 1e-8
        body = {"category": "sanitation", "lon": x, "lat": y, "crs": name, "description": "坐标系测试"}
        r = c.post("/api/incidents", json=body, headers={"X-CSRFToken": csrf(c), "Idempotency-Key": str(uuid.uuid4())})
        assert r.status_code == 201, r.json
        assert r.json["grid_code"] == spot["grid"] and abs(r.json["lon"] - spot["lon"]) < 1e-8
        with app.extensions["gisgrid"]["sessions"]() as s:
            assert s.execute(text("SELECT input_crs FROM incident WHERE code = :c"), {"c": r.json["code"]}).scalar() == name
    r = c.get(f"/api/locate?lon={spot['lon']}&lat={spot['lat']}&crs=mars")
    assert r.status_code == 400 and r.json["field"] == "crs"
