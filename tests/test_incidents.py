"""Incidents through the API: reporting (idempotent), routing, the closed loop with every
illegal transition, escalation, duplicates and merge, photos, bad input."""
from __future__ import annotations

import io
import json
import math
import threading
import uuid

import pytest
from PIL import Image
from shapely.geometry import shape
from sqlalchemy import text

from gisgrid.layers import users
from gisgrid.workflow import ACTIONS, allowed_actions

from conftest import login_as

STATES = ["reported", "accepted", "dispatched", "handling", "feedback", "evaluated", "closed"]


@pytest.fixture(scope="module")
def g(app):
    """Grid G (the gridworker's), a point inside it, its head, and an outsider account."""
    with app.extensions["gisgrid"]["sessions"]() as s:
        row = s.execute(text("SELECT id, code, ST_AsGeoJSON(geom) AS gj FROM grid WHERE valid_to IS NULL "
                             "ORDER BY code LIMIT 1")).mappings().one()
        head = s.execute(text("SELECT s.code FROM grid_assignment a JOIN staff s ON s.id = a.staff_id "
                              "WHERE a.grid_id = :g AND a.role = 'head'"), {"g": row["id"]}).scalar()
        far = s.execute(text("SELECT code FROM grid ORDER BY code DESC LIMIT 1")).scalar()
        if s.execute(text("SELECT 1 FROM app_user WHERE username = 'outsider'")).scalar() is None:
            users.add(s, "outsider", "field", [far], "outsider-password")
            s.commit()
    p = shape(json.loads(row["gj"])).representative_point()
    return {"code": row["code"], "lon": p.x, "lat": p.y, "head": head}


@pytest.fixture
def worker(app):
    return login_as(app, "gridworker")


@pytest.fixture
def centre(app):
    return login_as(app, "commander")


def csrf(client):
    """The CSRF token of a session client (from a page that carries one)."""
    import re

    page = client.get("/login")
    return re.search(rb'name="csrf_token" value="([^"]+)"', page.data).group(1).decode()


def post(client, url, body=None, **kw):
    headers = {"X-CSRFToken": csrf(client), **kw.pop("headers", {})}
    return client.post(url, json=body, headers=headers, **kw)


def file_report(client, g, **extra):
    body = {"category": "sanitation", "lon": g["lon"], "lat": g["lat"], "description": "垃圾未清运", **extra}
    return post(client, "/api/incidents", body, headers={"Idempotency-Key": str(uuid.uuid4())})


def count(app, where="TRUE", **params):
    with app.extensions["gisgrid"]["sessions"]() as s:
        return s.execute(text(f"SELECT count(*) FROM incident WHERE {where}"), params).scalar()


def test_report_is_linked_routed_and_timed(worker, g):
    r = file_report(worker, g, accuracy_m=8)
    assert r.status_code == 201, r.json
    inc = r.json
    assert inc["grid_code"] == g["code"] and inc["level"] == "grid" and inc["state"] == "reported"
    assert inc["team"][0]["role"] == "head" and inc["deadline"] > inc["reported_at"]
    assert inc["events"][0]["to_state"] == "reported" and inc["events"][0]["actor"] == "gridworker"
    assert inc["allowed"] == ["accept", "reject"]



def test_report_answer_is_the_incident_as_read_back(worker, g):
    """The report's answer is built inside the inserting statement; it must say what a read of
    the stored incident says, field for field (plus the possible duplicates)."""
    # a category no other test reports at this point: the ten nearest duplicates include the first
    first = file_report(worker, g, address="测试路1号", accuracy_m=3.5, category="floating_population")
    for _ in range(8):       # timestamps of every sub-second shape (the database trims trailing zeros)
        made = file_report(worker, g, address="测试路1号", accuracy_m=3.5, category="floating_population")
        assert made.status_code == 201
        answer = made.json
        stored = worker.get(f"/api/incidents/{answer['code']}").json
        assert first.json["code"] in [d["code"] for d in answer.pop("possible_duplicates")]
        assert set(answer) == set(stored)
        assert answer == stored


