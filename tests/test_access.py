"""Who may see and change what: the matrix over every route, tokens, CSRF, login, limits.

Users (demo district): ``gridworker`` is a field worker of grid G (the first grid), ``outsider``
a field worker of a grid in another street, ``viewer`` reads G's street, ``admin`` everything.
"""
from __future__ import annotations

import re

import pytest
from shapely.geometry import shape
from sqlalchemy import text

from gisgrid.layers import users

from conftest import login_as


@pytest.fixture(scope="module")
def world(app):
    """G, a point inside it, one of its residents, and an outsider account."""
    with app.extensions["gisgrid"]["sessions"]() as s:
        g = s.execute(text("SELECT code, community_code, street_code, ST_AsGeoJSON(geom) AS gj FROM grid "
                           "WHERE valid_to IS NULL ORDER BY code LIMIT 1")).mappings().one()
        far = s.execute(text("SELECT code FROM grid WHERE street_code <> :s ORDER BY code DESC LIMIT 1"),
                        {"s": g["street_code"]}).scalar()
        resident = s.execute(text("SELECT code FROM resident NATURAL LEFT JOIN resident_link WHERE grid_code = :g ORDER BY code LIMIT 1"),
                             {"g": g["code"]}).scalar()
        incident = s.execute(text("SELECT code, id FROM incident NATURAL LEFT JOIN incident_link WHERE grid_code = :g ORDER BY code LIMIT 1"),
                             {"g": g["code"]}).one()
        from gisgrid.layers import photos
        import io
        from PIL import Image
        buf = io.BytesIO()
        Image.new("RGB", (4, 4), (1, 2, 3)).save(buf, "PNG")
        sha = photos.add(s, incident.id, buf.getvalue(), "test")
        s.commit()
        if s.execute(text("SELECT 1 FROM app_user WHERE username = 'outsider'")).scalar() is None:
            users.add(s, "outsider", "field", [far], "outsider-password")
            s.commit()
        p = shape(__import__("json").loads(g["gj"])).representative_point()
        day = patrol_world(s, p)
    return {"grid": g["code"], "community": g["community_code"], "lon": p.x, "lat": p.y, "resident": resident,
            "incident": incident.code, "photo": sha, "day": day}


def patrol_world(s, p) -> str:
    """A patrol point in G (due every half hour), a route through it, a schedule, and a check-in
    of gridworker two hours ago (so the point is overdue). Returns the check-in's local day."""
    from datetime import datetime, timedelta, timezone
    from zoneinfo import ZoneInfo

    from gisgrid.layers import patrol, writes

    when = datetime.now(timezone.utc) - timedelta(hours=2)
    if s.execute(text("SELECT 1 FROM patrol_point WHERE code = 'PPWORLD'")).scalar() is None:
        writes.add(s, "patrol_point", [{"code": "PPWORLD", "name": "测试巡逻点", "visits_per_day": 48,
                                        "geometry": p}], actor="test")
        patrol.add_routes(s, [{"type": "Feature", "properties": {"code": "RTWORLD", "name": "测试路线",
                                                                 "points": ["PPWORLD"]},
                               "geometry": {"type": "LineString", "coordinates": [[p.x, p.y], [p.x + 0.0001, p.y]]}}],
                          "test", ("TRUE", {}))
        patrol.add_schedule(s, "test", ("TRUE", {}), ("TRUE", {}), point="PPWORLD", visits_per_day=48)
        patrol.check_in(s, "gridworker", ("TRUE", {}), point="PPWORLD", lon=p.x, lat=p.y, at=when.isoformat())
        s.commit()
    return when.astimezone(ZoneInfo("Asia/Shanghai")).date().isoformat()


def route_key(rule) -> str:
    return f"{','.join(sorted(rule.methods - {'HEAD', 'OPTIONS'}))} {rule.rule}"


