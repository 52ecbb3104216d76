"""Patrol coverage at city scale: gisgrid beside plain ST_DWithin SQL, in the same run.

    GISGRID_HOME=/tmp/gg-patrol GISGRID_PG_FAST=1 .venv/bin/python bench/patrol.py [--scale city|demo]
        [--distance 300] [--repeat 3]

Loads the generated dataset if it is not there (``bench/link.py``'s loader; about 12 minutes at
city scale: 40,000 grids, 200,000 buildings, 5,000 patrol points). Then, on the same tables:

* gisgrid   ``patrol_coverage.coverage(level="grid", method="straight")``: per current grid the
            patrol points, whether the grid has none, buildings and households, and those within
            the distance of a patrol point (geography, point-driven, see the module);
* (a)       plain SQL, the same per-grid buildings/households covered, building-driven as one
            usually writes it: ``EXISTS (… ST_DWithin(p.geom, b.anchor, <degrees>) AND
            ST_DWithin(p.geom::geography, b.anchor::geography, d))`` – the degree test lets the
            GiST index of patrol_point work, geography decides;
* (b)       plain SQL with geography only, ``EXISTS (… ST_DWithin(p.geom::geography,
            b.anchor::geography, d))`` – no index can serve it; timed on a 1% sample of the
            buildings and scaled ×100 (printed as such);
* network   ``coverage(method="network")``: the same along the road layer (networkx).

The covered-building counts of every variant are compared with gisgrid's. Best of ``--repeat``
runs; no timing asserts. The goal (issue 8): gisgrid within 1.3× of the plain SQL.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ALL = ("TRUE", {})
BOX_DEG = ("(:d / (111000.0 * cos(radians(least((SELECT max(abs(ST_Y(geom))) FROM patrol_point) + 0.1, 89.0)))))")
PLAIN_INDEXED = f"""
    SELECT b.grid_code, count(*) AS buildings, count(*) FILTER (WHERE c) AS covered,
           sum(b.households) AS households, sum(b.households) FILTER (WHERE c) AS households_covered
    FROM (SELECT l.grid_code, b.households, EXISTS (
              SELECT 1 FROM patrol_point p WHERE ST_DWithin(p.geom, b.anchor, {BOX_DEG})
              AND ST_DWithin(p.geom::geography, b.anchor::geography, :d)) AS c
          FROM building b JOIN building_link l ON l.id = b.id WHERE l.grid_code IS NOT NULL) b
    GROUP BY b.grid_code"""
PLAIN_GEOGRAPHY = """
    SELECT count(*) FILTER (WHERE c) FROM (SELECT EXISTS (
        SELECT 1 FROM patrol_point p WHERE ST_DWithin(p.geom::geography, b.anchor::geography, :d)) AS c
    FROM building b JOIN building_link l ON l.id = b.id WHERE l.grid_code IS NOT NULL AND b.id % 100 = 0) b"""


def log(*a):
    print(*a, flush=True)


def best(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", choices=("city", "demo"), default="city")
    ap.add_argument("--distance", type=float, default=300.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-geography", action="store_true", help="leave out (b)")
    args = ap.parse_args()
    os.environ.setdefault("GISGRID_HOME", "/tmp/gg-patrol" if args.scale == "city" else f"/tmp/gg-patrol-{args.scale}")
    from sqlalchemy import text

    from link import connect, ensure_dataset

    from gisgrid.layers import patrol_coverage

    engine, Session, _ = connect(args.scale)
    ensure_dataset(engine, Session, args.scale, False)
    d = args.distance
    with engine.connect() as c:
        c = c.execution_options(isolation_level="AUTOCOMMIT")
        c.execute(text("VACUUM ANALYZE building, patrol_point, grid, road"))
        info = c.execute(text(
            "SELECT split_part(version(), ' on ', 1) || ', PostGIS ' || postgis_lib_version(), "
            "(SELECT count(*) FROM building), (SELECT count(*) FROM patrol_point), "
            "(SELECT count(*) FROM grid WHERE valid_to IS NULL), (SELECT count(*) FROM road)")).one()
    log(f"{info[0]}, {os.cpu_count()} cores; {info[1]:,} buildings, {info[2]:,} patrol points, "
        f"{info[3]:,} current grids, {info[4]:,} roads; distance {d:g} m; best of {args.repeat}")

    def gisgrid(method):
        def run():
            with Session() as s:
                return patrol_coverage.coverage(s, ALL, ALL, ALL, level="grid", distance_m=d, method=method)
        return run

    def plain():
        with Session() as s:
            return s.execute(text(PLAIN_INDEXED), {"d": d}).all()

    t_g, rows_g = best(gisgrid("straight"), args.repeat)
    cov_g = sum(r["buildings_covered"] for r in rows_g)
    hh_g = sum(r["households_covered"] for r in rows_g)
    log(f"gisgrid straight      {t_g:8.2f} s   {cov_g:,} buildings covered ({hh_g:,} households), {len(rows_g):,} grids")
    t_a, rows_a = best(plain, args.repeat)
    cov_a, hh_a = sum(r[2] for r in rows_a), sum(r[4] or 0 for r in rows_a)
    log(f"(a) plain SQL indexed {t_a:8.2f} s   {cov_a:,} buildings covered ({hh_a:,} households)"
        f"{'' if (cov_a, hh_a) == (cov_g, hh_g) else '   DIFFERS from gisgrid'}")
    if not args.skip_geography:
        t0 = time.perf_counter()
        with Session() as s:
            cov_b = s.execute(text(PLAIN_GEOGRAPHY), {"d": d}).scalar()
        t_b = (time.perf_counter() - t0) * 100
        log(f"(b) plain geography   {t_b:8.2f} s   (1% sample × 100; {cov_b:,} of the sample covered)")
    t_n, rows_n = best(gisgrid("network"), 1)
    cov_n = sum(r["buildings_covered"] for r in rows_n)
    log(f"gisgrid network       {t_n:8.2f} s   {cov_n:,} buildings covered along the roads (one run)")
    ratio = t_g / t_a
    log(f"\ngisgrid / plain SQL (a): {ratio:.2f}×  goal ≤ 1.3×: {'met' if ratio <= 1.3 else 'NOT met'}")
    if not args.skip_geography:
        log(f"plain geography (b) / gisgrid: {t_b / t_g:.1f}×")
    log(f"network / straight: {t_n / t_g:.1f}×")


if __name__ == "__main__":
    main()
