"""Bulk re-linking of incident points to grids, and single-point lookup latency.

    GISGRID_HOME=/tmp/gg-bench GISGRID_PG_FAST=1 .venv/bin/python bench/link.py [--scale city|demo]
        [--repeat N] [--lookups N]

Loads the generated dataset into the bench cluster if it is not there (about 12 minutes at city
scale), then for each variant starts from the same state (one ``incident_link`` row per incident,
every link column NULL, VACUUMed; that reset is timed apart) and times it end to end, in one
committed transaction. The links live in ``incident_link`` (gisgrid.layers.linking), so every
variant writes that table:

* gisgrid   ``linking.relink(session, ("incident",))``, what ``gisgrid link`` runs per layer;
* (a)       the obvious point-driven ``UPDATE incident_link … FROM incident p, grid g WHERE
            ST_Contains(g.geom, p.geom)``;
* (b…)      plain-SQL formulations, see ``PLAIN``;
* (c)       geopandas: read (COPY), ``sjoin``, lowest code per point, COPY back + UPDATE … FROM.

Each result's ``(id, grid_id)`` is compared with gisgrid's. No timing asserts.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time

import numpy as np
import pandas as pd

COLS = ("grid_id", "grid_code", "community_code", "street_code", "district_code")
RESET = ("TRUNCATE incident_link", "INSERT INTO incident_link (id) SELECT id FROM incident")
LINK_COLS = "id, " + ", ".join(COLS)
SET_G = ("grid_id = g.id, grid_code = g.code, community_code = g.community_code, "
         "street_code = g.street_code, district_code = g.district_code")
SET_L = ", ".join(f"{c} = l.{c}" for c in COLS)
SEL_G = "g.id AS grid_id, g.code AS grid_code, g.community_code, g.street_code, g.district_code"
# polygon-driven: OFFSET 0 keeps the planner from flattening the lateral into a plain join, which
# it then runs point-driven (one grid-index probe per point), see bench/README.md
POLY = ("FROM grid g CROSS JOIN LATERAL (SELECT id FROM incident p WHERE ST_Intersects(g.geom, p.geom) "
        "OFFSET 0) p WHERE g.valid_to IS NULL")
FULL_UNDER_S = 600  # run (a) in full when projected under this, else on a 10% sample


def log(*a):
    print(*a, flush=True)


# -- setup ------------------------------------------------------------------------------------
def connect(scale: str):
    os.environ.setdefault("GISGRID_HOME", "/tmp/gg-bench" if scale == "city" else f"/tmp/gg-bench-{scale}")
    os.environ.setdefault("GISGRID_PG_FAST", "1")
    if not (os.environ.get("GISGRID_PII_KEY") or os.environ.get("GISGRID_PII_KEY_FILE")):
        try:  # the generator encrypts residents' personal data; a throw-away key for the bench
            from gisgrid.pii import new_key
            os.environ["GISGRID_PII_KEY"] = new_key()
        except ImportError:
            pass
    from gisgrid import config
    from gisgrid.db.engine import database_url, make_engine, make_sessionmaker

    settings = config.load()
    if settings.embedded:
        settings.home.mkdir(parents=True, exist_ok=True)
        settings.home.chmod(0o755)
    engine = make_engine(database_url(settings))
    dsn = engine.url.render_as_string(hide_password=False).replace("postgresql+psycopg://", "postgresql://")
    return engine, make_sessionmaker(engine), dsn


def ensure_dataset(engine, Session, scale: str, force: bool) -> None:
    from sqlalchemy import text

    from gisgrid import generate as gen
    from gisgrid.db import migrate

    migrate.upgrade(engine)
    want = gen.SCALES[scale]
    with Session() as s:
        n_grid, n_inc = s.execute(text("SELECT (SELECT count(*) FROM grid), (SELECT count(*) FROM incident)")).one()
    if n_inc == want.incidents and (scale != "city" or n_grid == 40_000):
        log(f"dataset {scale}: {n_grid:,} grids, {n_inc:,} incidents (loaded)")
        return
    if n_inc > want.incidents and not force:
        sys.exit(f"{os.environ['GISGRID_HOME']} holds a larger dataset ({n_inc:,} incidents) than {scale}; "
                 "use another GISGRID_HOME or --force-generate")
    log(f"dataset {scale} not loaded ({n_grid:,} grids, {n_inc:,} incidents): generating, replace…")
    t0 = time.perf_counter()
    tick = lambda what, n: log(f"  {time.perf_counter() - t0:6.0f} s  {what}: {n:,}")  # noqa: E731
    frames = gen.build(scale, progress=tick)
    with Session.begin() as s:
        gen.load(s, frames, replace=True, progress=tick)
    log(f"generation + load: {time.perf_counter() - t0:.0f} s")


def reset(conn) -> float:
    t0 = time.perf_counter()
    for stmt in RESET:
        conn.execute(stmt)
    conn.execute("VACUUM ANALYZE incident_link")
    conn.execute("CHECKPOINT")
    return time.perf_counter() - t0


# -- variants: each runs one committed transaction and returns rows written -----------------------
def v_gisgrid(ctx):
    import logging

    from gisgrid.layers import linking

    if not linking.log.handlers:       # print the split of gisgrid's time by step
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("    %(message)s"))
        linking.log.addHandler(handler)
        linking.log.setLevel(logging.INFO)

    with ctx["Session"].begin() as s:
        return linking.relink(s, ("incident",))["incident"]


def v_point_driven(ctx, sample: int = 1):
    where = f" AND p.id % {sample} = 0" if sample > 1 else ""
    with ctx["conn"].transaction():
        return ctx["conn"].execute(f"UPDATE incident_link l SET {SET_G} FROM incident p, grid g WHERE l.id = p.id "
                                   f"AND g.valid_to IS NULL AND ST_Contains(g.geom, p.geom){where}").rowcount


def _sql(*stmts):
    """A variant made of SQL statements in one transaction; rows = sum of the UPDATEs' rowcounts."""
    def run(ctx):
        n, parts = 0, []
        with ctx["conn"].transaction():
            for s in stmts:
                t0 = time.perf_counter()
                cur = ctx["conn"].execute(s)
                n += cur.rowcount if s.lstrip().startswith(("UPDATE", "INSERT", "CREATE TABLE ")) else 0
                parts.append(f"{' '.join(s.split()[:2 if s.startswith(('DROP', 'CREATE INDEX')) else 1])} "
                             f"{time.perf_counter() - t0:.1f}")
        log("    statements (s): " + ", ".join(p for p in parts if not p.startswith("SET")))
        return n
    return run