# Every route, with what an insider sees and what an outsider must not.
MATRIX = {
    "GET /": "page",
    "GET /healthz": "public",
    "GET,POST /login": "public",
    "POST /logout": "public",
    "GET /static/<path:filename>": "public",
    "GET /api/openapi.json": "public",
    "GET /api/me": "me",
    "GET /api/locate": "locate",
    "GET /api/grids": "grids",
    "GET /api/admin-areas/<level>": "areas",
    "GET /api/residents": "residents",
    "GET /api/residents/<code>": "resident",
    "GET /api/categories": "me",
    "GET /api/incidents": "incidents",
    "GET /api/stats": "stats",
    "GET /field": "field",
    "GET /api/incidents/<code>": "incident",
    "GET /api/photos/<sha256>": "photo",
    "POST /api/incidents": "post",
    "POST /api/incidents/<code>/actions/<action>": "post",
    "POST /api/incidents/<code>/merge": "post",
    "POST /api/incidents/<code>/photos": "post",
    "POST /api/import/<layer>": "post",
    "GET /api/export/<layer>": "export",      # insider/outsider: test_transfer_web.py (planner roles)
    "PUT /api/categories/<code>": "post",
    "GET /open311/v2/services.<fmt>": "o311_services",
    "GET /open311/v2/services/<service_code>.<fmt>": "o311_service",
    "GET /open311/v2/requests.<fmt>": "o311_requests",
    "GET /open311/v2/requests/<service_request_id>.<fmt>": "o311_request",
    "POST /open311/v2/requests.<fmt>": "post",
    "GET,POST /open311/v2/<path:rest>": "public",        # a GeoReport 404 for anything else
    "GET /api/patrol/points": "patrol_points",
    "POST /api/patrol/points": "post",
    "GET /api/patrol/points/<code>": "patrol_point",
    "PATCH /api/patrol/points/<code>": "post",
    "DELETE /api/patrol/points/<code>": "post",
    "GET /api/patrol/routes": "patrol_routes",
    "POST /api/patrol/routes": "post",
    "PATCH /api/patrol/routes/<code>": "post",
    "DELETE /api/patrol/routes/<code>": "post",
    "GET /api/patrol/schedules": "patrol_schedules",
    "POST /api/patrol/schedules": "post",
    "DELETE /api/patrol/schedules/<int:sid>": "post",
    "POST /api/patrol/checkins": "post",
    "GET /api/patrol/checkins": "patrol_checkins",
    "GET /api/patrol/trail": "patrol_trail",
    "GET /api/patrol/coverage": "patrol_coverage",
    "GET /api/patrol/uncovered": "patrol_uncovered",
    "GET /api/patrol/compliance": "patrol_compliance",
    "GET /api/patrol/overdue": "patrol_overdue",
    "GET /api/patrol/stats": "patrol_stats",
    "GET /planner": "planner_page",
    "GET /api/plans": "plan",
    "POST /api/plans": "post",
    "GET /api/plans/<int:plan_id>": "plan",
    "GET /api/plans/<int:plan_id>/check": "plan",
    "GET /api/plans/<int:plan_id>/diff": "plan",
    "POST /api/plans/<int:plan_id>/edits": "post",
    "POST /api/plans/<int:plan_id>/undo": "post",
    "POST /api/plans/<int:plan_id>/propose": "post",
    "POST /api/plans/<int:plan_id>/actions/<action>": "post",
    "GET /tiles/<name>/<int:z>/<int:x>/<int:y>.pbf": "tile",
    "GET /tiles/<name>.json": "tilejson",
    "GET /tiles/index.json": "tileindex",
    "GET /api/areas/<code>/summary": "area_summary",
    "GET /api/kpi": "kpi",
    "GET /api/search": "search",
}


def test_matrix_covers_every_route(app):
    routes = {route_key(r) for r in app.url_map.iter_rules()}
    assert routes == set(MATRIX), f"routes without a matrix entry: {routes - set(MATRIX)}; stale: {set(MATRIX) - routes}"


