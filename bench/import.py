"""Importing a resident register: gisgrid's full import beside ogr2ogr + the linking UPDATE.

    GISGRID_HOME=/tmp/gg-bench GISGRID_PG_FAST=1 .venv/bin/python bench/import.py
        [--scale city|demo] [--rows N] [--buildings N] [--with-pii] [--repeat N]

Needs the generated dataset (``gisgrid generate --scale city``, about 12 minutes on 2 cores;
this script runs it when the database is empty) and GDAL's ``ogr2ogr`` (Debian ``gdal-bin``,
``scripts/bootstrap.sh bench``).

1. Writes a CSV of ``--rows`` (default 1,000,000) new residents: code, name, gender, birth
   date, and lon/lat in **GCJ-02**, at points inside the city's grids (``--with-pii`` adds ID
   numbers and phones, which gisgrid encrypts and ogr2ogr does not).
2. gisgrid: ``gisgrid import resident FILE --crs gcj02`` through the real CLI (a subprocess,
   startup included): read, validate every row, convert GCJ-02 → WGS84, check the district
   extent, COPY, insert, link to grids, audit, commit. A bulk load like this one is streamed
   (``gisgrid.io.importer._run_streamed``): checked 100,000 rows at a time while a second
   thread writes the clean chunks, all inside one savepoint, rolled back on any problem.
3. The anchor, same file, same database: ``ogr2ogr -f PostgreSQL`` with ``PG_USE_COPY=YES``
   (no conversion, no validation, no linking) into a new table, then the linking UPDATE: the
   polygon-driven join of ``gisgrid.layers.linking`` into a temp table and one ``UPDATE … FROM``.
4. Prints both times and the ratio, and whether the goal (gisgrid no slower) is met; then the
   rows/s of ``gisgrid import building FILE.gpkg`` for ``--buildings`` footprints (default
   200,000) copied from the city's buildings under new codes.

After each run the imported rows (codes ``BENCH-…``) and their audit rows are deleted and the
anchor's table dropped (not timed). No timing asserts.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from link import connect, ensure_dataset, log  # noqa: E402  (the bench cluster and dataset, shared)

GISGRID = str(Path(sys.executable).parent / "gisgrid")
LINK_COLS = ("grid_id", "grid_code", "community_code", "street_code", "district_code")


def write_csv(Session, path: Path, rows: int, with_pii: bool, rng) -> None:
    """Residents at random points inside the city's current grids, lon/lat in GCJ-02."""
    import shapely
    from sqlalchemy import text

    from gisgrid import pii
    from gisgrid.spatial import crs

    with Session() as s:
        wkb = s.execute(text("SELECT ST_AsBinary(geom) FROM grid WHERE valid_to IS NULL ORDER BY code")).scalars().all()
    grids = shapely.from_wkb([bytes(w) for w in wkb])
    pick = rng.integers(0, len(grids), rows)
    # a point in each picked grid: its representative point nudged towards a random corner of its box
    rep = shapely.point_on_surface(grids)
    box = shapely.bounds(grids)
    t = rng.uniform(0, 0.45, (rows, 2))
    cx, cy = shapely.get_x(rep)[pick], shapely.get_y(rep)[pick]
    x = cx + t[:, 0] * (box[pick, rng.integers(0, 2, rows) * 2] - cx)
    y = cy + t[:, 1] * (box[pick, 1 + rng.integers(0, 2, rows) * 2] - cy)
    inside = shapely.contains_xy(grids[pick], x, y)
    x[~inside], y[~inside] = cx[~inside], cy[~inside]
    glon, glat = crs.wgs84_to_gcj02(x, y)
    frame = pd.DataFrame({
        "code": [f"BENCH-{i:07d}" for i in range(rows)],
        "name": np.array(["张伟", "王芳", "李娜", "刘洋", "陈静", "杨磊"])[rng.integers(0, 6, rows)],
        "gender": np.array(["M", "F"])[rng.integers(0, 2, rows)],
        "birth_date": (pd.Timestamp("1940-01-01") + pd.to_timedelta(rng.integers(0, 30000, rows), unit="D"))
        .strftime("%Y-%m-%d"),
        "lon": np.round(glon, 7), "lat": np.round(glat, 7)})
    if with_pii:
        body = [f"420103{d.replace('-', '')}{i % 1000:03d}" for i, d in enumerate(frame.birth_date)]
        frame.insert(4, "id_number", [b + pii.id_check_digit(b) for b in body])
        frame.insert(5, "phone", [f"13{n:09d}" for n in rng.integers(0, 10**9, rows)])
    frame.to_csv(path, index=False)