def test_the_districts_own_catalogue_sets_the_first_deadline(app, worker, g):
    """A district's own SLA for a category overrides the default one from the first step."""
    from datetime import datetime

    with app.extensions["gisgrid"]["sessions"]() as s:
        district = s.execute(text("SELECT district_code FROM grid WHERE code = :c"), {"c": g["code"]}).scalar()
        default = s.execute(text("SELECT sla_hours ->> 'reported' FROM incident_category WHERE code = 'noise' "
                                 "AND district_code IS NULL")).scalar()
        s.execute(text("INSERT INTO incident_category (district_code, code, name, sla_hours) VALUES "
                       "(:d, 'noise', '噪声扰民', '{\"reported\": 30}')"), {"d": district})
        s.commit()
    try:
        inc = file_report(worker, g, category="noise").json
        hours = (datetime.fromisoformat(inc["deadline"]) - datetime.fromisoformat(inc["reported_at"])).total_seconds() / 3600
        assert round(hours) == 30 and int(default) != 30
    finally:
        with app.extensions["gisgrid"]["sessions"]() as s:
            s.execute(text("DELETE FROM incident_category WHERE district_code = :d AND code = 'noise'"), {"d": district})
            s.commit()


def test_retry_with_same_key_returns_the_first(app, worker, g):
    key = str(uuid.uuid4())
    body = {"category": "noise", "lon": g["lon"], "lat": g["lat"]}
    first = post(worker, "/api/incidents", body, headers={"Idempotency-Key": key})
    again = post(worker, "/api/incidents", body, headers={"Idempotency-Key": key})
    assert first.status_code == 201 and again.status_code == 200 and again.json["code"] == first.json["code"]
    by_uuid = post(worker, "/api/incidents", {**body, "client_uuid": key})
    assert by_uuid.status_code == 200 and by_uuid.json["code"] == first.json["code"]
    assert count(app, "idempotency_key = :k", k=key) == 1


