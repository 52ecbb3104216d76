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


@pytest.fixture(scope="module")
def server(demo_url):
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "gisgrid"), "serve"],
                            env=gisgrid_env(GISGRID_DATABASE_URL=demo_url, GISGRID_PORT=str(port)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "healthz", timeout=2).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                out = proc.stdout.read()
                proc.stdout.close()
                raise RuntimeError(f"server did not come up: {out}")
            time.sleep(0.2)
    yield url
    stop(proc)


def stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    """Stop `gisgrid serve` and its workers: SIGTERM (gunicorn finishes what is in flight), and
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
        outside, errors, csp = [], [], []
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(server)
                   else (outside.append(r.request.url), r.abort()))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: csp.append(m.text) if "Content Security Policy" in m.text else None)
        page.goto(server, wait_until="networkidle")
        assert "/login" in page.url                       # not logged in: sent to the login page
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", demo_passwords["admin"])
        page.click("button[type=submit]")
        page.wait_for_load_state("networkidle")
        paths = page.locator("path.leaflet-interactive").count()
        title = page.locator("#gg-title h1").inner_text()
        shot = ARTIFACTS / "one_map.png"
        page.screenshot(path=str(shot))
        browser.close()
    assert outside == [] and errors == [] and csp == []
    assert paths >= 150 + 10          # every grid and every community outline drawn
    assert "江汉区" in title
    assert shot.stat().st_size > 50_000   # a drawn map, not a blank page


def login(page, server, username, password):
    page.goto(server + "login", wait_until="networkidle")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")


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
        ctx = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                                  geolocation={"latitude": here.y, "longitude": here.x, "accuracy": 12},
                                  permissions=["geolocation"], locale="zh-CN")
        page = ctx.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        login(page, server, "gridworker", demo_passwords["gridworker"])
        page.goto(server + "field", wait_until="networkidle")
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
