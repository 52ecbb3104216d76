"""What the per-grid tallies (migration 0011) cost a field report: the one-statement report
(``gisgrid.layers.incidents._report_sql``: incident, link, event, audit, the answer) run back to back by
``--threads`` psycopg connections for ``--seconds``, with the tally triggers and the open-deadline
index, then without them (the triggers disabled and the index dropped for the round, then back),
alternated ``--rounds`` times. Prints reports/s and p50/p95 of each. At the end the bench rows
are deleted and the tally is counted afresh (the rounds without triggers did not count theirs).

    GISGRID_HOME=/tmp/gg-6-inc GISGRID_PG_FAST=1 .venv/bin/python bench/tally_cost.py [--threads 8] [--seconds 10] [--rounds 2]

Uses the demo district (``bench/incidents.py`` loads it into its cluster); its rows are
deleted at the end (descriptions ``tallycost:…``).
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiles import psycopg_sql  # noqa: E402

PREFIX = "tallycost"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--without", choices=("all", "triggers", "index"), default="all",
                    help="what the rounds without take away (default: the triggers and the index)")
    args = ap.parse_args()
    import psycopg

    from gisgrid.config import load
    from gisgrid.db.engine import database_url
    from gisgrid.layers import incidents

    dsn = database_url(load()).replace("postgresql+psycopg", "postgresql")
    sql = psycopg_sql(" ".join(incidents._report_sql(False).split()))
    with psycopg.connect(dsn, autocommit=True) as c:
        points = c.execute("SELECT ST_X(p), ST_Y(p) FROM (SELECT ST_PointOnSurface(geom) AS p FROM grid "
                           "WHERE valid_to IS NULL) q").fetchall()
        triggers = c.execute("SELECT tgname, tgrelid::regclass::text FROM pg_trigger WHERE tgname LIKE 'tally_%' "
                             "AND tgrelid IN ('incident'::regclass, 'incident_link'::regclass)").fetchall()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {len(points)} grids, "
          f"{len(triggers)} tally triggers on incident/incident_link; {args.threads} threads × {args.seconds:.0f} s")

    def run(label: str, drop: bool) -> float:
        stop, lat, lock = time.perf_counter() + args.seconds, [], threading.Lock()
        holder = None
        if drop:
            holder = psycopg.connect(dsn)
            for name, table in triggers if args.without != "index" else ():
                holder.execute(f"ALTER TABLE {table} DISABLE TRIGGER {name}")
            if args.without != "triggers":
                holder.execute("DROP INDEX ix_incident_open_deadline")
            holder.commit()

        def worker(i):
            rng, mine = random.Random(i), []
            with psycopg.connect(dsn, autocommit=True) as c:
                while time.perf_counter() < stop:
                    x, y = rng.choice(points)
                    t0 = time.perf_counter()
                    c.execute(sql, {"key": str(uuid.uuid4()), "cat": "noise", "descr": f"{PREFIX}:{i}", "addr": None,
                                    "src": "patrol", "rep": "bench", "acc": None, "crs": "EPSG:4326",
                                    "x": x + rng.uniform(-1e-4, 1e-4), "y": y + rng.uniform(-1e-4, 1e-4),
                                    "actor": "bench", "m": 50.0,
                                    "s": 72 * 3600.0}, prepare=True).fetchone()
                    mine.append(time.perf_counter() - t0)
            with lock:
                lat.extend(mine)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        if holder is not None:
            for name, table in triggers if args.without != "index" else ():
                holder.execute(f"ALTER TABLE {table} ENABLE TRIGGER {name}")
            if args.without != "triggers":
                    holder.execute(f"CREATE INDEX ix_incident_open_deadline ON incident (deadline) WHERE state IN "
                               f"({', '.join(repr(s) for s in incidents.OPEN_STATES)})")
            holder.commit()
            holder.close()
        lat.sort()
        rate = len(lat) / elapsed
        print(f"  {label:<16} {rate:8.1f} reports/s   p50 {statistics.median(lat) * 1e3:6.2f} ms   "
              f"p95 {lat[int(0.95 * (len(lat) - 1))] * 1e3:6.2f} ms   ({len(lat)} reports; load "
              f"{os.getloadavg()[0]:.2f})", flush=True)
        return rate

    rates = {"with": [], "without": []}
    for _ in range(args.rounds):
        rates["with"].append(run("with tallies", False))
        rates["without"].append(run(f"without ({args.without})", True))
    w, wo = statistics.median(rates["with"]), statistics.median(rates["without"])
    print(f"median reports/s: with tallies {w:.1f}, without {wo:.1f} → ×{w / wo:.3f} "
          f"({(1 - w / wo) * 100:+.1f}% cost)")
    with psycopg.connect(dsn, autocommit=True) as c:     # leave the demo as it was
        c.execute("DELETE FROM audit_log WHERE entity = 'incident' AND entity_id IN "
                  "(SELECT id::text FROM incident WHERE description LIKE %s)", (f"{PREFIX}:%",))
        n = c.execute("DELETE FROM incident WHERE description LIKE %s", (f"{PREFIX}:%",)).rowcount
    from gisgrid.db.engine import make_engine, make_sessionmaker
    from gisgrid.layers import tallies

    with make_sessionmaker(make_engine(database_url(load()))).begin() as s:
        tallies.refresh(s, "incident")
    with psycopg.connect(dsn, autocommit=True) as c:
        bad = c.execute("SELECT count(*) FROM (SELECT grid_id, sum(n) AS n FROM incident_tally GROUP BY 1) t FULL JOIN "
                        "(SELECT grid_id, count(*) AS n FROM incident i JOIN incident_link l USING (id) "
                        "WHERE grid_id IS NOT NULL GROUP BY 1) f USING (grid_id) "
                        "WHERE coalesce(t.n, 0) <> coalesce(f.n, 0)").fetchone()[0]
    print(f"removed {n} bench reports, tally counted afresh; grids whose tally differs from a fresh count: {bad}")


if __name__ == "__main__":
    main()