def test_a_view_without_access_rule_is_refused(demo_url, settings):
    from gisgrid.web import create_app

    app = create_app({"database_url": demo_url, "home": settings.home})
    app.add_url_rule("/forgotten", "forgotten", lambda: "secret")
    r = login_as(app, "admin").get("/forgotten")
    assert r.status_code == 403 and b"secret" not in r.data
    app.extensions["gisgrid"]["engine"].dispose()


@pytest.mark.parametrize("route", sorted(r for r, k in MATRIX.items() if k != "public"))
def test_anonymous_gets_nothing(anonymous, world, route):
    method, rule = route.split(" ")
    url = url_for(MATRIX[route], world) if method == "GET" and MATRIX[route] != "plan" else rule.replace(
        "<code>", world["incident"]).replace("<action>", "accept").replace("<int:sid>", "1").replace("<int:plan_id>", "1")
    r = anonymous.get(url) if method == "GET" else anonymous.open(url, method=method.split(",")[-1], json={})
    if url.startswith(("/api/", "/tiles/")):
        assert r.status_code == 401 and r.json["error"] == "Unauthenticated"
    elif url.startswith("/open311/"):                    # the GeoReport error format
        assert r.status_code == 401 and (b"<error><code>401</code>" in r.data if ".xml" in url else
                                         r.json[0]["code"] == 401 and r.json[0]["description"])
    else:
        assert r.status_code == 302 and "/login" in r.headers["Location"]
    assert world["grid"].encode() not in r.data


def url_for(kind, w) -> str:
    return {"page": "/", "me": "/api/me", "locate": f"/api/locate?lon={w['lon']}&lat={w['lat']}",
            "grids": "/api/grids", "areas": "/api/admin-areas/community", "residents": "/api/residents",
            "resident": f"/api/residents/{w['resident']}", "incidents": "/api/incidents?limit=1000",
            "incident": f"/api/incidents/{w['incident']}", "photo": f"/api/photos/{w['photo']}",
            "o311_services": "/open311/v2/services.json", "o311_service": "/open311/v2/services/noise.xml",
            "o311_requests": f"/open311/v2/requests.json?service_request_id={w['incident']}",
            "o311_request": f"/open311/v2/requests/{w['incident']}.xml",
            "stats": "/api/stats?level=grid", "field": "/field",
            "patrol_points": "/api/patrol/points", "patrol_point": "/api/patrol/points/PPWORLD",
            "patrol_routes": "/api/patrol/routes", "patrol_schedules": "/api/patrol/schedules",
            "patrol_checkins": "/api/patrol/checkins", "patrol_trail": f"/api/patrol/trail?worker=gridworker&day={w['day']}",
            "patrol_coverage": "/api/patrol/coverage?level=grid", "patrol_uncovered": "/api/patrol/uncovered?distance=20",
            "patrol_compliance": "/api/patrol/compliance?by=point", "patrol_overdue": "/api/patrol/overdue",
            "patrol_stats": "/api/patrol/stats?level=grid",
            "planner_page": "/planner", "export": "/api/export/place", "tile": _tile_url(w),
            "tilejson": "/tiles/grids.json", "tileindex": "/tiles/index.json",
            "area_summary": f"/api/areas/{w['grid']}/summary", "kpi": f"/api/kpi?area={w['grid']}",
            "search": f"/api/search?q={w['grid']}"}[kind]


def _tile_url(w) -> str:
    from gisgrid.layers.tiles import Tile

    t = Tile.at(16, w["lon"], w["lat"])
    return f"/tiles/grids/{t.z}/{t.x}/{t.y}.pbf"


