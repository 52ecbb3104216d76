"""The one map in a real browser over the city: first draw and bytes, beside the naive page.

    GISGRID_HOME=/tmp/gg-bench GISGRID_PG_FAST=1 .venv/bin/python bench/page.py [--scale city|demo]
        [--runs 3] [--naive-incidents 100000]

Loads the dataset if missing (bench/link.py's loader) and starts ``gisgrid serve``. In headless
Chromium (Debian's, through Playwright; a fresh browser context per run, so nothing is cached):

* gisgrid: log in, then time from ``page.goto("/")`` until the grid layer has drawn every tile
  of the view (the VectorGrid ``load`` event the page marks as ``body[data-gg-drawn-grids]``),
  and count the bytes of every response (encoded body + headers) until then; then until the KPI
  strip shows its figures (the page asks for them once the grids have drawn);
* naive: a plain folium map of the same grids (every current grid, GeoJSON with code, name,
  households, open incidents, coloured by households) and incidents (GeoJSON points, the newest
  ``--naive-incidents``; all of them would not fit in a browser tab) embedded in one HTML page,
  served with the same local Leaflet by a plain HTTP server; timed from ``goto`` until the
  ``load`` event, when Leaflet has drawn it, and its bytes counted the same way.

The naive page holds fewer incidents than the tiles aggregate, which favours it. Prints medians,
the ratios and the issue's goals (≥10× fewer bytes, ≥5× faster first draw) as met or NOT met.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import os
import socketserver
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import link  # noqa: E402
from tiles import start_server  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORT = {"width": 1280, "height": 800}
STATIC = Path(__file__).resolve().parent.parent / "gisgrid" / "web" / "static"
log = link.log


def bench_user(Session) -> tuple[str, str]:
    from gisgrid.layers import users

    password = "bench-page-" + os.urandom(8).hex()
    with Session.begin() as s:
        try:
            users.set_password(s, users.get(s, "bench-page"), password)
        except Exception:
            users.add(s, "bench-page", "admin", [], password)
    return "bench-page", password


def naive_page(Session, n_incidents: int, folder: Path) -> int:
    """Write the naive folium page (grids + incidents as GeoJSON) to ``folder/index.html``."""
    import folium
    from sqlalchemy import text

    from gisgrid.layers import grids
    from gisgrid.web import assets
    from gisgrid.web.pages import HOUSEHOLD_BINS

    assets.localise_folium()
    with Session() as s:
        feats = grids.summary(s)
        rows = s.execute(text("SELECT code, state, category, ST_X(geom), ST_Y(geom) FROM incident "
                              "ORDER BY reported_at DESC LIMIT :n"), {"n": n_incidents}).all()
    xs = [c for f in feats for ring in f["geometry"]["coordinates"] for poly in ring for c in poly]
    m = folium.Map(tiles=None)
    m.fit_bounds([[min(c[1] for c in xs), min(c[0] for c in xs)], [max(c[1] for c in xs), max(c[0] for c in xs)]])

    def colour(n):
        out = HOUSEHOLD_BINS[0][1]
        for lower, c in HOUSEHOLD_BINS:
            if n >= lower:
                out = c
        return out

    folium.GeoJson({"type": "FeatureCollection", "features": feats}, name="grids",
                   style_function=lambda f: {"fillColor": colour(f["properties"]["households"]), "weight": 0.8,
                                             "fillOpacity": 0.6},
                   tooltip=folium.GeoJsonTooltip(["code", "name", "households", "open_incidents"])).add_to(m)
    points = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [x, y]},
         "properties": {"code": c, "state": st, "category": cat}} for c, st, cat, x, y in rows]}
    folium.GeoJson(points, name="incidents", marker=folium.CircleMarker(radius=3, weight=1)).add_to(m)
    folium.LayerControl().add_to(m)
    html = m.get_root().render()
    (folder / "index.html").write_text(html, encoding="utf-8")
    (folder / "static").symlink_to(STATIC)
    return len(html.encode())


def serve_folder(folder: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None
    httpd = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/"


def measure(browser, url, wait, login=None, after=None, screenshot=None) -> dict:
    """One cold run: seconds from goto until ``wait`` holds, bytes of every response until then;
    then, if given, seconds from goto until ``after`` holds too (``then``), and a screenshot."""
    ctx = browser.new_context(viewport=VIEWPORT, locale="zh-CN")
    page = ctx.new_page()
    if login:
        page.goto(login["url"] + "login", wait_until="load")
        page.fill("input[name=username]", login["user"])
        page.fill("input[name=password]", login["password"])
        page.click("button[type=submit]")
        page.wait_for_load_state("load")
        page.goto("about:blank")
    sizes, errors = [], []

    def finished(req):
        try:
            sz = req.sizes()
            sizes.append(sz["responseBodySize"] + sz["responseHeadersSize"])
        except Exception as e:    # a request cut short by the end of the run
            errors.append(str(e))

    page.on("requestfinished", finished)
    page.on("pageerror", lambda e: errors.append(str(e)))
    t0 = time.perf_counter()
    page.goto(url, wait_until="load", timeout=600_000)
    wait(page)
    dt = time.perf_counter() - t0
    n_bytes, n_req = sum(sizes), len(sizes)
    then = None
    if after:
        after(page)
        then = time.perf_counter() - t0
    if screenshot:
        page.screenshot(path=str(screenshot))
    ctx.close()
    return {"seconds": dt, "bytes": n_bytes, "requests": n_req, "errors": errors, "then": then}


def kpi_filled(page) -> None:
    """The KPI strip shows its figures (it shows "–" until its request answers)."""
    page.wait_for_selector("#gg-kpi-open:text-matches('[0-9]')", timeout=300_000)   # (the page's CSP forbids eval)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", default="city", choices=("city", "district", "demo"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--naive-incidents", type=int, default=100_000)
    ap.add_argument("--screenshot", type=Path, help="save the page of the last run here (PNG), once the KPI strip is filled")
    args = ap.parse_args()
    engine, Session, dsn = link.connect(args.scale)
    link.ensure_dataset(engine, Session, args.scale, force=False)
    from playwright.sync_api import sync_playwright

    user, password = bench_user(Session)
    home = Path(os.environ["GISGRID_HOME"])
    proc, base = start_server(128, home / "serve-page.log")
    folder = Path(tempfile.mkdtemp(prefix="gg-naive-", dir="/tmp"))
    t0 = time.perf_counter()
    html_bytes = naive_page(Session, args.naive_incidents, folder)
    log(f"naive page written: {html_bytes / 1e6:.1f} MB HTML in {time.perf_counter() - t0:.0f} s "
        f"(every grid + the newest {args.naive_incidents:,} incidents as GeoJSON)")
    httpd, naive_url = serve_folder(folder)
    ours, naive = [], []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            for i in range(args.runs):
                ours.append(measure(browser, base + "/", lambda page: page.wait_for_selector(
                    "body[data-gg-drawn-grids]", state="attached", timeout=300_000),
                    login={"url": base + "/", "user": user, "password": password}, after=kpi_filled,
                    screenshot=args.screenshot if i == args.runs - 1 else None))
                log(f"  run {i + 1}: gisgrid {ours[-1]['seconds']:.2f} s, {ours[-1]['bytes'] / 1e3:,.0f} KB in "
                    f"{ours[-1]['requests']} requests; KPI strip filled at {ours[-1]['then']:.2f} s"
                    f"{'; errors: ' + str(ours[-1]['errors'][:2]) if ours[-1]['errors'] else ''}")
                naive.append(measure(browser, naive_url, lambda page: page.wait_for_selector(
                    "path.leaflet-interactive", state="attached", timeout=300_000)))
                log(f"  run {i + 1}: naive   {naive[-1]['seconds']:.2f} s, {naive[-1]['bytes'] / 1e3:,.0f} KB in "
                    f"{naive[-1]['requests']} requests")
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        httpd.shutdown()
    med = lambda runs, k: statistics.median(r[k] for r in runs)  # noqa: E731
    o_s, n_s, o_b, n_b = med(ours, "seconds"), med(naive, "seconds"), med(ours, "bytes"), med(naive, "bytes")
    log(f"\nfirst draw of the grid layer (median of {args.runs}): gisgrid {o_s:.2f} s, naive folium {n_s:.2f} s "
        f"→ ×{n_s / o_s:.1f} faster")
    log(f"KPI strip filled (median): {med(ours, 'then'):.2f} s after navigation, "
        f"{med(ours, 'then') - o_s:.2f} s after the grids drew (the page asks for it once they have drawn)")
    log(f"bytes transferred: gisgrid {o_b / 1e3:,.0f} KB, naive {n_b / 1e3:,.0f} KB → ×{n_b / o_b:.0f} fewer")
    log("goals (from the issue):")
    log(f"  [{'met' if n_b >= 10 * o_b else 'NOT met'}] at least 10× fewer bytes: ×{n_b / o_b:.0f}")
    log(f"  [{'met' if n_s >= 5 * o_s else 'NOT met'}] at least 5× faster first draw: ×{n_s / o_s:.1f}")


if __name__ == "__main__":
    main()