def test_concurrent_retries_make_one_incident(app, g, demo_passwords):
    plain = None
    with app.extensions["gisgrid"]["sessions"]() as s:
        plain, _ = users.create_token(s, users.get(s, "gridworker"), "race", ["report", "read"], 1)
        s.commit()
    key, results = str(uuid.uuid4()), []

    def send():
        c = app.test_client()
        r = c.post("/api/incidents", json={"category": "fire", "lon": g["lon"], "lat": g["lat"]},
                   headers={"Authorization": f"Bearer {plain}", "Idempotency-Key": key})
        results.append((r.status_code, r.json["code"]))

    threads = [threading.Thread(target=send) for _ in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(c for c, _ in results) == [200] * 5 + [201]
    assert len({code for _, code in results}) == 1 and count(app, "idempotency_key = :k", k=key) == 1


def test_point_outside_every_grid_is_kept_and_routed(worker):
    r = post(worker, "/api/incidents", {"category": "security", "lon": 114.2205, "lat": 30.6440})
    assert r.status_code == 201
    assert r.json["grid_code"] is None and r.json["level"] in ("street", "district") and r.json["team"] == []


@pytest.mark.parametrize("body, status, field", [
    ({"lon": 114.25, "lat": 30.6}, 400, "category"),
    ({"category": "noise", "lat": 30.6}, 400, "lon"),
    ({"category": "noise", "lon": 214.25, "lat": 30.6}, 400, "lon"),
    ({"category": "noise", "lon": 114.25, "lat": "north"}, 400, "lon/lat"),
    ({"category": "aliens", "lon": 114.25, "lat": 30.6}, 422, "category"),
    ({"category": "noise", "lon": 114.25, "lat": 30.6, "description": "长" * 2001}, 400, "description"),
    ({"category": "noise", "lon": 114.25, "lat": 30.6, "description": 5}, 400, "description"),
    ({"category": "noise", "lon": 114.25, "lat": 30.6, "colour": "red"}, 400, "colour"),
    ({"category": "noise", "lon": 114.25, "lat": 30.6, "source": "rumour"}, 400, "source"),
    ({"category": "noise", "lon": 114.25, "lat": 30.6, "accuracy_m": -1}, 400, "accuracy_m"),
    ({"category": "noise", "lon": 114.25, "lat": 30.6, "crs": "EPSG:0"}, 400, "crs"),
    ([1, 2], 400, "body"),
])
def test_bad_reports_name_the_field_and_write_nothing(app, worker, body, status, field):
    before = count(app)
    r = post(worker, "/api/incidents", body)
    assert r.status_code == status and r.json["field"] == field and r.json["message"]
    assert count(app) == before


def test_viewer_cannot_report(app):
    viewer = login_as(app, "viewer")
    assert post(viewer, "/api/incidents", {"category": "noise", "lon": 114.25, "lat": 30.6}).status_code == 403


def act(client, code, action, **body):
    return post(client, f"/api/incidents/{code}/actions/{action}", body or None)


def test_the_whole_loop(app, worker, centre, g):
    code = file_report(worker, g).json["code"]
    assert act(worker, code, "accept").status_code == 403                    # field workers do not accept
    assert act(centre, code, "accept").json["state"] == "accepted"
    d = act(centre, code, "dispatch")
    assert d.status_code == 200 and d.json["state"] == "dispatched"
    detail = worker.get(f"/api/incidents/{code}").json
    assert detail["assignee"] == g["head"]                                    # default: the grid head
    assert act(worker, code, "start").json["state"] == "handling"
    assert act(worker, code, "feedback").json["field"] == "note"
    assert act(worker, code, "feedback", note="已清运").json["state"] == "feedback"
    assert act(worker, code, "evaluate", satisfaction=9).json["field"] == "satisfaction"
    assert act(worker, code, "evaluate", satisfaction=5, comment="满意").json["state"] == "evaluated"
    assert act(centre, code, "close").json == {"code": code, "state": "closed", "level": "grid", "allowed": []}
    final = worker.get(f"/api/incidents/{code}").json
    assert [e["to_state"] for e in final["events"]] == STATES
    assert final["satisfaction"] == 5 and final["closed_at"] and final["deadline"] is None
    with app.extensions["gisgrid"]["sessions"]() as s:
        acts = [r[0] for r in s.execute(text("SELECT action FROM audit_log WHERE entity = 'incident' AND entity_id = "
                                             "(SELECT id::text FROM incident WHERE code = :c) ORDER BY id"), {"c": code})]
    assert acts == ["create", "accept", "dispatch", "start", "feedback", "evaluate", "close"]


def drive_to(client_centre, client_worker, g, state):
    code = file_report(client_worker, g).json["code"]
    path = {"accepted": ["accept"], "dispatched": ["accept", "dispatch"], "handling": ["accept", "dispatch", "start"],
            "feedback": ["accept", "dispatch", "start", "feedback"],
            "evaluated": ["accept", "dispatch", "start", "feedback", "evaluate"],
            "closed": ["accept", "dispatch", "start", "feedback", "evaluate", "close"]}.get(state, [])
    for a in path:
        r = act(client_centre, code, a, note="n", satisfaction=4)
        assert r.status_code == 200, r.json
    return code


@pytest.mark.parametrize("state", STATES)
def test_every_illegal_transition_is_a_409_naming_the_allowed(app, centre, worker, g, state):
    code = drive_to(centre, worker, g, state)
    for action in ACTIONS:
        if action in allowed_actions(state):
            continue
        r = act(centre, code, action, note="n", satisfaction=4)
        assert r.status_code == 409, (state, action, r.json)
        assert r.json["error"] == "IllegalTransition" and r.json["allowed"] == allowed_actions(state)
    assert worker.get(f"/api/incidents/{code}").json["state"] == state      # nothing moved


def test_escalate_and_return_walk_the_ladder(centre, worker, g):
    code = drive_to(centre, worker, g, "dispatched")
    assert act(worker, code, "escalate").json["field"] == "note"
    r = act(worker, code, "escalate", note="需社区协调")
    assert r.json == {"code": code, "state": "accepted", "level": "community", "allowed": allowed_actions("accepted")}
    assert act(centre, code, "escalate", note="需街道").json["level"] == "street"
    assert act(centre, code, "escalate", note="需区").json["level"] == "district"
    assert act(centre, code, "escalate", note="更高").json["field"] == "action"      # beyond the ladder
    assert act(centre, code, "return", note="区里退回").json["level"] == "street"


def test_acting_outside_ones_grid_is_404(app, worker, g):
    code = file_report(worker, g).json["code"]
    outsider = login_as(app, "outsider")
    r = act(outsider, code, "start")
    assert r.status_code == 404 and code not in json.dumps(outsider.get("/api/incidents?limit=1000").json)
    assert outsider.get(f"/api/incidents/{code}").status_code == 404


def test_duplicates_are_offered_and_merged(centre, worker, g):
    first = post(worker, "/api/incidents", {"category": "gas", "lon": g["lon"], "lat": g["lat"]}).json
    second = post(worker, "/api/incidents", {"category": "gas", "lon": g["lon"] + 0.0001, "lat": g["lat"]}).json
    assert first["code"] in [d["code"] for d in second["possible_duplicates"]]
    assert all(d["metres"] <= 50 for d in second["possible_duplicates"])
    r = post(centre, f"/api/incidents/{second['code']}/merge", {"into": first["code"]})
    assert r.json == {"code": second["code"], "state": "closed", "merged_into": first["code"]}
    assert post(centre, f"/api/incidents/{second['code']}/merge", {"into": first["code"]}).status_code == 409
    assert post(centre, f"/api/incidents/{first['code']}/merge", {"into": first["code"]}).json["field"] == "into"


def image_bytes(fmt: str, exif_gps: bool = False) -> bytes:
    im = Image.new("RGB", (64, 48), (200, 30, 30))
    buf = io.BytesIO()
    if exif_gps:
        exif = Image.Exif()
        exif[0x8825] = {1: "N", 2: (30.0, 36.0, 0.0), 3: "E", 4: (114.0, 16.0, 0.0)}   # GPS
        exif[0x010F] = "PhoneMaker"
        im.save(buf, fmt, exif=exif)
    else:
        im.save(buf, fmt)
    return buf.getvalue()


def upload(client, code, data, name="p.jpg"):
    # The multipart body is encoded here, in memory: werkzeug's test client spools a large one to
    # a temporary file it never closes.
    boundary = "gisgrid-test-boundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="photo"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return client.post(f"/api/incidents/{code}/photos", data=body, headers={"X-CSRFToken": csrf(client)},
                       content_type=f"multipart/form-data; boundary={boundary}")


