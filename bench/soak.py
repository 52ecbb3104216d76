"""Load and faults: mixed clients for minutes against `gisgrid serve`, one database restart and one
kill -9 of the web server in the middle; latency per kind, errors outside the fault windows,
and, counted in the database afterwards, lost and duplicated writes.

    .venv/bin/python bench/soak.py [--seconds 300] [--field 50] [--centre 10] [--planners 2]

Uses its own embedded cluster (``GISGRID_HOME=/tmp/gg-soak``, demo district, loaded on first use)
and ``gisgrid serve`` (gunicorn) as a subprocess group on a free loopback port. The clients:

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
GRACE_S = 5.0


class Log:
    """Every request: kind, start (s since the run began), latency (ms), outcome."""

    def __init__(self):
        self.rows, self.lock = [], threading.Lock()

    def add(self, kind, t0, ms, outcome):
        with self.lock:
            self.rows.append((kind, t0, ms, outcome))


def request(sess, method, url, log, kind, t_begin, **kw):
    import requests

    t0 = time.perf_counter()
    try:
        r = sess.request(method, url, timeout=5, **kw)
        outcome = "ok" if r.status_code < 400 else f"HTTP {r.status_code}"
    except requests.Timeout:
        r, outcome = None, "timeout"
    except requests.ConnectionError:
        r, outcome = None, "connection error"
    log.add(kind, t0 - t_begin, (time.perf_counter() - t0) * 1000, outcome)
    return r, outcome


def field(i, base, token, points, cats, stop_at, run_id, log, acked, t_begin):
    import requests

    rng = random.Random(i)
    sess = requests.Session()
    sess.headers.update({"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    seq = 0
    while time.perf_counter() < stop_at:
        seq += 1
        lon, lat = rng.choice(points)
        key = f"{run_id}-{i}-{seq}"
        body = json.dumps({"category": rng.choice(cats), "lon": lon, "lat": lat,
                           "description": f"{PREFIX}:{run_id}:{i}:{seq}"})
        give_up = time.perf_counter() + ANSWER_WITHIN_S
        while True:
            r, outcome = request(sess, "POST", base + "/api/incidents", log, "report", t_begin, data=body,
                                 headers={"Idempotency-Key": key})
            if outcome == "ok":
                acked.append((key, r.json()["code"]))
                break
            if r is not None and r.status_code < 500 and r.status_code != 429:
                break                                   # refused for good: counted as an error
            if time.perf_counter() > give_up:
                log.add("report gave up", time.perf_counter() - t_begin, 0, "gave up")
                break
            time.sleep(0.2)
    sess.close()


def centre(i, base, token, stop_at, log, t_begin):
    import requests

    sess = requests.Session()
    sess.headers.update({"Authorization": f"Bearer {token}"})
    calls = [("stats", "/api/stats?level=community"), ("incident list", "/api/incidents?limit=50")]
    n = 0
    while time.perf_counter() < stop_at:
        kind, path = calls[n % len(calls)]
        n += 1
        r, outcome = request(sess, "GET", base + path, log, kind, t_begin)
        if outcome != "ok":
            time.sleep(0.2)
    sess.close()


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


def centre_tokens(Session, n, run_id):
    from sqlalchemy import text

    from gisgrid.layers import users

    out = []
    with Session.begin() as s:
        district = s.execute(text("SELECT code FROM admin_area WHERE level = 'district' ORDER BY code LIMIT 1")).scalar()
        for i in range(n):
            name = f"soak-centre-{i:02d}"
            try:
                u = users.get(s, name)
            except Exception:  # noqa: BLE001 - NotFound
                u = users.add(s, name, "commander", [district], uuid.uuid4().hex)
            out.append(users.create_token(s, u, f"soak {run_id}", ["read"], days=1)[0])
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
    c_tokens = centre_tokens(Session, args.centre, run_id)
    engine.dispose()
    port = inc.free_port()
    base = f"http://127.0.0.1:{port}"
    logpath = home / "soak-serve.log"
    server = {"p": start_server(port, logpath)}
    wait_healthy(base)
    import requests

    spec = requests.get(base + "/api/openapi.json", timeout=10).json()["paths"]
    for kind, needle in (("patrol check-ins (field)", "checkin"), ("tiles (command centre)", "/tiles/"),
                         ("plan edits (planners)", "/plans")):
        offered = [p for p in spec if needle in p]
        inc.log(f"{kind}: " + (f"offered ({', '.join(offered[:3])})" if offered else "not offered by this API; skipped"))
    inc.log(f"run {run_id}: {args.field} field + {args.centre} command-centre clients for {args.seconds:g} s; "
            f"database restart at {0.4 * args.seconds:.0f} s, server kill -9 at {0.7 * args.seconds:.0f} s")

    log, acked = Log(), []
    t_begin = time.perf_counter()
    stop_at = t_begin + args.seconds
    threads = [threading.Thread(target=field, args=(i, base, field_tokens[i], points, cats, stop_at, run_id, log,
                                                    acked, t_begin), daemon=True) for i in range(args.field)]
    threads += [threading.Thread(target=centre, args=(i, base, c_tokens[i], stop_at, log, t_begin), daemon=True)
                for i in range(args.centre)]
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
    stored = collections.defaultdict(list)
    by_desc = collections.Counter()
    for key, code, desc, linked, events in rows:
        stored[key].append((code, linked, events))
        by_desc[desc] += 1
    lost = sum(1 for k, _ in acked if k not in stored)
    dup = sum(len(v) - 1 for v in stored.values()) + sum(n - 1 for n in by_desc.values() if n > 1)
    mismatch = sum(1 for k, code in acked if k in stored and stored[k][0][0] != code)
    unacked = len(set(stored) - {k for k, _ in acked})
    inc.log(f"\nwrites: {len(acked):,} reports acknowledged in {elapsed:.0f} s ({len(acked) / elapsed:.1f}/s); "
            f"database: {len(rows):,} rows; lost {lost}, duplicated {dup}, code differs {mismatch}, "
            f"stored but never acknowledged {unacked} (a client gave up), unlinked "
            f"{sum(1 for v in stored.values() if not v[0][1])}, without exactly one event "
            f"{sum(1 for v in stored.values() if v[0][2] != 1)}")
    inc.log(f"goal: zero lost and zero duplicated – {'met' if lost == 0 and dup == 0 else 'NOT met'}")
    os.killpg(server["p"].pid, signal.SIGTERM)
    server["p"].wait(timeout=30)


if __name__ == "__main__":
    main()
