"""A real browser (Debian's Chromium through Playwright) on a real server: the one map draws
the grids with no request leaving the machine."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

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
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "healthz", timeout=2).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"server did not come up: {proc.stdout.read()}")
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=10)
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