def test_photos_are_stripped_content_addressed_and_scoped(app, worker, g):
    code = file_report(worker, g).json["code"]
    raw = image_bytes("JPEG", exif_gps=True)
    assert Image.open(io.BytesIO(raw)).getexif()                      # the upload carries GPS EXIF
    r = upload(worker, code, raw)
    assert r.status_code == 201
    again = upload(worker, code, raw)
    assert again.json["sha256"] == r.json["sha256"]                  # stored once
    served = worker.get(r.json["url"])
    assert served.mimetype == "image/jpeg" and not Image.open(io.BytesIO(served.data)).getexif()
    assert worker.get(f"/api/incidents/{code}").json["photos"] == [r.json["sha256"]]
    assert upload(worker, code, image_bytes("PNG"), "p.png").status_code == 201
    assert login_as(app, "outsider").get(r.json["url"]).status_code == 404


@pytest.mark.parametrize("data, name, status, match", [
    (b"GIF89a" + b"\0" * 100, "x.gif", 400, "cannot be read|JPEG or PNG"),
    (b"<?php echo 1; ?>", "x.jpg", 400, "cannot be read"),
    (None, "big.jpg", 413, ""),
])
def test_bad_photos_are_refused(app, worker, g, data, name, status, match):
    import re

    code = file_report(worker, g).json["code"]
    if data is None:
        data = b"\xff\xd8" + b"\0" * (17 * 1024 * 1024)
    r = upload(worker, code, data, name)
    assert r.status_code == status and r.is_json
    assert re.search(match, r.json["message"])
    assert worker.get(f"/api/incidents/{code}").json["photos"] == []


def test_gif_is_refused_by_content_not_name(app, worker, g):
    code = file_report(worker, g).json["code"]
    im = Image.new("RGB", (8, 8))
    buf = io.BytesIO()
    im.save(buf, "GIF")
    r = upload(worker, code, buf.getvalue(), "disguised.jpg")
    assert r.status_code == 400 and "JPEG or PNG, got GIF" in r.json["message"]


def test_overdue_and_my_queue(app, centre, worker, g):
    code = drive_to(centre, worker, g, "dispatched")
    with app.extensions["gisgrid"]["sessions"]() as s:
        s.execute(text("UPDATE incident SET deadline = now() - interval '1 hour' WHERE code = :c"), {"c": code})
        s.commit()
    overdue = centre.get(f"/api/incidents?overdue=1&area={g['code'][:12]}&limit=1000").json
    assert code in [i["code"] for i in overdue["items"]] and all(i["overdue"] for i in overdue["items"])


def test_statistics_per_area_match_the_rows(app, centre):
    rows = centre.get("/api/stats?level=community").json
    assert rows and all(r["received"] >= r["open"] + r["resolved"] - 0 for r in rows)
    with app.extensions["gisgrid"]["sessions"]() as s:
        truth = dict(s.execute(text("SELECT community_code, count(*) FROM incident NATURAL LEFT JOIN incident_link WHERE community_code IS NOT NULL "
                                    "GROUP BY 1")).all())
    assert {r["code"]: r["received"] for r in rows} == truth
    one = rows[0]
    assert one["name"].endswith("社区居委会")
    assert 0 <= one["resolution_rate"] <= 1 and 0 <= one["satisfaction_rate"] <= 1
    assert one["p90_hours_to_close"] >= one["mean_hours_to_close"] * 0.5