@pytest.mark.parametrize("kind", sorted(set(MATRIX.values()) - {"public", "me", "post", "plan", "planner_page", "export"}))
def test_insider_sees_it_outsider_does_not(app, world, kind):
    inside, outside = login_as(app, "gridworker"), login_as(app, "outsider")
    url = url_for(kind, world)
    ri, ro = inside.get(url), outside.get(url)
    # the field page is a shell: its data come from the scoped API calls tested here too
    # so is the one map: its data come as tiles (binary, decoded in test_tiles.py) and from the
    # summary/KPI/search API; the index and KPI hold no codes. The outsider check below holds for all.
    mark = {"areas": world["community"], "photo": None, "o311_services": None, "o311_service": None,
            "field": None, "patrol_schedules": "PPWORLD", "patrol_compliance": "PPWORLD", "page": None, "tilejson": None,
            "tileindex": None, "kpi": None}.get(
        kind, world["grid"])
    assert ri.status_code == 200 and (mark is None or mark.encode() in ri.data)
    assert ro.status_code in (200, 403, 404)
    assert world["grid"].encode() not in ro.data and world["community"].encode() not in ro.data
    if kind in ("locate", "resident", "incident", "photo", "o311_request", "patrol_point"):
        assert ro.status_code == 404
    if kind.startswith("patrol_") and kind != "patrol_point":
        assert b"PPWORLD" not in ro.data
    if kind in ("area_summary", "kpi"):
        assert ro.status_code == 404
    if kind == "tile":          # the outsider's tile of the insider's grid holds no feature at all
        import mapbox_vector_tile

        assert ro.status_code == 200 and mapbox_vector_tile.decode(ro.data) == {}
    if kind == "search":
        assert ro.json == []


def test_plans_only_for_planners_of_the_scope(app, world):
    """A district planner plans its communities; a planner of another street sees none of its
    plans (404) and may not start one there (403); roles without ``plan`` get 403."""
    with app.extensions["gisgrid"]["sessions"]() as s:
        far = s.execute(text("SELECT street_code FROM admin_area WHERE level = 'street' AND code <> :s "
                             "AND code IN (SELECT street_code FROM grid) ORDER BY code LIMIT 1"),
                        {"s": world["community"][:9] + "000"}).scalar()
        if s.execute(text("SELECT 1 FROM app_user WHERE username = 'farplanner'")).scalar() is None:
            users.add(s, "farplanner", "planner", [far], "farplanner-password")
            s.commit()
    planner, far_planner = login_as(app, "planner"), login_as(app, "farplanner")
    r = planner.post("/api/plans", json={"scope": world["community"], "name": "access test"},
                     headers={"X-CSRFToken": _csrf(planner)})
    assert r.status_code == 201, r.json
    pid = r.json["id"]
    try:
        assert planner.get(f"/api/plans/{pid}").status_code == 200
        assert pid in [p["id"] for p in planner.get("/api/plans").json]
        for url in (f"/api/plans/{pid}", f"/api/plans/{pid}/check", f"/api/plans/{pid}/diff"):
            ro = far_planner.get(url)
            assert ro.status_code == 404 and world["grid"].encode() not in ro.data
        assert pid not in [p["id"] for p in far_planner.get("/api/plans").json]
        r = far_planner.post("/api/plans", json={"scope": world["community"]}, headers={"X-CSRFToken": _csrf(far_planner)})
        assert r.status_code == 403
        r = far_planner.post(f"/api/plans/{pid}/actions/discard", headers={"X-CSRFToken": _csrf(far_planner)})
        assert r.status_code == 404
        for who in ("gridworker", "viewer", "commander"):
            assert login_as(app, who).get(f"/api/plans/{pid}").status_code == 403
        assert login_as(app, "gridworker").get("/planner").status_code == 403
    finally:
        r = planner.post(f"/api/plans/{pid}/actions/discard", headers={"X-CSRFToken": _csrf(planner)})
        assert r.status_code == 200 and r.json["state"] == "discarded"


def _csrf(client) -> str:
    import re as _re

    html = client.get("/planner").data.decode()
    m = _re.search(r'name="csrf-token" content="([^"]+)"', html)
    if m:
        return m.group(1)
    return _re.search(r'name="csrf_token" value="([^"]+)"', client.get("/").data.decode()).group(1)