def cleanup(Session) -> None:
    from sqlalchemy import text

    with Session.begin() as s:
        s.execute(text("DELETE FROM audit_log WHERE entity IN ('resident', 'building') AND actor LIKE 'cli:%' "
                       "AND (after->>'via' = 'import' OR action = 'import')"))
        s.execute(text("DELETE FROM resident WHERE code LIKE 'BENCH-%'"))
        s.execute(text("DELETE FROM building WHERE code LIKE 'BENCH-%'"))
        s.execute(text("DROP TABLE IF EXISTS bench_ogr_resident"))
    with Session.kw["bind"].connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for sql in ("VACUUM ANALYZE resident", "VACUUM ANALYZE building", "VACUUM ANALYZE audit_log", "CHECKPOINT"):
            conn.execute(text(sql))


def run_gisgrid(args: list[str]) -> float:
    env = dict(os.environ)
    t0 = time.perf_counter()
    r = subprocess.run([GISGRID, *args], capture_output=True, text=True, env=env)
    took = time.perf_counter() - t0
    if r.returncode != 0:
        log(r.stdout[-3000:], r.stderr[-3000:])
        raise SystemExit(f"gisgrid {' '.join(args)} failed (exit {r.returncode})")
    log("  " + r.stdout.strip().splitlines()[0])
    return took