def test_statistics_by_category_and_time_range(centre):
    rows = centre.get("/api/stats?level=street&by_category=1&since=2000-01-01&until=2100-01-01").json
    assert rows and all(r["category"] for r in rows)
    empty = centre.get("/api/stats?level=street&since=2100-01-01").json
    assert empty == []
    assert centre.get("/api/stats?level=planet").json["field"] == "level"


def test_statistics_follow_jurisdiction(app, g):
    rows = login_as(app, "gridworker").get("/api/stats?level=grid").json
    assert [r["code"] for r in rows] == [g["code"]]


def test_statistics_spreadsheets(app, centre):
    import csv as csvmod
    from openpyxl import load_workbook

    r = centre.get("/api/stats?level=street&format=csv")
    assert r.mimetype == "text/csv" and r.data.startswith("\ufeff".encode())
    table = list(csvmod.reader(io.StringIO(r.data.decode("utf-8-sig"))))
    assert table[0][:4] == ["区域编码", "区域名称", "类别", "受理数"] and len(table) > 1
    x = centre.get("/api/stats?level=street&format=xlsx&lang=en")
    ws = load_workbook(io.BytesIO(x.data)).active
    assert ws["A1"].value == "area code" and ws.max_row == len(table)
    # the viewer may read figures but not download spreadsheets
    assert login_as(app, "viewer").get("/api/stats?format=csv").status_code == 403


def test_duplicate_distance_is_configurable_and_exact(two_grids):
    """Offered when within the distance (geodesic metres), not beyond it; the window is a setting."""
    from gisgrid.layers import incidents

    s = two_grids
    lon, lat = 114.005, 30.005
    first, _ = incidents.report(s, "t", category="gas", lon=lon, lat=lat)
    east = 1 / (111_320 * math.cos(math.radians(lat)))     # degrees of longitude per metre
    near, _ = incidents.report(s, "t", category="gas", lon=lon + 45 * east, lat=lat)
    far, _ = incidents.report(s, "t", category="gas", lon=lon + 60 * east, lat=lat, duplicate_metres=50)
    wide, _ = incidents.report(s, "t", category="gas", lon=lon + 60 * east, lat=lat + 0.0001, duplicate_metres=100)
    assert [d["code"] for d in near["possible_duplicates"]] == [first["code"]]
    assert first["code"] not in [d["code"] for d in far["possible_duplicates"]]
    assert first["code"] in [d["code"] for d in wide["possible_duplicates"]]
    other, _ = incidents.report(s, "t", category="noise", lon=lon, lat=lat)
    assert other["possible_duplicates"] == []
    # the search's index holds the category's hash (migration 0017): two codes of one hash are
    # still two categories
    assert s.execute(text("SELECT hashtext('c14100') = hashtext('c180248')")).scalar()
    for code in ("c14100", "c180248"):
        incidents.set_category(s, "t", code, district_code=None, name=code, sla_hours={"reported": 2})
    one, _ = incidents.report(s, "t", category="c14100", lon=lon, lat=lat)
    two, _ = incidents.report(s, "t", category="c180248", lon=lon, lat=lat)
    again, _ = incidents.report(s, "t", category="c180248", lon=lon, lat=lat)
    assert one["possible_duplicates"] == two["possible_duplicates"] == []
    assert [d["code"] for d in again["possible_duplicates"]] == [two["code"]]


