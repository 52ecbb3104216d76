"""The one map's figures over the city: the KPI strip and the side panel from the tallies, beside
the same figures counted from the incidents themselves.

    GISGRID_HOME=/tmp/gg-bench GISGRID_PG_FAST=1 .venv/bin/python bench/figures.py [--scale city|demo]
        [--repeat 5]

Loads the dataset if missing (bench/link.py's loader) and starts ``gisgrid serve``. For every
selection the page asks for – the KPI strip of the whole jurisdiction, of map views at zooms 11,
12 and 13 around the centre of the city (1280 × 800 px, the view of bench/page.py), of a grid,
community, street and district; the side panel of each of those areas – it times:

* served: ``GET /api/kpi?…`` or ``GET /api/areas/<code>/summary`` through HTTP with an admin
  token (what the page waits for), p50 of ``--repeat``;
* anchor: the same figures counted from the incidents (``summaries.kpi/summary(…, fresh=True)``:
  the statements the strip and panel ran before the tallies, and still run with filters) in
  this process, p50 of ``--repeat``, interleaved with the served requests;

and checks that both give the same figures. Prints the ratio anchor / served per selection.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import link  # noqa: E402
from tiles import bench_token, start_server, timed_get  # noqa: E402

log = link.log
VIEW_PX = (1280, 800)


def view_bbox(lon: float, lat: float, z: int) -> tuple[float, float, float, float]:
    """The lon/lat box of a ``VIEW_PX`` map view centred on lon/lat at zoom ``z``."""
    world = 256 * 2 ** z
    x = (lon + 180) / 360 * world
    y = (1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * world
    to_lon = lambda px: px / world * 360 - 180  # noqa: E731
    to_lat = lambda py: math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * py / world))))  # noqa: E731
    w, h = VIEW_PX
    return to_lon(x - w / 2), to_lat(y + h / 2), to_lon(x + w / 2), to_lat(y - h / 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", default="city", choices=("city", "district", "demo"))
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    engine, Session, dsn = link.connect(args.scale)
    link.ensure_dataset(engine, Session, args.scale, force=False)
    import requests
    from sqlalchemy import text

    from gisgrid import authz
    from gisgrid.layers import summaries

    admin = authz.Principal("bench-tiles", "admin")
    with Session() as s:
        w, so, e, n = s.execute(text("SELECT ST_XMin(x), ST_YMin(x), ST_XMax(x), ST_YMax(x) FROM "
                                     "(SELECT ST_Extent(geom)::geometry AS x FROM grid WHERE valid_to IS NULL) q")).one()
        cx, cy = (w + e) / 2, (so + n) / 2
        grid, community = s.execute(text(
            "SELECT code, community_code FROM grid WHERE valid_to IS NULL ORDER BY geom <-> ST_SetSRID(ST_MakePoint(:x, :y), "
            "4326) LIMIT 1"), {"x": cx, "y": cy}).one()
        counts = s.execute(text("SELECT (SELECT count(*) FROM grid), (SELECT count(*) FROM incident)")).one()
    log(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    log(f"dataset {args.scale}: {counts[0]:,} grids, {counts[1]:,} incidents; centre {cx:.4f}, {cy:.4f}")
    areas = {"grid": grid, "community": community, "street": community[:9] + "000", "district": community[:6] + "000000"}
    cases = [("KPI everywhere", "/api/kpi", {})]
    for z in (11, 12, 13):
        box = view_bbox(cx, cy, z)
        cases.append((f"KPI view z{z}", "/api/kpi?bbox=" + ",".join(f"{v:.6f}" for v in box), {"bbox": box}))
    cases += [(f"KPI {lv}", f"/api/kpi?area={code}", {"code": code}) for lv, code in areas.items()]
    cases += [(f"panel {lv}", f"/api/areas/{code}/summary", {"summary": code}) for lv, code in areas.items()]

    token = bench_token(Session)
    proc, base = start_server(128, Path(os.environ["GISGRID_HOME"]) / "serve-figures.log")
    http = requests.Session()
    http.headers.update({"Authorization": f"Bearer {token}"})
    rows = []
    try:
        log(f"\n{'selection':<18} {'anchor p50':>11} {'served p50':>11} {'×':>6}  same figures  received")
        with Session() as s:
            s.execute(text("SET jit = off"))
            for label, url, kw in cases:
                def fresh():
                    if "summary" in kw:
                        out = summaries.summary(s, kw["summary"], admin, fresh=True)
                        out.pop("id")
                        return out
                    return summaries.kpi(s, admin, fresh=True, **kw)

                fresh()
                timed_get(http, base + url)
                anchor, served = [], []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    want = fresh()
                    anchor.append(time.perf_counter() - t0)
                    dt, r = timed_get(http, base + url)
                    served.append(dt)
                got = r.json()
                # "overdue" moves as deadlines pass between the two counts: compared apart
                same = {k: v for k, v in got.items() if k != "overdue"} == \
                    {k: v for k, v in want.items() if k != "overdue"} and abs(got["overdue"] - want["overdue"]) <= 2
                a, b = statistics.median(anchor), statistics.median(served)
                rows.append((label, a, b, same))
                log(f"{label:<18} {a * 1e3:>9.1f}ms {b * 1e3:>9.1f}ms {a / b:>6.1f}  {'yes' if same else 'NO':>12}  "
                    f"{got['received']:>8,}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    kpis = [r for r in rows if r[0].startswith("KPI")]
    log(f"\nKPI strip: served p50 {min(r[2] for r in kpis) * 1e3:.0f}–{max(r[2] for r in kpis) * 1e3:.0f} ms over "
        f"{len(kpis)} selections (counted from the incidents: {min(r[1] for r in kpis) * 1e3:.0f}–"
        f"{max(r[1] for r in kpis) * 1e3:.0f} ms); side panel: {', '.join(f'{r[0][6:]} {r[2] * 1e3:.0f} ms' for r in rows if r[0].startswith('panel'))}")
    log(f"every selection gives the same figures both ways: {'yes' if all(r[3] for r in rows) else 'NO'}")
    log(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