def run_anchor(Session, dsn: str, path: Path) -> tuple[float, float]:
    """ogr2ogr with COPY into a new table, then the linking UPDATE. Returns (load s, link s)."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    url = make_url(dsn)
    q = url.query
    pg = f"PG:dbname={url.database} user={url.username or 'postgres'} host={q.get('host') or url.host}"
    cmd = ["ogr2ogr", "-f", "PostgreSQL", pg, str(path), "-nln", "bench_ogr_resident", "-overwrite",
           "-oo", "X_POSSIBLE_NAMES=lon", "-oo", "Y_POSSIBLE_NAMES=lat", "-oo", "KEEP_GEOM_COLUMNS=NO",
           "-a_srs", "EPSG:4326", "-lco", "GEOMETRY_NAME=geom", "-lco", "SPATIAL_INDEX=GIST",
           "--config", "PG_USE_COPY", "YES"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    load = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"ogr2ogr failed: {r.stderr[-2000:]}")
    t0 = time.perf_counter()
    with Session.begin() as s:
        s.execute(text("ALTER TABLE bench_ogr_resident ADD COLUMN grid_id integer, ADD COLUMN grid_code varchar(20), "
                       "ADD COLUMN community_code varchar(12), ADD COLUMN street_code varchar(12), "
                       "ADD COLUMN district_code varchar(12)"))
        s.execute(text("ANALYZE bench_ogr_resident"))
        s.execute(text(
            "CREATE TEMP TABLE bench_link ON COMMIT DROP AS SELECT DISTINCT ON (p.ogc_fid) p.ogc_fid, g.id AS grid_id, "
            "g.code AS grid_code, g.community_code, g.street_code, g.district_code FROM grid g CROSS JOIN LATERAL "
            "(SELECT ogc_fid FROM bench_ogr_resident p WHERE ST_Intersects(g.geom, p.geom) OFFSET 0) p "
            "WHERE g.valid_to IS NULL ORDER BY p.ogc_fid, g.code"))
        s.execute(text("ANALYZE bench_link"))
        s.execute(text("UPDATE bench_ogr_resident p SET " + ", ".join(f"{c} = l.{c}" for c in LINK_COLS)
                       + " FROM bench_link l WHERE p.ogc_fid = l.ogc_fid"))
    return load, time.perf_counter() - t0


def write_buildings(Session, path: Path, n: int) -> int:
    import geopandas as gpd
    import shapely
    from sqlalchemy import text

    with Session() as s:
        rows = s.execute(text("SELECT 'BENCH-' || code AS code, name, households, floors, ST_AsBinary(geom) AS wkb "
                              "FROM building ORDER BY id LIMIT :n"), {"n": n}).mappings().all()
    frame = gpd.GeoDataFrame({k: [r[k] for r in rows] for k in ("code", "name", "households", "floors")},
                             geometry=shapely.from_wkb([bytes(r["wkb"]) for r in rows]), crs="EPSG:4326")
    frame["floors"] = frame["floors"].astype("Int64")
    frame.to_file(path, engine="pyogrio", layer="building")
    return len(frame)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", default="city", choices=("city", "demo"))
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--buildings", type=int, default=200_000)
    ap.add_argument("--with-pii", action="store_true", help="ID numbers and phones in the file (gisgrid encrypts them)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    engine, Session, dsn = connect(args.scale)
    ensure_dataset(engine, Session, args.scale, args.force)
    os.environ.setdefault("GISGRID_PII_KEY_FILE", str(Path(os.environ["GISGRID_HOME"]) / "pii.key"))
    work = Path(os.environ["GISGRID_HOME"]) / "bench-import"
    work.mkdir(exist_ok=True)
    csv = work / f"residents-{args.rows}{'-pii' if args.with_pii else ''}.csv"
    rng = np.random.default_rng(20261123)
    if not csv.exists():
        t0 = time.perf_counter()
        write_csv(Session, csv, args.rows, args.with_pii, rng)
        log(f"wrote {csv} ({csv.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f} s (not timed)")
    cleanup(Session)
    ours, theirs = [], []
    for i in range(args.repeat):
        log(f"run {i + 1}/{args.repeat}")
        took = run_gisgrid(["import", "resident", str(csv), "--crs", "gcj02"])
        from sqlalchemy import text

        with Session() as s:
            n, linked = s.execute(text("SELECT count(*), count(grid_id) FROM resident LEFT JOIN resident_link USING (id) WHERE code LIKE 'BENCH-%'")).one()
        log(f"  gisgrid import: {took:.1f} s ({n:,} rows, {linked:,} linked to a grid, {n / took:,.0f} rows/s)")
        cleanup(Session)
        load, link = run_anchor(Session, dsn, csv)
        with Session() as s:
            m, mlinked = s.execute(text("SELECT count(*), count(grid_id) FROM bench_ogr_resident")).one()
        log(f"  ogr2ogr (PG_USE_COPY) {load:.1f} s + link UPDATE {link:.1f} s = {load + link:.1f} s "
            f"({m:,} rows, {mlinked:,} linked; coordinates left in GCJ-02, unvalidated)")
        cleanup(Session)
        ours.append(took)
        theirs.append(load + link)
        log(f"  run {i + 1}: ratio {took / (load + link):.2f} (gisgrid / ogr2ogr + link, this run; load average "
            f"{os.getloadavg()[0]:.1f})")
    best_ours, best_theirs = min(ours), min(theirs)
    log(f"\nresidents: gisgrid {best_ours:.1f} s vs ogr2ogr + link {best_theirs:.1f} s: ratio {best_ours / best_theirs:.2f} "
        f"(best of {args.repeat})")
    log(f"goal (gisgrid no slower than ogr2ogr + link): {'met' if best_ours <= best_theirs else 'NOT met'}")
    if args.buildings:
        gpkg = work / f"buildings-{args.buildings}.gpkg"
        if not gpkg.exists():
            write_buildings(Session, gpkg, args.buildings)
        took = run_gisgrid(["import", "building", str(gpkg)])
        log(f"buildings from GeoPackage: {args.buildings:,} in {took:.1f} s = {args.buildings / took:,.0f} rows/s "
            "(validated, linked, audited)")
        cleanup(Session)


if __name__ == "__main__":
    main()
