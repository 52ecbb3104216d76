"""CPU per tile request of the web app in-process, for this tree beside another revision.

    GISGRID_HOME=/tmp/gg-bench GISGRID_PG_FAST=1 .venv/bin/python bench/tile_cpu.py [--against REV]
        [--requests 200] [--rounds 5] [--scale city|district|demo]

What a tile request costs the app besides its SQL, without any server (``bench/tiles.py``'s
throughput and latencies move with whatever else the 2 shared cores run; the CPU a request
costs the app much less). Through Flask's test client, with an admin API token (the principal
cache live, as under ``gisgrid serve``), at the zoom-14 incident tile of the city centre:

* ``/api/me``: the authenticated request path alone (the HTTP floor of ``bench/tiles.py``);
* a cached tile (an app with the tile cache on, after one warm-up), and its 304 revalidation;
* an uncached tile (an app with the cache off): the statement's server time is not counted
  (``time.process_time`` of this process only), its client side is.

Each tree runs in a process of its own (``--worker``), importing gisgrid from that tree, against
the same database (``bench/link.py``'s loader). ``--against REV`` checks REV out into a temporary
git worktree; the trees alternate, each figure is the best of ``--rounds`` rounds of
``--requests`` requests. ``--profile`` prints cProfile's top functions of this tree's cached
tile and 304 instead.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from request_cpu import source_trees  # noqa: E402  (this tree and another revision's worktree)

KINDS = ("api_me", "cached", "r304", "uncached")


def worker(tree: str, token: str, url: str, n: int, rounds: int, profile: bool = False) -> dict:
    """In a process of its own: gisgrid from ``tree``; best CPU ms per request of each kind."""
    sys.path.insert(0, tree)
    import gisgrid
    from gisgrid.web import create_app

    assert gisgrid.__file__.startswith(tree), gisgrid.__file__
    apps = {"cached": create_app({"tile_cache_mb": 64}), "uncached": create_app({"tile_cache_mb": 0})}
    for app in apps.values():
        cache = app.extensions["gisgrid"].get("principals")
        if cache is not None:               # remembered callers, as under gisgrid serve
            cache.listen()
            cache.wait_live()
    h = {"Authorization": f"Bearer {token}", "Accept-Encoding": "gzip"}
    cached, uncached = apps["cached"].test_client(), apps["uncached"].test_client()
    etag = cached.get(url, headers=h).headers["ETag"]

    def call(client, path, headers, status):
        def run():
            r = client.get(path, headers=headers)
            assert r.status_code == status, (r.status_code, r.data[:300])
        return run

    calls = {"api_me": call(cached, "/api/me", h, 200), "cached": call(cached, url, h, 200),
             "r304": call(cached, url, {**h, "If-None-Match": etag}, 304), "uncached": call(uncached, url, h, 200)}
    if profile:
        import cProfile
        import io
        import pstats

        for name in ("cached", "r304", "uncached"):
            for _ in range(30):
                calls[name]()
            pr = cProfile.Profile()
            pr.enable()
            for _ in range(n):
                calls[name]()
            pr.disable()
            out = io.StringIO()
            pstats.Stats(pr, stream=out).sort_stats("tottime").print_stats(25)
            print(f"== {name}\n{out.getvalue()}", file=sys.stderr)
    out = {}
    for name, run in calls.items():
        for _ in range(20):
            run()
        best = float("inf")
        for _ in range(rounds):
            t0 = time.process_time()
            for _ in range(n):
                run()
            best = min(best, (time.process_time() - t0) / n * 1000)
        out[name] = best
    for app in apps.values():
        app.extensions["gisgrid"]["engine"].dispose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", metavar="REV", help="also measure this git revision (a temporary worktree)")
    ap.add_argument("--scale", default="city", choices=("city", "district", "demo"))
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="cProfile of this tree's cached tile and 304")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        job = json.loads(sys.stdin.read())
        print(json.dumps(worker(args.worker, job["token"], job["url"], args.requests, args.rounds, args.profile)))
        return

    import link
    import tiles as tile_bench             # bench/tiles.py: its token
    from sqlalchemy import text

    from gisgrid.layers.tiles import Tile

    engine, Session, _dsn = link.connect(args.scale)
    link.ensure_dataset(engine, Session, args.scale, force=False)
    with Session() as s:
        w, so, e, n = s.execute(text("SELECT ST_XMin(x), ST_YMin(x), ST_XMax(x), ST_YMax(x) FROM "
                                     "(SELECT ST_Extent(geom)::geometry AS x FROM grid WHERE valid_to IS NULL) q")).one()
    t = Tile.at(14, (w + e) / 2, (so + n) / 2)
    url = f"/tiles/incidents/{t.z}/{t.x}/{t.y}.pbf"
    token = tile_bench.bench_token(Session)
    engine.dispose()
    with source_trees(args.against) as trees:
        results: dict = {name: [] for name in trees}
        for _ in range(1 if args.profile else 2):     # alternate the trees: drift of the machine hits both
            for name, tree in trees.items():
                r = subprocess.run([sys.executable, __file__, "--worker", tree, "--requests", str(args.requests),
                                    "--rounds", str(args.rounds)] + (["--profile"] if args.profile else []),
                                   input=json.dumps({"token": token, "url": url}), capture_output=True, text=True,
                                   env=os.environ)
                if r.returncode:
                    sys.exit(f"{name}: {r.stderr[-3000:]}")
                if args.profile:
                    print(r.stderr)
                results[name].append(json.loads(r.stdout.strip().splitlines()[-1]))
        load = os.getloadavg()[0]
        print(f"\nCPU per request in-process (Flask test client), {url}, best of {args.rounds} × {args.requests}, "
              f"each tree {len(results['this tree'])}× alternately; load average {load:.1f}")
        print(f"{'tree':<16}" + "".join(f"{k:>12}" for k in KINDS))
        best = {name: {k: min(r[k] for r in rs) for k in KINDS} for name, rs in results.items()}
        for name, b in best.items():
            print(f"{name:<16}" + "".join(f"{b[k]:>9.3f} ms" for k in KINDS))
        if args.against:
            here, old = best["this tree"], best[args.against]
            print(f"{'this / ' + args.against:<16}" + "".join(f"{here[k] / old[k]:>11.2f}×" for k in KINDS))


if __name__ == "__main__":
    main()