_SELECT_NEW = f"SELECT DISTINCT ON (p.id) p.id, {SEL_G} {POLY} ORDER BY p.id, g.code"
_CTAS = f"CREATE TEMP TABLE l ON COMMIT DROP AS {_SELECT_NEW}"
PLAIN = {
    "b1 fenced polygon-driven CTAS + ANALYZE + UPDATE": _sql(
        _CTAS, "ANALYZE l", f"UPDATE incident_link p SET {SET_L} FROM l WHERE p.id = l.id"),
    "b2 UPDATE FROM fenced polygon-driven subquery": _sql(
        f"UPDATE incident_link p SET {SET_L} FROM ({_SELECT_NEW}) l WHERE p.id = l.id"),
}


def _link_indexes(conn) -> list[tuple[str, str]]:
    return [tuple(r) for r in conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'incident_link' AND indexname LIKE 'ix_%'")]


def v_drop_indexes(ctx):
    """b3: drop the link table's indexes (but its primary key), UPDATE, re-create them."""
    ix = _link_indexes(ctx["conn"])
    return _sql(f"DROP INDEX {', '.join(n for n, _ in ix)}", _CTAS, "ANALYZE l",
                f"UPDATE incident_link p SET {SET_L} FROM l WHERE p.id = l.id", *(d for _, d in ix))(ctx)


def v_new_table(ctx):
    """b4: the rebuild in plain SQL: the polygon-driven join into a new table, the points no grid
    holds added (unlinked, no admin codes), primary key and indexes built, old table dropped and
    the new one renamed with the old index names."""
    ix = _link_indexes(ctx["conn"])
    return _sql(f"CREATE TABLE incident_link_b4 AS {_SELECT_NEW}",
                "INSERT INTO incident_link_b4 (id) SELECT id FROM incident p WHERE NOT EXISTS "
                "(SELECT 1 FROM incident_link_b4 k WHERE k.id = p.id)",
                "ALTER TABLE incident_link_b4 ADD CONSTRAINT pk_b4 PRIMARY KEY (id)",
                *(d.replace(f"INDEX {n} ON public.incident_link ", f"INDEX {n}_b4 ON public.incident_link_b4 ")
                  for n, d in ix),
                "DROP TABLE incident_link", "ALTER TABLE incident_link_b4 RENAME TO incident_link",
                "ALTER TABLE incident_link RENAME CONSTRAINT pk_b4 TO pk_incident_link",
                *(f"ALTER INDEX {n}_b4 RENAME TO {n}" for n, _ in ix), "ANALYZE incident_link")(ctx)


PLAIN["b3 b1 with the link table's indexes dropped and rebuilt"] = v_drop_indexes
PLAIN["b4 new table + indexes, swapped in (gisgrid's plan in plain SQL)"] = v_new_table
# not in place, for reference only: the join alone writing a new table (the spec's 4.7 s)
JOIN_ONLY = (f"CREATE TEMP TABLE j ON COMMIT DROP AS SELECT DISTINCT ON (p.id) p.id, {SEL_G} {POLY} "
             "ORDER BY p.id, g.code")


def v_geopandas(ctx):
    import geopandas as gpd
    import shapely

    conn = ctx["conn"]

    def copy_out(sql):
        buf = io.BytesIO()
        with conn.cursor().copy(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv)") as cp:
            for chunk in cp:
                buf.write(chunk)
        buf.seek(0)
        return buf

    t0 = time.perf_counter()
    with conn.transaction():
        pts = pd.read_csv(copy_out("SELECT id, ST_X(geom), ST_Y(geom) FROM incident"), header=None,
                          names=["id", "x", "y"])
        pts = gpd.GeoDataFrame({"id": pts.id.to_numpy()}, geometry=shapely.points(pts.x.to_numpy(), pts.y.to_numpy()),
                               crs=4326)
        grid = pd.read_csv(copy_out("SELECT id, code, community_code, street_code, district_code, ST_AsBinary(geom) "
                                    "FROM grid WHERE valid_to IS NULL"), header=None, dtype=str,
                           names=["grid_id", "grid_code", "community_code", "street_code", "district_code", "wkb"])
        grid = gpd.GeoDataFrame(grid.drop(columns="wkb"), crs=4326,
                                geometry=shapely.from_wkb(grid.wkb.str.slice(2).to_numpy()))  # '\x…' hex bytea
        t_read = time.perf_counter()
        j = gpd.sjoin(pts, grid, how="inner", predicate="intersects")
        j = j.sort_values(["id", "grid_code"]).drop_duplicates("id")[["id", *COLS]]
        t_join = time.perf_counter()
        conn.execute("CREATE TEMP TABLE l (id int, grid_id int, grid_code text, community_code text, "
                     "street_code text, district_code text) ON COMMIT DROP")
        out = io.StringIO()
        j.to_csv(out, index=False, header=False)
        with conn.cursor().copy("COPY l FROM STDIN WITH (FORMAT csv)") as cp:
            cp.write(out.getvalue())
        conn.execute("ANALYZE l")
        t_copy = time.perf_counter()
        n = conn.execute(f"UPDATE incident_link p SET {SET_L} FROM l WHERE p.id = l.id").rowcount
        log(f"    read {t_read - t0:.1f} s, sjoin + lowest code {t_join - t_read:.1f} s, "
            f"COPY in {t_copy - t_join:.1f} s, UPDATE {time.perf_counter() - t_copy:.1f} s")
        return n


# -- runner -----------------------------------------------------------------------------------
def differing(conn, sample: int = 1) -> int:
    where = f"WHERE i.id % {sample} = 0" if sample > 1 else ""
    return conn.execute(f"SELECT count(*) FROM incident_link i JOIN bench_ref r USING (id) {where} "
                        f"{'AND' if where else 'WHERE'} i.grid_id IS DISTINCT FROM r.grid_id").fetchone()[0]


def measure(ctx, label, fn, repeat, sample=1, *, start_null=True):
    secs, rows = [], 0
    for _ in range(repeat):
        r = reset(ctx["conn"]) if start_null else 0.0
        t0 = time.perf_counter()
        rows = fn(ctx)
        secs.append(time.perf_counter() - t0)
        log(f"  {label}: {secs[-1]:.2f} s, {rows:,} rows written" + (f" (reset {r:.1f} s, not counted)" if r else ""))
    best = min(secs) * sample
    if label != "gisgrid" and start_null:
        d = differing(ctx["conn"], sample)
        log(f"    differs from gisgrid on {d:,} rows" + (f" of the 1/{sample} sample" if sample > 1 else ""))
    ctx["results"].append((label, best, rows * sample, sample))
    return best


def run_point_driven(ctx, repeat, full_under_s=FULL_UNDER_S):
    import psycopg

    conn = ctx["conn"]
    reset(conn)
    with conn.transaction():  # a 1% probe, rolled back
        t0 = time.perf_counter()
        conn.execute(f"UPDATE incident_link l SET {SET_G} FROM incident p, grid g WHERE l.id = p.id "
                     "AND g.valid_to IS NULL AND ST_Contains(g.geom, p.geom) AND p.id % 100 = 0")
        projected = (time.perf_counter() - t0) * 100
        raise psycopg.Rollback()
    sample = 1 if projected <= full_under_s else 10
    n = conn.execute("SELECT count(*) FROM incident").fetchone()[0]
    log(f"(a) projected from a 1% probe: {projected:.0f} s; "
        + ("running in full" if sample == 1 else f"measured on {n // 10:,} rows, ×10"))
    measure(ctx, "(a) point-driven UPDATE…FROM ST_Contains" + (" [10% ×10]" if sample > 1 else ""),
            lambda c: v_point_driven(c, sample), repeat, sample)


def faster(other: float, gis: float) -> str:
    return f"{other / gis:.2f}× faster" if other >= gis else f"{gis / other:.2f}× slower"


def lookups(ctx, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-call ns of ``grids.grid_at`` through a Session and of a bare prepared psycopg statement."""
    import psycopg

    from gisgrid.layers import grids

    sql = str(grids.LOOKUP_SQL).replace(":lon", "%(lon)s").replace(":lat", "%(lat)s")
    x0, y0, x1, y1 = ctx["conn"].execute(
        "SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM "
        "(SELECT ST_Extent(geom) AS e FROM grid WHERE valid_to IS NULL) s").fetchone()
    rng = np.random.default_rng(20261122)
    xs, ys = rng.uniform(x0, x1, n + 100), rng.uniform(y0, y1, n + 100)
    api, bare, mismatch = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64), 0
    with ctx["Session"]() as s, psycopg.connect(ctx["dsn"]) as raw:
        cur = raw.cursor()
        for k in range(n + 100):  # the first 100: warm-up, not kept; calls interleaved
            t0 = time.perf_counter_ns()
            g = grids.grid_at(s, xs[k], ys[k])
            t1 = time.perf_counter_ns()
            cur.execute(sql, {"lon": float(xs[k]), "lat": float(ys[k])}, prepare=True)
            row = cur.fetchone()
            t2 = time.perf_counter_ns()
            if k >= 100:
                api[k - 100], bare[k - 100] = t1 - t0, t2 - t1
                mismatch += (g and g["id"]) != (row and row[0])
    log(f"lookups: {n:,} random points in the grid extent; {mismatch} answers differ between the two")
    return api, bare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", choices=("city", "demo"), default="city")
    ap.add_argument("--repeat", type=int, default=1, help="runs per variant (best kept)")
    ap.add_argument("--lookups", type=int, default=2000)
    ap.add_argument("--force-generate", action="store_true", help="replace a larger dataset in GISGRID_HOME")
    args = ap.parse_args()
    import psycopg

    engine, Session, dsn = connect(args.scale)
    ensure_dataset(engine, Session, args.scale, args.force_generate)
    conn = psycopg.connect(dsn, autocommit=True)
    ctx = {"Session": Session, "conn": conn, "dsn": dsn, "results": []}
    n_inc, n_grid = conn.execute("SELECT (SELECT count(*) FROM incident), "
                                 "(SELECT count(*) FROM grid WHERE valid_to IS NULL)").fetchone()
    log(conn.execute("SELECT split_part(version(), ' on ', 1) || ', PostGIS ' || postgis_lib_version()").fetchone()[0]
        + f", {os.cpu_count()} cores; {n_inc:,} incidents, {n_grid:,} current grids")

    log("gisgrid: linking.relink(session, ('incident',))")
    t_gis = measure(ctx, "gisgrid", v_gisgrid, args.repeat)
    conn.execute("CREATE TEMP TABLE bench_ref AS SELECT id, grid_id FROM incident_link")
    conn.execute("ALTER TABLE bench_ref ADD PRIMARY KEY (id)")
    edge, unlinked = conn.execute(
        "SELECT count(*) FILTER (WHERE l.grid_id IS NOT NULL AND NOT ST_Contains(g.geom, i.geom)), "
        "count(*) FILTER (WHERE l.grid_id IS NULL) FROM incident i LEFT JOIN incident_link l ON l.id = i.id "
        "LEFT JOIN grid g ON g.id = l.grid_id").fetchone()
    log(f"    {edge:,} incidents lie exactly on a grid boundary (ST_Contains misses them); "
        f"{unlinked:,} lie outside every grid (gisgrid also gives these admin codes; the others do not)")
    log("gisgrid, nothing changed: relink again right away")
    measure(ctx, "gisgrid, nothing changed", v_gisgrid, args.repeat, start_null=False)

    run_point_driven(ctx, args.repeat)
    for label, fn in PLAIN.items():
        log(label)
        measure(ctx, label, fn, args.repeat)
    log("ref: the fenced polygon-driven join alone into a temp table (not a re-link: nothing replaced)")
    measure(ctx, "ref join only, CREATE TEMP TABLE", _sql(JOIN_ONLY), args.repeat, start_null=False)
    log("(c) geopandas: COPY out, sjoin, lowest code, COPY in + UPDATE")
    measure(ctx, "(c) geopandas end to end", v_geopandas, args.repeat)

    res = ctx["results"]
    log(f"\n{'variant':56s} {'seconds':>9s} {'rows written':>13s} {'vs gisgrid':>11s}")
    for label, secs, rows, _ in res:
        log(f"{label:56s} {secs:9.2f} {rows:13,} {secs / t_gis:10.2f}×")
    sec = {label: secs for label, secs, *_ in res}
    a = next(v for k, v in sec.items() if k.startswith("(a)"))
    best_b = min((v, k) for k, v in sec.items() if k.startswith("b"))
    c = sec["(c) geopandas end to end"]
    log(f"\ngisgrid vs (a): {faster(a, t_gis)} (goal ≥ 8× faster) – {'met' if a / t_gis >= 8 else 'NOT met'}")
    log(f"gisgrid vs fastest plain SQL ({best_b[1].split()[0]}): {t_gis / best_b[0]:.2f}× its time "
        f"(goal ≤ 1.3×) – {'met' if t_gis / best_b[0] <= 1.3 else 'NOT met'}")
    log(f"gisgrid vs (c) geopandas: {faster(c, t_gis)} (goal: faster) – {'met' if c > t_gis else 'NOT met'}")

    api, bare = lookups(ctx, args.lookups)
    p = lambda v, q: np.percentile(v, q) / 1e6  # noqa: E731
    log(f"grids.grid_at (Session):        p50 {p(api, 50):.3f} ms  p95 {p(api, 95):.3f} ms")
    log(f"bare psycopg, prepare=True:     p50 {p(bare, 50):.3f} ms  p95 {p(bare, 95):.3f} ms")
    log(f"ratio grid_at / bare: p50 {p(api, 50) / p(bare, 50):.2f}×, p95 {p(api, 95) / p(bare, 95):.2f}× "
        "(spec anchor: bare ≈ 0.2 ms p50 over a Unix socket)")
    conn.close()
    engine.dispose()


if __name__ == "__main__":
    main()
