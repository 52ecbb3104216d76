"""CPU per request of the web app in-process, for this tree beside another revision.

    .venv/bin/python bench/request_cpu.py [--against REV] [--requests 200] [--rounds 5]

The throughput of ``bench/incidents.py`` depends on how much of the 2 shared cores the server
gets, and other work on the machine moves it. The CPU time one request costs the app does not
move much. This measures it without any server, through Flask's test client (the same for
every tree), so it shows what a change to the request path is worth:

* ``POST /api/incidents``: a field report with a bearer token (the principal cache live, as
  under ``gisgrid serve``), at the demo grids' points, a fresh ``Idempotency-Key`` each;
* ``GET /healthz``: the request path alone, with one ``SELECT 1``.

Each tree runs in a process of its own (``--worker``), importing gisgrid from that tree,
against the same database (``bench/incidents.py``'s cluster and demo district, at the current
schema). ``--against REV`` checks REV out into a temporary git worktree; the runs of the trees
alternate, and each figure is the best of ``--rounds`` rounds of ``--requests`` requests.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


@contextlib.contextmanager
def source_trees(against: str | None):
    """``{"this tree": path}``, and ``{REV: path}`` of REV checked out in a temporary git
    worktree (removed on exit) when ``against`` names one."""
    trees = {"this tree": str(HERE.parent)}
    tmp = None
    if against:
        tmp = tempfile.mkdtemp(prefix="gisgrid-rev-")
        subprocess.run(["git", "-C", str(HERE.parent), "worktree", "add", "--detach", tmp, against],
                       check=True, capture_output=True)
        trees[against] = tmp
    try:
        yield trees
    finally:
        if tmp:
            subprocess.run(["git", "-C", str(HERE.parent), "worktree", "remove", "--force", tmp], capture_output=True)


def worker(tree: str, token: str, points: list, n: int, rounds: int) -> dict:
    """In a process of its own: gisgrid from ``tree``; best CPU ms per request of each kind."""
    import random
    import uuid

    sys.path.insert(0, tree)
    import gisgrid
    from gisgrid.web import create_app

    assert gisgrid.__file__.startswith(tree), gisgrid.__file__
    app = create_app()
    cache = app.extensions["gisgrid"].get("principals")
    if cache is not None:                   # remembered callers, as under gisgrid serve
        cache.listen()
        cache.wait_live()
    client = app.test_client()
    rng = random.Random(1)

    def report():
        lon, lat = rng.choice(points)
        r = client.post("/api/incidents", json={"category": "sanitation", "lon": lon, "lat": lat, "source": "patrol",
                                                "description": "bench:cpu", "accuracy_m": 5.0},
                        headers={"Idempotency-Key": str(uuid.uuid4()), "Authorization": f"Bearer {token}"})
        assert r.status_code == 201, r.data[:300]

    def healthz():
        assert client.get("/healthz").status_code == 200

    out = {}
    for name, call in (("report", report), ("healthz", healthz)):
        for _ in range(30):
            call()
        best = float("inf")
        for _ in range(rounds):
            t0 = time.process_time()
            for _ in range(n):
                call()
            best = min(best, (time.process_time() - t0) / n * 1000)
        out[name] = best
    app.extensions["gisgrid"]["engine"].dispose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", metavar="REV", help="also measure this git revision (a temporary worktree)")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        job = json.loads(sys.stdin.read())
        print(json.dumps(worker(args.worker, job["token"], job["points"], args.requests, args.rounds)))
        return

    import incidents as bench   # bench/incidents.py: its cluster, demo district, users and points
    import psycopg

    bench.environment()
    os.environ["GISGRID_REPORT_LIMIT"] = "100000000 per minute"
    settings, engine, Session, dsn = bench.connect()
    print(bench.ensure_demo(Session), flush=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        bench.reset_bench_rows(conn)
        points = bench.grid_points(conn)
    token = bench.field_tokens(Session, 1, "cpu")[0][1]
    engine.dispose()
    try:
        with source_trees(args.against) as trees:
            results: dict = {name: [] for name in trees}
            for _ in range(2):                  # alternate the trees: drift of the machine hits both
                for name, tree in trees.items():
                    r = subprocess.run([sys.executable, __file__, "--worker", tree, "--requests", str(args.requests),
                                        "--rounds", str(args.rounds)], input=json.dumps({"token": token, "points": points}),
                                       capture_output=True, text=True, env=os.environ)
                    if r.returncode:
                        sys.exit(f"{name}: {r.stderr[-2000:]}")
                    results[name].append(json.loads(r.stdout.strip().splitlines()[-1]))
            load = os.getloadavg()[0]
            print(f"\nCPU per request, in-process (Flask test client), best of {args.rounds} × {args.requests}, "
                  f"twice each tree alternately; load average {load:.1f}")
            print(f"{'tree':<16}{'POST /api/incidents':>22}{'GET /healthz':>16}")
            best = {name: {k: min(r[k] for r in rs) for k in ("report", "healthz")} for name, rs in results.items()}
            for name, b in best.items():
                print(f"{name:<16}{b['report']:>19.3f} ms{b['healthz']:>13.3f} ms")
            if args.against:
                here, old = best["this tree"], best[args.against]
                print(f"{'this / ' + args.against:<16}{here['report'] / old['report']:>20.2f}×"
                      f"{here['healthz'] / old['healthz']:>15.2f}×")
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            bench.reset_bench_rows(conn)


if __name__ == "__main__":
    main()