def test_lists_hold_only_the_jurisdiction(app, world):
    c = login_as(app, "gridworker")
    grids = c.get("/api/grids").json["features"]
    assert [f["properties"]["code"] for f in grids] == [world["grid"]]
    res = c.get("/api/residents?limit=1000").json
    assert res["total"] > 0 and {r["grid_code"] for r in res["items"]} == {world["grid"]}
    areas = {f["properties"]["code"] for f in c.get("/api/admin-areas/community").json["features"]}
    assert areas == {world["community"]}              # its own community's outline, no other


def test_personal_data_masked_unless_pii_and_reason(app, world):
    viewer, worker = login_as(app, "viewer"), login_as(app, "gridworker")
    url = f"/api/residents/{world['resident']}"
    masked = worker.get(url).json
    assert re.fullmatch(r"\d{4}\*{10}[\dX]{4}", masked["id_number"]) and "****" in masked["phone"]
    assert viewer.get(url + "?unmask=1&reason=check").status_code == 403          # role without PII
    r = worker.get(url + "?unmask=1")
    assert r.status_code == 400 and r.json["field"] == "reason"
    clear = worker.get(url + "?unmask=1&reason=上门核实").json
    assert re.fullmatch(r"\d{17}[\dX]", clear["id_number"]) and clear["id_number"][-4:] == masked["id_number"][-4:]
    with app.extensions["gisgrid"]["sessions"]() as s:
        row = s.execute(text("SELECT actor, reason, after FROM audit_log WHERE action = 'read_pii' "
                             "ORDER BY id DESC LIMIT 1")).one()
    assert row.actor == "gridworker" and row.reason == "上门核实" and row.after["code"] == world["resident"]
    assert clear["id_number"] not in str(row.after)


@pytest.fixture
def token_for(app):
    made = []

    def make(username, scopes, days=30):
        with app.extensions["gisgrid"]["sessions"]() as s:
            plain, row = users.create_token(s, users.get(s, username), "test", scopes, days)
            s.commit()
            made.append(row.id)
            return plain, row.id
    return make


def test_tokens_are_scoped_revocable_and_need_no_csrf(app, anonymous, world, token_for):
    plain, tid = token_for("admin", ["read"])
    h = {"Authorization": f"Bearer {plain}"}
    assert anonymous.get("/api/me", headers=h).json["actions"] == ["read"]
    url = f"/api/residents/{world['resident']}?unmask=1&reason=x"
    assert anonymous.get(url, headers=h).status_code == 403          # admin user, but a read-only token
    with app.extensions["gisgrid"]["sessions"]() as s:
        users.revoke_token(s, tid)
        s.commit()
    r = anonymous.get("/api/me", headers=h)
    assert r.status_code == 401 and "revoked" in r.json["message"]
    assert anonymous.get("/api/me", headers={"Authorization": "Bearer ggt_made_up"}).status_code == 401
    assert anonymous.get("/api/me", headers={"Authorization": "Basic abc"}).status_code == 401


def test_expired_token_is_refused(app, anonymous, token_for):
    plain, tid = token_for("viewer", ["read"])
    with app.extensions["gisgrid"]["sessions"]() as s:
        s.execute(text("UPDATE api_token SET expires_at = now() - interval '1 second' WHERE id = :i"), {"i": tid})
        s.commit()
    assert anonymous.get("/api/me", headers={"Authorization": f"Bearer {plain}"}).status_code == 401


@pytest.mark.parametrize("role, scopes, match", [
    ("viewer", ["pii"], "cannot grant"), ("admin", ["users"], "non-empty subset"), ("admin", [], "non-empty subset"),
])
def test_token_scopes_are_checked(app, role, scopes, match):
    from gisgrid.errors import InvalidInput

    with app.extensions["gisgrid"]["sessions"]() as s:
        with pytest.raises(InvalidInput, match=match):
            users.create_token(s, users.get(s, role if role != "viewer" else "viewer"), "x", scopes)


