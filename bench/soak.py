"""Load and faults: mixed clients for minutes against `gisgrid serve`, one database restart and one
kill -9 of the web server in the middle; latency per kind, errors outside the fault windows,
and, counted in the database afterwards, lost and duplicated writes.

    .venv/bin/python bench/soak.py [--seconds 300] [--field 50] [--centre 10] [--planners 2]

Uses its own embedded cluster (``GISGRID_HOME=/tmp/gg-soak``, demo district, loaded on first use)
and ``gisgrid serve`` (Granian) as a subprocess group on a free loopback port. The clients:

* field (``--field``): each posts reports (``POST /api/incidents``, a fresh ``Idempotency-Key`` a
  report) and, where the API offers them, patrol check-ins, one after the other, no think time.
  A timeout, connection error, 429 or 5xx is retried with the SAME body and key until it is
  answered (for at most 120 s).
* command centre (``--centre``): statistics (``GET /api/stats``), the incident list, and where the
  API offers them vector tiles around the district.
* planners (``--planners``): where the API offers plans, edits of a plan's cells.

At 40% of the run the database is restarted (``gisgrid db stop`` + ``gisgrid db start``); at 70%
the whole server process group is killed with SIGKILL and started again. A fault window lasts
from the fault until the service answers ``/healthz`` again, plus 5 s. Kinds the API does not
offer are named and skipped. Prints timings; never asserts on them.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import incidents as inc  # noqa: E402  (bench/incidents.py: environment, tokens, points, helpers)

HOME = "/tmp/gg-soak"
PREFIX = "soak"
ANSWER_WITHIN_S = 120
#: a plan edit re-runs every check of the plan: planners wait longer than field clients
PLANNER_TIMEOUT_S = 30
GRACE_S = 5.0


class Log:
    """Every request: kind, start (s since the run began), latency (ms), outcome."""

    def __init__(self):
        self.rows, self.lock = [], threading.Lock()

    def add(self, kind, t0, ms, outcome):
        with self.lock:
            self.rows.append((kind, t0, ms, outcome))


def request(sess, method, url, log, kind, t_begin, timeout=5, **kw):
    import requests

    t0 = time.perf_counter()
    try:
        r = sess.request(method, url, timeout=timeout, **kw)
        outcome = "ok" if r.status_code < 400 else f"HTTP {r.status_code}"
    except requests.Timeout:
        r, outcome = None, "timeout"
    except requests.RequestException:           # refused, reset, or cut off mid-body by the kill
        r, outcome = None, "connection error"
    log.add(kind, t0 - t_begin, (time.perf_counter() - t0) * 1000, outcome)
    return r, outcome


def until_answered(sess, url, body, key, log, kind, t_begin):
    """POST until answered, retrying the SAME body and key; the response or None."""
    give_up = time.perf_counter() + ANSWER_WITHIN_S
    while True:
        r, outcome = request(sess, "POST", url, log, kind, t_begin, data=body, headers={"Idempotency-Key": key})
        if outcome == "ok":
            return r
        if r is not None and r.status_code < 500 and r.status_code != 429:
            return None                                 # refused for good: counted as an error
        if time.perf_counter() > give_up:
            log.add(f"{kind} gave up", time.perf_counter() - t_begin, 0, "gave up")
            return None
        time.sleep(0.2)


def field(i, base, token, points, cats, patrol_points, stop_at, run_id, log, acked, t_begin):
    """Reports, and (where offered) a check-in at a patrol point after every second report."""
    import requests

    rng = random.Random(i)
    sess = requests.Session()
    sess.headers.update({"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    seq = 0
    while time.perf_counter() < stop_at:
        seq += 1
        key = f"{run_id}-{i}-{seq}"
        if patrol_points and seq % 3 == 0:
            code, lon, lat = rng.choice(patrol_points)
            body = json.dumps({"point": code, "lon": lon + rng.uniform(-2e-4, 2e-4), "lat": lat, "accuracy_m": 8})
            r = until_answered(sess, base + "/api/patrol/checkins", body, key, log, "check-in", t_begin)
            if r is not None:
                acked["check-in"].append((key, None))
            continue
        lon, lat = rng.choice(points)
        body = json.dumps({"category": rng.choice(cats), "lon": lon, "lat": lat,
                           "description": f"{PREFIX}:{run_id}:{i}:{seq}"})
        r = until_answered(sess, base + "/api/incidents", body, key, log, "report", t_begin)
        if r is not None:
            acked["report"].append((key, r.json()["code"]))
    sess.close()


def centre(i, base, token, tiles, stop_at, log, t_begin):
    import requests

    sess = requests.Session()
    sess.headers.update({"Authorization": f"Bearer {token}"})
    calls = [("stats", "/api/stats?level=community"), ("incident list", "/api/incidents?limit=50")]
    calls += [("tile", t) for t in random.Random(i).sample(tiles, min(len(tiles), 40))]
    n = 0
    while time.perf_counter() < stop_at:
        kind, path = calls[n % len(calls)]
        n += 1
        r, outcome = request(sess, "GET", base + path, log, kind, t_begin)
        if outcome != "ok":
            time.sleep(0.2)
    sess.close()


def planner(i, base, token, scope, stop_at, log, t_begin):
    """A draft plan of a community; then, over and over: split a cell through its middle
    (with the cell's version), and undo it."""
    import requests
    import shapely
    from shapely.geometry import LineString, shape

    sess = requests.Session()
    sess.headers.update({"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    r, outcome = request(sess, "POST", base + "/api/plans", log, "plan create", t_begin,
                         data=json.dumps({"scope": scope, "name": f"soak planner {i}"}))
    if outcome != "ok":
        return
    plan = r.json()["id"]
    n = 0
    while time.perf_counter() < stop_at:
        n += 1
        r, outcome = request(sess, "GET", f"{base}/api/plans/{plan}", log, "plan read", t_begin, PLANNER_TIMEOUT_S)
        if outcome != "ok":
            time.sleep(0.5)
            continue
        cells = r.json()["cells"]          # GeoJSON features with code and version
        cell = cells[(n + i) % len(cells)]
        geom = shape(cell["geometry"])
        minx, miny, maxx, maxy = geom.bounds
        cx = shapely.centroid(geom).x
        line = LineString([(cx, miny - 0.001), (cx, maxy + 0.001)])
        code, version = cell["properties"]["code"], cell["properties"]["version"]
        r, outcome = request(sess, "POST", f"{base}/api/plans/{plan}/edits", log, "plan edit", t_begin, PLANNER_TIMEOUT_S,
                             data=json.dumps({"op": "split", "code": code, "versions": {code: version},
                                              "line": line.__geo_interface__}))
        if outcome == "ok":
            request(sess, "POST", f"{base}/api/plans/{plan}/undo", log, "plan undo", t_begin, PLANNER_TIMEOUT_S,
                    data="{}")
        else:
            time.sleep(0.5)
    sess.close()


def tiles_around(conn, zooms=(12, 14, 16), per_zoom=30) -> list[str]:
    """Tile URLs of every layer at ``zooms`` around the middle of the grids."""
    import math

    lon, lat = conn.execute("SELECT ST_X(c), ST_Y(c) FROM (SELECT ST_Centroid(ST_Extent(geom)::geometry) AS c "
                            "FROM grid WHERE valid_to IS NULL) x").fetchone()
    out = []
    for z in zooms:
        n = 2 ** z
        x0 = int((lon + 180) / 360 * n)
        y0 = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)
        side = max(1, int(math.sqrt(per_zoom)))
        for layer in ("grids", "incidents", "buildings", "patrol_points"):
            out += [f"/tiles/{layer}/{z}/{x0 + dx}/{y0 + dy}.pbf" for dx in range(-side // 2, side // 2 + 1)
                    for dy in range(-side // 2, side // 2 + 1)]
    return out


def wait_healthy(base, timeout=120) -> float:
    import requests

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        try:
            if requests.get(base + "/healthz", timeout=2).status_code == 200:
                return time.perf_counter()
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{base} did not answer /healthz within {timeout} s")


def start_server(port, logpath):
    env = dict(os.environ, GISGRID_PORT=str(port), GISGRID_HOST="127.0.0.1")
    return subprocess.Popen(inc.gisgrid_cmd("serve"), env=env, stdout=open(logpath, "a"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def role_tokens(Session, role, scopes, n, run_id):
    """Tokens for n users of ``role`` over the district."""
    from sqlalchemy import text

    from gisgrid.layers import users

    out = []
    with Session.begin() as s:
        district = s.execute(text("SELECT code FROM admin_area WHERE level = 'district' ORDER BY code LIMIT 1")).scalar()
        for i in range(n):
            name = f"soak-{role}-{i:02d}"
            try:
                u = users.get(s, name)
            except Exception:  # noqa: BLE001 - NotFound
                u = users.add(s, name, role, [district], uuid.uuid4().hex)
            out.append(users.create_token(s, u, f"soak {run_id}", scopes, days=1)[0])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--field", type=int, default=50)
    ap.add_argument("--centre", type=int, default=10)
    ap.add_argument("--planners", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("GISGRID_HOME", HOME)
    home = inc.environment()
    import psycopg

    settings, engine, Session, dsn = inc.connect()
    inc.log(inc.ensure_demo(Session))
    run_id = time.strftime("%H%M%S") + uuid.uuid4().hex[:4]
    with psycopg.connect(dsn, autocommit=True) as conn:
        points = inc.grid_points(conn)
    from gisgrid.layers import incidents as layer

    with Session() as s:
        cats = sorted(c["code"] for c in layer.categories(s))
    field_tokens = [t for _, t in inc.field_tokens(Session, args.field, run_id)]
    c_tokens = role_tokens(Session, "commander", ["read"], args.centre, run_id)
    p_tokens = role_tokens(Session, "planner", ["read", "plan"], args.planners, run_id)
    engine.dispose()
    port = inc.free_port()
    base = f"http://127.0.0.1:{port}"
    logpath = home / "soak-serve.log"
    server = {"p": start_server(port, logpath)}
    wait_healthy(base)
    import requests

    spec = requests.get(base + "/api/openapi.json", timeout=10).json()["paths"]
    offered = {}
    for kind, needle in (("check-ins", "/api/patrol/checkins"), ("tiles", "/tiles/"), ("plans", "/api/plans")):
        offered[kind] = [p for p in spec if needle in p] or ([needle] if needle == "/tiles/" and
                                                             requests.get(base + "/tiles/index.json").status_code
                                                             in (200, 401) else [])
        inc.log(f"{kind}: " + ("offered" if offered[kind] else "not offered by this API; skipped"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        patrol_points = conn.execute("SELECT code, ST_X(geom), ST_Y(geom) FROM patrol_point").fetchall() \
            if offered["check-ins"] else []
        tiles = tiles_around(conn) if offered["tiles"] else []
        scopes = [r[0] for r in conn.execute("SELECT DISTINCT community_code FROM grid WHERE valid_to IS NULL "
                                             "ORDER BY 1 LIMIT %s", (args.planners,))] if offered["plans"] else []
    inc.log(f"run {run_id}: {args.field} field + {args.centre} command-centre clients for {args.seconds:g} s; "
            f"database restart at {0.4 * args.seconds:.0f} s, server kill -9 at {0.7 * args.seconds:.0f} s")

    log, acked = Log(), {"report": [], "check-in": []}
    t_begin = time.perf_counter()
    stop_at = t_begin + args.seconds
    threads = [threading.Thread(target=field, args=(i, base, field_tokens[i], points, cats, patrol_points, stop_at,
                                                    run_id, log, acked, t_begin), daemon=True)
               for i in range(args.field)]
    threads += [threading.Thread(target=centre, args=(i, base, c_tokens[i], tiles, stop_at, log, t_begin), daemon=True)
                for i in range(args.centre)]
    threads += [threading.Thread(target=planner, args=(i, base, p_tokens[i], scope, stop_at, log, t_begin),
                                 daemon=True) for i, scope in enumerate(scopes)]
    for t in threads:
        t.start()
    windows = []
    time.sleep(max(0.0, t_begin + 0.4 * args.seconds - time.perf_counter()))
    f0 = time.perf_counter()
    subprocess.run(inc.gisgrid_cmd("db", "stop"), check=True, capture_output=True)
    subprocess.run(inc.gisgrid_cmd("db", "start"), check=True, capture_output=True)
    windows.append(("database restart", f0 - t_begin, wait_healthy(base) + GRACE_S - t_begin))
    time.sleep(max(0.0, t_begin + 0.7 * args.seconds - time.perf_counter()))
    f0 = time.perf_counter()
    os.killpg(server["p"].pid, signal.SIGKILL)
    server["p"].wait()
    server["p"] = start_server(port, logpath)
    windows.append(("server kill -9", f0 - t_begin, wait_healthy(base) + GRACE_S - t_begin))
    for t in threads:
        t.join(timeout=args.seconds + ANSWER_WITHIN_S + 30)
    elapsed = time.perf_counter() - t_begin

    for name, a, b in windows:
        inc.log(f"fault: {name} at {a:.1f} s, service back (+{GRACE_S:g} s grace) at {b:.1f} s: window {b - a:.1f} s")
    in_window = lambda t: any(a <= t <= b for _, a, b in windows)  # noqa: E731
    by_kind = collections.defaultdict(list)
    for kind, t0, ms, outcome in log.rows:
        by_kind[kind].append((t0, ms, outcome))
    inc.log(f"\n{'kind':22s} {'requests':>9s} {'ok p50 ms':>10s} {'ok p95 ms':>10s} {'errors outside faults':>22s} "
            f"{'errors in faults':>17s}")
    for kind, rows in sorted(by_kind.items()):
        ok = [ms for _, ms, o in rows if o == "ok"]
        outside = [o for t, _, o in rows if not in_window(t)]
        err_out = sum(o != "ok" for o in outside)
        err_in = sum(o != "ok" for t, _, o in rows if in_window(t))
        inc.log(f"{kind:22s} {len(rows):9,} {inc.pct(ok, 50):10.1f} {inc.pct(ok, 95):10.1f} "
                f"{err_out:8,} of {len(outside):,} ({err_out / max(len(outside), 1):.2%}) {err_in:10,}")
    kinds = collections.Counter(o for _, _, _, o in log.rows if o != "ok")
    inc.log(f"errors by kind (all): {dict(kinds) or 'none'}")

    subprocess.run(inc.gisgrid_cmd("db", "start"), check=True, capture_output=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT i.idempotency_key, i.code, i.description, l.grid_id IS NOT NULL, "
                            "(SELECT count(*) FROM incident_event e WHERE e.incident_id = i.id) "
                            "FROM incident i LEFT JOIN incident_link l ON l.id = i.id WHERE i.description LIKE %s",
                            (f"{PREFIX}:{run_id}:%",)).fetchall()
        checkins = collections.Counter(r[0] for r in conn.execute(
            "SELECT key FROM patrol_checkin WHERE key LIKE %s", (f"{run_id}-%",))) if offered["check-ins"] else {}
    stored = collections.defaultdict(list)
    by_desc = collections.Counter()
    for key, code, desc, linked, events in rows:
        stored[key].append((code, linked, events))
        by_desc[desc] += 1
    reports = acked["report"]
    lost = sum(1 for k, _ in reports if k not in stored)
    dup = sum(len(v) - 1 for v in stored.values()) + sum(n - 1 for n in by_desc.values() if n > 1)
    mismatch = sum(1 for k, code in reports if k in stored and stored[k][0][0] != code)
    unacked = len(set(stored) - {k for k, _ in reports})
    c_lost = sum(1 for k, _ in acked["check-in"] if k not in checkins)
    c_dup = sum(n - 1 for n in checkins.values())
    if offered["check-ins"]:
        inc.log(f"\ncheck-ins: {len(acked['check-in']):,} acknowledged; database {sum(checkins.values()):,} rows; "
                f"lost {c_lost}, duplicated {c_dup}")
        lost, dup = lost + c_lost, dup + c_dup
    inc.log(f"\nwrites: {len(reports):,} reports acknowledged in {elapsed:.0f} s ({len(reports) / elapsed:.1f}/s); "
            f"database: {len(rows):,} rows; lost {lost}, duplicated {dup}, code differs {mismatch}, "
            f"stored but never acknowledged {unacked} (a client gave up), unlinked "
            f"{sum(1 for v in stored.values() if not v[0][1])}, without exactly one event "
            f"{sum(1 for v in stored.values() if v[0][2] != 1)}")
    inc.log(f"goal: zero lost and zero duplicated – {'met' if lost == 0 and dup == 0 else 'NOT met'}")
    os.killpg(server["p"].pid, signal.SIGTERM)
    server["p"].wait(timeout=30)


if __name__ == "__main__":
    main()
