"""A real browser (Debian's Chromium through Playwright) on a real server: the one map draws
the grids with no request leaving the machine."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from conftest import gisgrid_env

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(__file__).parent / "artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(url: str, port: int, **env) -> subprocess.Popen:
    """`gisgrid serve` on ``url``'s database and ``port``, in a process group of its own; returns
    once it answers /healthz."""
    proc = subprocess.Popen([str(Path(sys.executable).parent / "gisgrid"), "serve"],
                            env=gisgrid_env(GISGRID_DATABASE_URL=url, GISGRID_PORT=str(port), **env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).close()
            return proc
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                out = proc.stdout.read()
                proc.stdout.close()
                raise RuntimeError(f"server did not come up: {out}")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def server(demo_url):
    port = free_port()
    proc = start(demo_url, port)
    yield f"http://127.0.0.1:{port}/"
    stop(proc)


def stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    """Stop `gisgrid serve` and its workers: SIGTERM (the workers finish what is in flight), and
    SIGKILL to the whole group should that take over 30 s."""
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    except ProcessLookupError:
        pass
    finally:
        proc.stdout.close()


def test_one_map_draws_grids_offline(server, demo_passwords):
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        outside, errors, csp, tiles = [], [], [], []
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(server)
                   else (outside.append(r.request.url), r.abort()))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: csp.append(m.text) if "Content Security Policy" in m.text else None)
        page.on("request", lambda r: tiles.append(r.url) if "/tiles/" in r.url else None)
        page.goto(server, wait_until="networkidle")
        assert "/login" in page.url                       # not logged in: sent to the login page
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", demo_passwords["admin"])
        page.click("button[type=submit]")
        page.wait_for_load_state("networkidle")
        expect(page.locator("path.gg-grid").first).to_be_attached(timeout=15000)
        page.wait_for_load_state("networkidle")
        grids = page.locator("path.gg-grid").count()
        incidents = page.locator("path.gg-incident-bin, path.gg-incident").count()
        title = page.locator("#gg-title h1").inner_text()
        expect(page.locator("#gg-kpi-open")).not_to_have_text("–")
        shot = ARTIFACTS / "one_map.png"
        page.screenshot(path=str(shot))
        browser.close()
    assert outside == [] and errors == [] and csp == []
    assert grids >= 150               # every grid drawn (a grid cut by a tile edge is drawn in each tile)
    assert incidents > 0              # bins when zoomed out, points from zoom 14
    assert not any(".geojson" in u or "/api/grids" in u for u in tiles)
    assert "江汉区" in title
    assert shot.stat().st_size > 50_000   # a drawn map, not a blank page


def login(page, server, username, password):
    page.goto(server + "login", wait_until="networkidle")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")


def field_page(browser, server, password, lat, lon, accuracy):
    """A phone-sized context at (lat, lon) ± accuracy, logged in as gridworker, on /field;
    returns (context, page, page errors)."""
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                              geolocation={"latitude": lat, "longitude": lon, "accuracy": accuracy},
                              permissions=["geolocation"], locale="zh-CN")
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    login(page, server, "gridworker", password)
    page.goto(server + "field", wait_until="networkidle")
    return ctx, page, errors


def test_field_report_made_offline_is_sent_once_when_back_online(server, demo_url, demo_passwords):
    import json
    import uuid

    import psycopg
    from shapely.geometry import shape

    pg = demo_url.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(pg) as c:
        code, gj = c.execute("SELECT code, ST_AsGeoJSON(geom) FROM grid WHERE valid_to IS NULL ORDER BY code LIMIT 1").fetchone()
    here = shape(json.loads(gj)).representative_point()
    marker = f"离线上报测试 {uuid.uuid4()}"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        ctx, page, errors = field_page(browser, server, demo_passwords["gridworker"], here.y, here.x, 12)
        # locator waits, not wait_for_function: the page's CSP forbids eval, as it should
        expect(page.locator("select[name=category] option")).to_have_count(12)
        expect(page.locator("#where")).to_contain_text("±")
        ctx.set_offline(True)
        page.select_option("select[name=category]", "sanitation")
        page.fill("textarea[name=description]", marker)
        page.click("#report button[type=submit]")
        expect(page.locator("#outbox")).to_contain_text("1")
        assert "离线保存" in page.inner_text("#result")
        page.screenshot(path=str(ARTIFACTS / "field_offline.png"))
        with psycopg.connect(pg) as c:
            assert c.execute("SELECT count(*) FROM incident WHERE description = %s", (marker,)).fetchone()[0] == 0
        ctx.set_offline(False)
        expect(page.locator("#result")).to_contain_text("已上报", timeout=20000)
        page.wait_for_timeout(6000)          # let the periodic retry run too: it must not send it again
        page.screenshot(path=str(ARTIFACTS / "field_sent.png"))
        result = page.inner_text("#result")
        browser.close()
    assert errors == []
    with psycopg.connect(pg) as c:
        rows = c.execute("SELECT grid_code, idempotency_key, source FROM incident NATURAL LEFT JOIN incident_link WHERE description = %s",
                         (marker,)).fetchall()
    assert len(rows) == 1, rows
    assert rows[0][0] == code and rows[0][1] and rows[0][2] == "patrol"
    assert code in result


def test_field_patrol_checkin_offline_then_online_and_a_rejected_one(server, demo_url, demo_passwords):
    """The patrol tab: a check-in made offline waits in the outbox, is accepted once online
    (12 m from the point, radius 30 m), and one made 200 m away is recorded as rejected."""
    import json
    import uuid

    import psycopg
    import pyproj
    from shapely.geometry import shape
    from sqlalchemy.orm import Session

    from gisgrid.db.engine import make_engine
    from gisgrid.layers import writes

    pg = demo_url.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(pg) as c:
        gj = c.execute("SELECT ST_AsGeoJSON(geom) FROM grid WHERE valid_to IS NULL ORDER BY code LIMIT 1").fetchone()[0]
    here = shape(json.loads(gj)).representative_point()
    code = f"PPB{uuid.uuid4().hex[:8]}"
    eng = make_engine(demo_url)
    with Session(eng) as s:
        writes.add(s, "patrol_point", [{"code": code, "name": "浏览器测试点", "radius_m": 30, "geometry": here}],
                   actor="test")
        s.commit()
    eng.dispose()
    geod = pyproj.Geod(ellps="WGS84")
    near_lon, near_lat, _ = geod.fwd(here.x, here.y, 45, 12)
    far_lon, far_lat, _ = geod.fwd(here.x, here.y, 45, 200)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        ctx, page, errors = field_page(browser, server, demo_passwords["gridworker"], near_lat, near_lon, 8)
        page.click("nav button[data-tab=patrol]")
        button = page.locator(f'#points li[data-code="{code}"] button')
        expect(button).to_be_visible()
        expect(page.locator("#gps")).to_contain_text("±8m")
        ctx.set_offline(True)
        button.click()
        expect(page.locator("#outbox")).to_contain_text("1")
        expect(page.locator("#result")).to_contain_text("离线保存")
        with psycopg.connect(pg) as c:
            assert c.execute("SELECT count(*) FROM patrol_checkin k JOIN patrol_point p ON p.id = k.point_id "
                             "WHERE p.code = %s", (code,)).fetchone()[0] == 0
        ctx.set_offline(False)
        expect(page.locator("#result")).to_contain_text("签到成功", timeout=20000)
        page.wait_for_timeout(6000)          # the periodic retry must not send it again
        page.screenshot(path=str(ARTIFACTS / "field_checkin.png"))
        ctx.set_geolocation({"latitude": far_lat, "longitude": far_lon, "accuracy": 8})
        expect(page.locator("#gps")).to_contain_text(f"{far_lat:.6f}")
        button.click()
        expect(page.locator("#result")).to_contain_text("签到未通过", timeout=20000)
        browser.close()
    assert errors == []
    with psycopg.connect(pg) as c:
        rows = c.execute("SELECT k.accepted, k.distance_m, k.allowed_m, k.worker FROM patrol_checkin k "
                         "JOIN patrol_point p ON p.id = k.point_id WHERE p.code = %s ORDER BY k.at", (code,)).fetchall()
    assert [r[0] for r in rows] == [True, False], rows
    assert abs(rows[0][1] - 12) < 0.5 and rows[0][2] == 38 and abs(rows[1][1] - 200) < 0.5
    assert {r[3] for r in rows} == {"gridworker"}


def _post_incident(server, demo_url, lon, lat, category="noise") -> str:
    import json
    import urllib.request
    import uuid

    from gisgrid.db.engine import make_engine, make_sessionmaker
    from gisgrid.layers import users

    eng = make_engine(demo_url)
    with make_sessionmaker(eng)() as s:
        token, _ = users.create_token(s, users.get(s, "admin"), "browser-live", ["read", "report"], 1)
        s.commit()
    eng.dispose()
    req = urllib.request.Request(server + "api/incidents", method="POST",
                                 data=json.dumps({"category": category, "lon": lon, "lat": lat,
                                                  "description": "实时上图测试"}).encode(),
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                                          "Idempotency-Key": str(uuid.uuid4())})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 201
        return json.loads(r.read())["code"]


def test_one_map_layers_panel_filter_search_and_live_incident(server, demo_url, demo_passwords):
    """Switch layers, click a grid and read its panel, filter by category, see an incident
    posted through the API appear without reload, find it by number."""
    import json

    import psycopg
    from shapely.geometry import shape

    pg = demo_url.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(pg) as c:
        gid, code, name, gj = c.execute("SELECT id, code, name, ST_AsGeoJSON(geom) FROM grid WHERE valid_to IS NULL "
                                        "ORDER BY code LIMIT 1").fetchone()
        households = c.execute("SELECT sum(households) FROM building JOIN building_link USING (id) WHERE grid_id = %s", (gid,)).fetchone()[0]
        head = c.execute("SELECT s.name, s.phone FROM staff s JOIN grid_assignment a ON a.staff_id = s.id "
                         "WHERE a.grid_id = %s AND a.role = 'head' AND a.valid_to IS NULL", (gid,)).fetchone()
    here = shape(json.loads(gj)).representative_point()
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800}, locale="zh-CN")
        errors, tile_urls = [], []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: tile_urls.append(r.url) if "/tiles/incidents/" in r.url else None)
        login(page, server, "admin", demo_passwords["admin"])
        expect(page.locator("path.gg-grid").first).to_be_attached(timeout=15000)
        layers = page.locator(".leaflet-control-layers-overlays")

        # layer switcher: buildings on, incidents off
        assert page.locator("path.gg-building").count() == 0
        layers.get_by_text("楼栋").click()
        expect(page.locator("path.gg-building").first).to_be_attached(timeout=15000)
        layers.get_by_text("事件").click()
        expect(page.locator("path.gg-incident")).to_have_count(0)
        page.screenshot(path=str(ARTIFACTS / "one_map_buildings.png"))

        # click the grid at the centre of the map: its panel
        page.evaluate("([lat, lon]) => gisgrid.map.setView([lat, lon], 16, {animate: false})", [here.y, here.x])
        page.wait_for_load_state("networkidle")
        layers.get_by_text("楼栋").click()          # buildings off again, so the click lands on the grid
        page.mouse.click(640, 400)
        expect(page.locator("#gg-panel-title")).to_have_text(name, timeout=10000)
        panel = page.locator("#gg-panel")
        expect(panel).to_contain_text(code)
        expect(page.locator("#gg-team")).to_contain_text("网格长")
        expect(page.locator("#gg-team")).to_contain_text(head[0])
        expect(page.locator("#gg-team")).to_contain_text(head[1])
        expect(page.locator("#gg-panel-figures")).to_contain_text(str(households))
        expect(page.locator("#gg-kpi-scope")).to_have_text("已选区域")
        page.screenshot(path=str(ARTIFACTS / "one_map_panel.png"))

        # filter by category: tiles asked with it, points and panel hold only that category
        layers.get_by_text("事件").click()
        expect(page.locator("path.gg-incident").first).to_be_attached(timeout=15000)
        page.select_option("#gg-category", "sanitation")
        expect(page.locator("#gg-by_category li")).to_have_count(1, timeout=10000)
        expect(page.locator("#gg-by_category")).to_contain_text("环境卫生")
        page.wait_for_load_state("networkidle")
        assert any("category=sanitation" in u for u in tile_urls)
        assert page.locator("path.gg-incident.gg-cat-sanitation").count() > 0
        assert page.locator("path.gg-incident:not(.gg-cat-sanitation)").count() == 0
        page.screenshot(path=str(ARTIFACTS / "one_map_filtered.png"))
        page.select_option("#gg-category", "")

        # live: an incident reported through the API appears without reload
        new_code = _post_incident(server, demo_url, here.x, here.y)
        expect(page.locator("#gg-latest-list")).to_contain_text(new_code, timeout=10000)
        expect(page.locator(f"path.gg-inc-{new_code}")).to_be_attached(timeout=10000)
        page.screenshot(path=str(ARTIFACTS / "one_map_live.png"))

        # search by incident number
        page.evaluate("() => gisgrid.map.setZoom(13, {animate: false})")
        page.fill("#gg-search", new_code)
        page.click("#gg-search-form button")
        page.locator(f"#gg-search-results a[data-code='{new_code}']").click()
        expect(page.locator(f"path.gg-inc-{new_code}")).to_be_attached(timeout=10000)
        zoom = page.evaluate("() => gisgrid.map.getZoom()")
        page.screenshot(path=str(ARTIFACTS / "one_map_search.png"))
        browser.close()
    assert errors == []
    assert zoom >= 17
