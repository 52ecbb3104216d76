"""The planner page in a real Chromium: start a plan, drag a cell's vertex, see the checks
turn red with the overlap drawn, undo, see them pass again; nothing leaves the machine."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect, sync_playwright

from test_browser import ARGS, ARTIFACTS, CHROMIUM, login, server  # noqa: F401  (the server fixture)

pytestmark = pytest.mark.browser


@pytest.fixture
def planner_login(demo_url):
    """A planner account of its own (other tests re-run `gisgrid demo`, which may reset the demo
    accounts' passwords)."""
    from sqlalchemy import text

    from gisgrid.db.engine import make_engine, make_sessionmaker
    from gisgrid.layers import users

    eng = make_engine(demo_url)
    with make_sessionmaker(eng).begin() as s:
        district = s.execute(text("SELECT code FROM admin_area WHERE level = 'district' ORDER BY code LIMIT 1")).scalar()
        if s.execute(text("SELECT 1 FROM app_user WHERE username = 'browserplanner'")).scalar() is None:
            users.add(s, "browserplanner", "planner", [district], "browserplanner-password")
    eng.dispose()
    return "browserplanner", "browserplanner-password"


def test_edit_a_cell_and_see_the_check_update(server, planner_login):  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900}, locale="zh-CN")
        outside, errors = [], []
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(server)
                   else (outside.append(r.request.url), r.abort()))
        page.on("pageerror", lambda e: errors.append(str(e)))
        login(page, server, *planner_login)
        page.goto(server + "planner", wait_until="networkidle")
        expect(page.locator("h1")).to_have_text("网格调整")
        page.click("#new-plan")
        summary = page.locator("#check-summary")
        expect(summary).to_have_attribute("data-errors", "0", timeout=20000)
        cells = page.locator("#cells tbody tr")
        n = cells.count()
        assert n >= 2
        page.select_option("#edit-mode", "replace")
        page.locator("path.leaflet-interactive").first.click()
        vertex = page.locator(".leaflet-marker-pane .marker-icon:not(.marker-icon-middle)").first
        expect(vertex).to_be_visible()
        box = vertex.bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + 30, y + 25, steps=8)
        page.mouse.move(x + 60, y + 50, steps=8)
        page.mouse.up()
        expect(summary).to_have_class("bad", timeout=20000)
        assert int(summary.get_attribute("data-errors")) >= 1
        expect(page.locator("#check-counts li[data-check=overlap], #check-counts li[data-check=gap]").first).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "planner_edit.png"))
        page.click("#undo")
        expect(summary).to_have_attribute("data-errors", "0", timeout=20000)
        expect(cells).to_have_count(n)
        page.click("#discard")
        expect(page.locator("body")).to_have_attribute("data-state", "discarded", timeout=20000)
        browser.close()
    assert outside == [] and errors == []