def test_session_post_without_csrf_is_refused(app):
    c = login_as(app, "viewer")
    r = c.post("/logout")
    assert r.status_code == 400 and b"CSRF" in r.data


def test_login_flow_audits_and_password_change_ends_sessions(app, anonymous, demo_passwords):
    page = anonymous.get("/login")
    token = re.search(rb'name="csrf_token" value="([^"]+)"', page.data).group(1).decode()
    bad = anonymous.post("/login", data={"username": "planner", "password": "wrong", "csrf_token": token})
    assert bad.status_code == 401 and "用户名或密码错误" in bad.get_data(as_text=True)
    ok = anonymous.post("/login?next=/api/me", data={"username": "planner", "password": demo_passwords["planner"],
                                                     "csrf_token": token})
    assert ok.status_code == 302 and ok.headers["Location"] == "/api/me"
    cookie = ok.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=Lax" in cookie
    assert anonymous.get("/api/me").json["username"] == "planner"
    with app.extensions["gisgrid"]["sessions"]() as s:
        acts = [r[0] for r in s.execute(text("SELECT action FROM audit_log WHERE actor = 'planner' "
                                             "ORDER BY id DESC LIMIT 2"))]
        assert acts == ["login", "login_failed"]
        u = users.get(s, "planner")
        users.set_password(s, u, demo_passwords["planner"])     # same password, new session version
        s.commit()
    assert anonymous.get("/api/me").status_code == 401


def test_open_redirect_is_refused(anonymous, demo_passwords):
    token = re.search(rb'name="csrf_token" value="([^"]+)"', anonymous.get("/login").data).group(1).decode()
    r = anonymous.post("/login?next=//evil.example/x", data={"username": "viewer", "password": demo_passwords["viewer"],
                                                            "csrf_token": token})
    assert r.status_code == 302 and r.headers["Location"] == "/"


def test_login_is_rate_limited(demo_url, settings):
    from gisgrid.web import create_app

    import psycopg

    with psycopg.connect(demo_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("DELETE FROM rate_limit")     # other tests' logins from 127.0.0.1 in this minute
    app = create_app({"database_url": demo_url, "home": settings.home, "login_limit": "3 per minute"})
    c = app.test_client()
    token = re.search(rb'name="csrf_token" value="([^"]+)"', c.get("/login").data).group(1).decode()
    codes = [c.post("/login", data={"username": f"nobody{i}", "password": "x", "csrf_token": token}).status_code
             for i in range(5)]
    assert codes[:3] == [401, 401, 401] and codes[3:] == [429, 429]
    app.extensions["gisgrid"]["engine"].dispose()


def test_security_headers(client):
    r = client.get("/")
    csp = r.headers["Content-Security-Policy"]
    nonce = re.search(r"'nonce-([^']+)'", csp).group(1)
    assert "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
    assert all(f'nonce="{nonce}"' in tag for tag in re.findall(r"<script[^>]*>", r.get_data(as_text=True)))
    assert r.headers["X-Content-Type-Options"] == "nosniff" and r.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in csp
    api = client.get("/api/me")
    assert api.headers["Cache-Control"] == "no-store"


def test_oversized_request_is_refused(anonymous):
    r = anonymous.post("/login", data=b"x" * (17 * 1024 * 1024), content_type="application/octet-stream")
    assert r.status_code == 413


def test_token_last_used_is_recorded_without_a_write_per_request(app, anonymous, token_for):
    plain, tid = token_for("viewer", ["read"])
    h = {"Authorization": f"Bearer {plain}"}

    def last_used():
        with app.extensions["gisgrid"]["sessions"]() as s:
            return s.execute(text("SELECT last_used_at FROM api_token WHERE id = :i"), {"i": tid}).scalar()

    assert last_used() is None
    assert anonymous.get("/api/me", headers=h).status_code == 200
    first = last_used()
    assert first is not None
    assert anonymous.get("/api/me", headers=h).status_code == 200
    assert last_used() == first           # within five minutes: not written again