def test_the_command_centre_edits_its_districts_catalogue(app, centre, worker, g):
    """A district's own category and deadlines, audited; refused to field staff, to anyone for
    the default catalogue but an administrator, and for a district outside one's jurisdiction."""
    body = {"name": "违章搭建", "name_en": "Illegal construction", "sla_hours": {"reported": 3, "handling": 96}}
    r = centre.put("/api/categories/illegal_building", json=body, headers={"X-CSRFToken": csrf(centre)})
    assert r.status_code == 200, r.json
    assert r.json["district_code"] == "420103000000" and r.json["sla_hours"] == {"reported": 3, "handling": 96}
    listed = {c["code"]: c for c in centre.get("/api/categories").json}
    assert listed["illegal_building"]["name"] == "违章搭建"
    assert "illegal_building" not in {c["code"] for c in centre.get("/api/categories?district=999999000000").json}
    inc = file_report(worker, g, category="illegal_building").json
    assert inc["category"] == "illegal_building"
    with app.extensions["gisgrid"]["sessions"]() as s:
        assert s.execute(text("SELECT after ->> 'name' FROM audit_log WHERE entity = 'incident_category' "
                              "AND entity_id = '420103000000:illegal_building'")).scalar() == "违章搭建"
    for client, extra, status, field in (
            (worker, {}, 403, None),
            (centre, {"district": None}, 403, None),
            (centre, {"district": "420104000000"}, 404, "district"),
            (centre, {"sla_hours": {"closed": 3}}, 400, "sla_hours"),
            (centre, {"sla_hours": {"reported": 0}}, 400, "sla_hours"),
            (centre, {"sla_hours": {"reported": "2"}}, 400, "sla_hours"),
            (centre, {"colour": "red"}, 400, "colour")):
        r = client.put("/api/categories/illegal_building", json={**body, **extra},
                       headers={"X-CSRFToken": csrf(client)})
        assert r.status_code == status and (field is None or r.json["field"] == field), (extra, r.json)


def test_an_incident_is_named_as_its_districts_catalogue_names_its_category(app, centre, worker, g):
    """A district that renames a default category in its own catalogue sees its name on its
    incidents: in the report's answer, the incident read back, the list and the area summary."""
    from gisgrid.layers.incidents import CATEGORIES

    body = {"name": "邻里噪声（本区）", "sla_hours": {"reported": 2, "handling": 48}}
    r = centre.put("/api/categories/noise", json=body, headers={"X-CSRFToken": csrf(centre)})
    assert r.status_code == 200, r.json
    try:
        made = file_report(worker, g, category="noise", description="named by the district")
        assert made.status_code == 201, made.json
        code = made.json["code"]
        assert made.json["category_name"] == "邻里噪声（本区）" != CATEGORIES["noise"]
        assert worker.get(f"/api/incidents/{code}").json["category_name"] == "邻里噪声（本区）"
        listed = {i["code"]: i for i in worker.get("/api/incidents?category=noise").json["items"]}
        assert listed[code]["category_name"] == "邻里噪声（本区）"
        area = centre.get(f"/api/areas/{g['code']}/summary").json
        assert {c["category"]: c["name"] for c in area["by_category"]}["noise"] == "邻里噪声（本区）"
        assert {i["code"]: i["category_name"] for i in area["recent"]}[code] == "邻里噪声（本区）"
        # another category of the same incidents keeps the default catalogue's name
        other = file_report(worker, g, category="gas").json
        assert other["category_name"] == CATEGORIES["gas"]
    finally:
        with app.extensions["gisgrid"]["sessions"]() as s:
            s.execute(text("DELETE FROM incident_category WHERE code = 'noise' AND district_code IS NOT NULL"))
            s.commit()


def test_report_quota_is_counted_in_the_statement_and_refuses_past_it(app, g):
    """GISGRID_REPORT_LIMIT per user: the report's own statement counts the attempt; past the
    limit the answer is 429 with Retry-After and the rate-limit headers, and nothing is written.
    Another user's quota is their own."""
    from gisgrid.web import create_app

    settings = app.extensions["gisgrid"]["settings"]
    limited = create_app({"database_url": settings.database_url, "home": settings.home,
                          "report_limit": "3 per minute"})
    try:
        with limited.extensions["gisgrid"]["sessions"]() as s:
            s.execute(text("DELETE FROM rate_limit WHERE key LIKE 'report:%'"))
            s.commit()
        worker, other = login_as(limited, "gridworker"), login_as(limited, "commander")
        before = count(app)
        answers = [file_report(worker, g) for _ in range(5)]
        assert [r.status_code for r in answers] == [201, 201, 201, 429, 429]
        assert [r.headers["X-RateLimit-Remaining"] for r in answers[:3]] == ["2", "1", "0"]
        assert all(r.headers["X-RateLimit-Limit"] == "3" for r in answers)
        refused = answers[3]
        assert refused.json["error"] == "Exceeded" and "at most 3 reports per 60 s" in refused.json["message"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert count(app) == before + 3
        key = str(uuid.uuid4())
        assert post(worker, "/api/incidents", {"category": "sanitation", "lon": g["lon"], "lat": g["lat"]},
                    headers={"Idempotency-Key": key}).status_code == 429
        assert count(app, "idempotency_key = :k", k=key) == 0
        assert file_report(other, g).status_code == 201
    finally:
        limited.extensions["gisgrid"]["engine"].dispose()
