"""Field reports under load: throughput, latency and loss of POST /api/incidents.

    .venv/bin/python bench/incidents.py [--clients 50] [--seconds 60] [--smoke] [--profile N]

Uses its own embedded cluster (``GISGRID_HOME=/tmp/gg-bench-incidents``, ``GISGRID_PG_FAST=1``)
with the demo district, and 50 field users (``bench-field-NN``, role field, jurisdiction the demo
district), each with a fresh report token. Then, in one run:

* gisgrid: ``gisgrid serve`` (Granian, cores + 1 worker processes × 8 threads) as a subprocess
  on a free loopback port, with
  ``GISGRID_REPORT_LIMIT=100000 per minute`` (the default 120 per minute per user would refuse
  the load). ``--clients`` clients, each with its own keep-alive connection and user (coroutines
  in one uvloop event loop, each with a bench/keepalive.py connection: an HTTP client costs CPU
  on the same 2 cores, this one about 0.16 ms per report, aiohttp's 0.43, requests' 2), post
  reports for ``--seconds`` at deterministic random points inside the demo grids, each with a
  fresh UUID ``Idempotency-Key``; on a timeout (5 s), a connection error, a 429 or a 5xx the SAME
  request is retried with the SAME key (at most 5 attempts).
* floor: as many threads, one psycopg connection each (open from the first block to the last),
  doing the same inserts directly in SQL for the same time: one transaction of INSERT incident,
  the link row as gisgrid computes it (``linking.LOCATE_SQL``: lateral grid lookup, lowest
  code, admin codes) and the incident_event row. gisgrid and the floor take turns, in
  ``--blocks`` blocks each (default 6: 10 s of gisgrid, 10 s of the floor, …): this machine's
  speed drifts by a third from one minute to the next, and a minute of one then a minute of
  the other measured that drift as much as the two.
* gisgrid paced (``--paced-seconds``, default 30): the same clients, against the same server
  (not restarted: see bench/README.md), each posting one report every ``clients / rate``
  seconds, where rate is half the floor's throughput (the goal's), on a table emptied of the
  first runs' rows again. Posting again the moment an answer comes
  back makes latency pure queueing (mean latency = clients / throughput: 100 ms at 500/s for
  50 clients), so the p95 goal is read here, at the goal's throughput, and beside it as fast as
  answered.

Afterwards the database is checked: every acknowledged key has exactly one row (lost /
duplicated), no (client, sequence) pair has two rows, every report has its event and audit rows.
Every run first deletes the rows of earlier bench runs so it starts from the demo data.
Prints timings and ratios; never asserts on them.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

HOME = "/tmp/gg-bench-incidents"
REPORT_LIMIT = "100000 per minute"
TIMEOUT_S = 5.0
MAX_ATTEMPTS = 5
POINTS_PER_GRID = 25
SEED = 20261123
PREFIX = "bench"      # gisgrid rows: description "bench:<run>:<client>:<seq>"
FLOOR_PREFIX = "floor"


def log(*a):
    print(*a, flush=True)


def pct(values, q):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q / 100 * (len(v) - 1))))]


# -- setup ------------------------------------------------------------------------------------
def environment():
    os.environ.setdefault("GISGRID_HOME", HOME)
    os.environ.setdefault("GISGRID_PG_FAST", "1")
    os.environ["GISGRID_REPORT_LIMIT"] = os.environ.get("GISGRID_BENCH_REPORT_LIMIT", REPORT_LIMIT)
    if not (os.environ.get("GISGRID_PII_KEY") or os.environ.get("GISGRID_PII_KEY_FILE")):
        from gisgrid.pii import new_key
        os.environ["GISGRID_PII_KEY"] = new_key()
    home = Path(os.environ["GISGRID_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o755)
    return home


def gisgrid_cmd(*args):
    exe = Path(sys.executable).parent / "gisgrid"
    return [str(exe), *args] if exe.exists() else [sys.executable, "-m", "gisgrid.cli", *args]


def connect():
    from gisgrid import config
    from gisgrid.db.engine import database_url, make_engine, make_sessionmaker

    settings = config.load()
    engine = make_engine(database_url(settings))
    dsn = engine.url.render_as_string(hide_password=False).replace("postgresql+psycopg://", "postgresql://")
    return settings, engine, make_sessionmaker(engine), dsn


def ensure_demo(Session):
    from sqlalchemy import text

    try:
        with Session() as s:
            loaded = s.execute(text("SELECT count(*) FROM grid")).scalar()
        if loaded:
            from gisgrid.db import migrate

            migrate.upgrade(Session.kw["bind"])
            return "demo district already loaded (schema upgraded to the latest migration)"
    except Exception:  # noqa: BLE001 - not migrated yet
        pass
    r = subprocess.run(gisgrid_cmd("demo", "--no-serve"), capture_output=True, text=True, env=os.environ)
    if r.returncode != 0:
        sys.exit(f"gisgrid demo --no-serve failed: {r.stderr or r.stdout}")
    return r.stdout.splitlines()[0]     # the rest lists the demo accounts' passwords


def reset_bench_rows(conn) -> int:
    """Delete what earlier bench runs added, so every run starts from the demo data, indexes
    included: rebuilt, so that each run's indexes start as small as the demo's (an index keeps
    the pages earlier runs grew it to; the duplicate search's GiST index had grown to 11 MB
    where a fresh one over the same rows takes 2.7 MB)."""
    like = [f"{PREFIX}:%", f"{FLOOR_PREFIX}:%"]
    conn.execute("DELETE FROM audit_log WHERE entity = 'incident' AND entity_id IN "
                 "(SELECT id::text FROM incident WHERE description LIKE ANY(%s))", (like,))
    n = conn.execute("DELETE FROM incident WHERE description LIKE ANY(%s)", (like,)).rowcount
    for t in ("incident", "incident_link", "incident_event", "audit_log", "api_token"):
        conn.execute(f"REINDEX TABLE {t}")
        conn.execute(f"VACUUM ANALYZE {t}")
    conn.execute("CHECKPOINT")
    return n


def field_tokens(Session, n: int, run_id: str) -> list[tuple[str, str]]:
    """(username, token) for n field users of the demo district; a fresh token each run."""
    import secrets

    from sqlalchemy import text

    from gisgrid.layers import users

    out = []
    with Session.begin() as s:
        district = s.execute(text("SELECT code FROM admin_area WHERE code = '420103000000'")).scalar() or \
            s.execute(text("SELECT code FROM admin_area WHERE level = 'district' ORDER BY code LIMIT 1")).scalar()
        for i in range(n):
            name = f"bench-field-{i:02d}"
            try:
                u = users.get(s, name)
            except Exception:  # noqa: BLE001 - NotFound
                u = users.add(s, name, "field", [district], secrets.token_urlsafe(16), display_name=f"bench {i}")
            plain, _ = users.create_token(s, u, f"bench {run_id}", ["report"], days=1)
            out.append((name, plain))
    return out


def grid_points(conn) -> list[tuple[float, float]]:
    rows = conn.execute(
        "SELECT ST_X(d.geom), ST_Y(d.geom) FROM grid g, "
        "LATERAL ST_Dump(ST_GeneratePoints(g.geom, %s, %s)) d "
        "WHERE g.valid_to IS NULL ORDER BY g.code, d.path", (POINTS_PER_GRID, SEED)).fetchall()
    return [(round(x, 7), round(y, 7)) for x, y in rows]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- CPU accounting (2 cores shared by server, database and clients) -------------------------
_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            f = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(f[1]), sum(int(x) for x in f[11:15])      # ppid, utime+stime+cutime+cstime


def cpu_seconds(pid: int | None, with_children: bool = False) -> float:
    if not pid:
        return 0.0
    st = _stat(pid)
    total = st[1] if st else 0
    if with_children:       # live backends; the exited ones are in the postmaster's cutime
        for p in os.listdir("/proc"):
            if p.isdigit():
                c = _stat(int(p))
                if c and c[0] == pid:
                    total += c[1]
    return total / _TICK


class CpuMeter:
    def __init__(self, server_pid, postmaster_pid):
        self.pids = (server_pid, postmaster_pid)

    def sample(self):
        return (cpu_seconds(self.pids[0], True), cpu_seconds(self.pids[1], True), time.process_time(),
                time.perf_counter())

    @staticmethod
    def line(a, b, n: int = 0) -> str:
        """Cores busy per part between samples ``a`` and ``b``; with ``n`` (requests answered),
        also each part's CPU per request: the figure a change to one part moves, while the
        machine's own speed moves all of them (it varied by a third between runs here)."""
        wall = b[3] - a[3]
        names = [(i, name) for i, name in ((0, "server"), (1, "postgres"), (2, "bench clients")) if i or b[0]]
        out = "CPU (cores busy, of 2 on the machine): " + ", ".join(f"{name} {(b[i] - a[i]) / wall:.2f}"
                                                                     for i, name in names)
        if n:
            out += "; per request " + ", ".join(f"{name} {(b[i] - a[i]) / n * 1000:.2f} ms" for i, name in names)
        return out


# -- gisgrid over HTTP ----------------------------------------------------------------------------
class Result:
    __slots__ = ("client", "seq", "key", "status", "code", "attempts", "first_ms", "first_ok", "done_ms")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)


def _endpoint(url: str):
    """``(host, port, path)`` of an http:// URL."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    return u.hostname, u.port or 80, u.path or "/"


async def field_client(i, token, url, start_at, stop_at, run_id, points, cats, out, errors, timeout=TIMEOUT_S,
                       interval=None, offset=0.0, first_seq=0):
    """One phone: its own keep-alive connection (bench/keepalive.py, one event loop for every
    client, so the clients' own CPU stays small beside the server's on the shared cores).
    ``interval``: start a report every ``interval`` seconds from ``offset`` (the clients spread
    evenly), or at once when the last one took longer; without it, as fast as answers come back.
    ``first_seq``: the sequence number before this call's first report (a client's numbers
    continue over the blocks of one run)."""
    from keepalive import Connection, ConnectionFailed

    host, port, path = _endpoint(url)
    rng = random.Random(SEED * 1000 + i + first_seq)
    mine, errs = [], collections.Counter()
    conn = Connection(host, port, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    while time.perf_counter() < start_at:
        await asyncio.sleep(0.001)
    seq = first_seq
    next_at = start_at + offset
    while time.perf_counter() < stop_at:
        if interval:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            next_at += interval
            if time.perf_counter() >= stop_at:
                break
        seq += 1
        lon, lat = rng.choice(points)
        key = str(uuid.uuid4())
        body = json.dumps({"category": rng.choice(cats), "lon": lon, "lat": lat, "source": "patrol",
                           "description": f"{PREFIX}:{run_id}:{i}:{seq}", "accuracy_m": 5.0}).encode()
        t0 = time.perf_counter()
        first_ms = first_ok = None
        status, code, attempts = None, None, 0
        while attempts < MAX_ATTEMPTS:
            attempts += 1
            ta = time.perf_counter()
            kind = None
            try:
                async with asyncio.timeout(timeout):
                    got, data = await conn.request("POST", path, body, {"Idempotency-Key": key})
            except TimeoutError:
                kind = "timeout"
            except ConnectionFailed:
                kind = "connection error"
            else:
                if got in (200, 201):
                    status, code = got, json.loads(data).get("code")
                elif got == 429 or got >= 500:
                    kind = f"HTTP {got}"
                else:                                   # not worth a retry: record and move on
                    status, kind = got, f"HTTP {got}"
            if first_ms is None:
                first_ms, first_ok = (time.perf_counter() - ta) * 1000, kind is None
            if kind:
                errs[kind] += 1
            if status is not None:
                break
            await asyncio.sleep(0.05 * attempts)
        if status is None:
            errs["gave up after retries"] += 1
        mine.append(Result(client=i, seq=seq, key=key, status=status, code=code, attempts=attempts,
                           first_ms=first_ms, first_ok=first_ok, done_ms=(time.perf_counter() - t0) * 1000))
    conn.close()
    out.extend(mine)
    errors.update(errs)


async def health_client(url, stop_at, out):
    from keepalive import Connection, ConnectionFailed

    host, port, path = _endpoint(url)
    mine = []
    conn = Connection(host, port)
    while time.perf_counter() < stop_at:
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(TIMEOUT_S):
                ok = (await conn.request("GET", path))[0] == 200
        except (TimeoutError, ConnectionFailed):
            ok = False
        if ok:
            mine.append((time.perf_counter() - t0) * 1000)
    conn.close()
    out.extend(mine)


def run_clients(coroutines, start_at, meter):
    """Run the client coroutines in one event loop (uvloop's); sample CPU when they begin together at
    ``start_at`` and when the last has finished; the two samples."""
    async def go():
        tasks = [asyncio.ensure_future(c) for c in coroutines]
        while time.perf_counter() < start_at:
            await asyncio.sleep(0.001)
        c0 = meter.sample()
        await asyncio.gather(*tasks)
        return c0, meter.sample()
    import uvloop        # libuv's event loop: a sixth less client CPU per report than asyncio's here

    return uvloop.run(go())


def db_counters(dsn):
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_returned, "
                            "tup_fetched FROM pg_stat_database WHERE datname = current_database()").fetchone()


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class GisgridServer:
    """``gisgrid serve`` as a subprocess on a free loopback port, for the runs of one bench: the
    paced run reuses the server of the first (a server that has been up and serving, as in the
    field; a server's first second – new database connections, the first plans, callers not yet
    remembered – is not what the goal is about; see the README)."""

    def __init__(self, home):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, GISGRID_PORT=str(self.port), GISGRID_HOST="127.0.0.1")
        self.logpath = home / "serve.log"
        self.logfh = open(self.logpath, "w")
        self.proc = subprocess.Popen(gisgrid_cmd("serve"), env=env, stdout=self.logfh, stderr=subprocess.STDOUT)

    def __enter__(self):
        t0 = time.perf_counter()
        while not _answers(self.base + "/healthz"):
            if self.proc.poll() is not None:
                sys.exit(f"gisgrid serve exited ({self.proc.returncode}); see {self.logpath}")
            if time.perf_counter() - t0 > 60:
                sys.exit(f"gisgrid serve did not answer /healthz in 60 s; see {self.logpath}")
            time.sleep(0.2)
        log(f"gisgrid serve ({open(self.logpath).readline().split('(')[-1].rstrip().rstrip(')')}) up at {self.base} in "
            f"{time.perf_counter() - t0:.1f} s, "
            f"GISGRID_REPORT_LIMIT={os.environ['GISGRID_REPORT_LIMIT']!r}")
        time.sleep(1.0)                 # the workers' auth listeners connect
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.logfh.close()


def run_gisgrid(args, server, tokens, points, cats, run_id, postmaster, dsn=None, rate=None, seconds=None,
                first_seq=0):
    """The clients against ``server`` (a :class:`GisgridServer`). ``rate``: reports per second
    offered in all, spread evenly over the clients (paced); without it the clients post as fast
    as they are answered. ``seconds``: instead of ``args.seconds``. Returns the results, errors
    by kind, seconds, the CPU samples at start and end, and the pg_stat_database deltas."""
    base = server.base
    out, errors = [], collections.Counter()
    start_at = time.perf_counter() + 0.5
    stop_at = start_at + (seconds or args.seconds)
    interval = args.clients / rate if rate else None
    clients = [field_client(i, tokens[i][1], base + "/api/incidents", start_at, stop_at, run_id, points, cats,
                            out, errors, args.timeout, interval, i * (interval or 0) / args.clients, first_seq)
               for i in range(args.clients)]
    x0 = db_counters(dsn) if dsn else None
    c0, c1 = run_clients(clients, start_at, CpuMeter(server.proc.pid, postmaster))
    elapsed = c1[3] - start_at
    time.sleep(1.5)                 # backends flush their statistics at most once a second
    xacts = [b - a for a, b in zip(x0, db_counters(dsn))] if dsn else None
    return out, errors, elapsed, (c0, c1), xacts


def run_ceiling(args, server, postmaster):
    """What the server + Flask + one SELECT 1 do on this machine: GET /healthz for
    ``args.ceiling`` seconds with the same clients."""
    lat = []
    h_start = time.perf_counter() + 0.2
    h0, h1 = run_clients([health_client(server.base + "/healthz", h_start + args.ceiling, lat)
                          for _ in range(args.clients)], h_start, CpuMeter(server.proc.pid, postmaster))
    return len(lat) / (h1[3] - h0[3]), pct(lat, 50), pct(lat, 95), CpuMeter.line(h0, h1, len(lat))


def summed(pairs):
    """CPU samples ``(start, end)`` of several blocks as one pair (what :meth:`CpuMeter.line` reads)."""
    return (0.0,) * 4, tuple(sum(b[i] - a[i] for a, b in pairs) for i in range(4))


def run_bare_stack(args, points, cats, run_id):
    """bench/bare_stack.py under gisgrid serve's server with its worker settings
    (gisgrid.web.server), the same clients posting the same bodies: (acknowledged, seconds,
    latencies, CPU line, workers, threads)."""
    from gisgrid import config
    from gisgrid.web import server

    settings = config.load()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gisgrid.web.server", "bare_stack:app", str(Path(__file__).parent)],
                            env=dict(os.environ, GISGRID_HOST="127.0.0.1", GISGRID_PORT=str(port)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    workers = server.workers(settings)
    try:
        base = f"http://127.0.0.1:{port}"
        t0 = time.perf_counter()
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.perf_counter() - t0 > 30:
                    sys.exit("the bare Flask server did not start")
                time.sleep(0.2)
        out, errors = [], collections.Counter()
        start_at = time.perf_counter() + 0.5
        stop_at = start_at + args.seconds
        clients = [field_client(i, "-", base + "/api/incidents", start_at, stop_at, run_id, points, cats, out, errors,
                                args.timeout) for i in range(args.clients)]
        c0, c1 = run_clients(clients, start_at, CpuMeter(proc.pid, None))
        ok = [r for r in out if r.status == 201]
        return len(ok), c1[3] - start_at, [r.done_ms for r in ok], CpuMeter.line(c0, c1, len(ok)), workers, settings.threads
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(15)


def check_gisgrid(conn, results, run_id) -> dict:
    # joins to grouped counts, not a subquery per row: audit_log has no index on entity_id, and
    # a correlated count over it is a scan of the whole log per incident (minutes at 30,000)
    rows = conn.execute(
        "WITH i AS (SELECT id, idempotency_key, code, description FROM incident WHERE description LIKE %s), "
        "e AS (SELECT incident_id, count(*) AS n FROM incident_event WHERE incident_id IN (SELECT id FROM i) "
        "      GROUP BY incident_id), "
        "a AS (SELECT entity_id, count(*) AS n FROM audit_log WHERE entity = 'incident' AND action = 'create' "
        "      AND entity_id IN (SELECT id::text FROM i) GROUP BY entity_id) "
        "SELECT i.idempotency_key, i.code, i.description, l.grid_id IS NOT NULL, coalesce(e.n, 0), "
        "coalesce(a.n, 0) FROM i LEFT JOIN incident_link l ON l.id = i.id "
        "LEFT JOIN e ON e.incident_id = i.id LEFT JOIN a ON a.entity_id = i.id::text",
        (f"{PREFIX}:{run_id}:%",)).fetchall()
    by_key = collections.defaultdict(list)
    by_desc = collections.Counter()
    for r in rows:
        by_key[r[0]].append(r)
        by_desc[r[2]] += 1
    acked = [r for r in results if r.status in (200, 201)]
    acked_keys = {r.key for r in acked}
    return {
        "rows": len(rows),
        "acked": len(acked),
        "lost": sum(1 for r in acked if r.key not in by_key),
        "dup_key": sum(len(v) - 1 for v in by_key.values() if len(v) > 1),
        "dup_seq": sum(n - 1 for n in by_desc.values() if n > 1),
        "code_mismatch": sum(1 for r in acked if r.key in by_key and by_key[r.key][0][1] != r.code),
        "stored_unacked": sum(1 for k in by_key if k not in acked_keys),
        "unlinked": sum(1 for r in rows if not r[3]),
        "no_event": sum(1 for r in rows if r[4] != 1),
        "no_audit": sum(1 for r in rows if r[5] != 1),
    }


# -- floor: the same inserts in SQL ---------------------------------------------------------------
def floor_sql():
    from gisgrid.layers import linking

    insert = ("INSERT INTO incident (code, idempotency_key, category, description, source, reporter, state, "
              "accuracy_m, input_crs, geom) VALUES (%(code)s, %(key)s, %(cat)s, %(descr)s, 'patrol', %(rep)s, "
              "'reported', 5.0, 'EPSG:4326', ST_SetSRID(ST_MakePoint(%(x)s, %(y)s), 4326)) RETURNING id")
    link = (f"INSERT INTO incident_link (id, {', '.join(linking.COLUMNS)}) "
            f"WITH src AS (SELECT id, geom AS pt FROM incident WHERE id = %(id)s) {linking.LOCATE_SQL}")
    event = ("INSERT INTO incident_event (incident_id, actor, from_state, to_state, note) "
             "VALUES (%(id)s, %(rep)s, NULL, 'reported', '[report]')")
    return insert, link, event


def floor_client(i, dsn, pool, run_id, points, cats, out, errors, lock):
    """One floor thread: one connection for the whole bench, inserting during each window
    ``pool`` opens (:class:`FloorPool`), idle between them."""
    import psycopg

    insert, link, event = floor_sql()
    rng = random.Random(SEED * 1000 + i)
    with psycopg.connect(dsn, autocommit=True) as conn:
        seq = 0
        for start_at, stop_at in pool.windows():
            mine, errs = [], collections.Counter()
            while time.perf_counter() < start_at:
                time.sleep(0.001)
            while time.perf_counter() < stop_at:
                seq += 1
                lon, lat = rng.choice(points)
                p = {"code": f"FL{run_id}{i:03d}{seq:07d}", "key": str(uuid.uuid4()), "cat": rng.choice(cats),
                     "descr": f"{FLOOR_PREFIX}:{run_id}:{i}:{seq}", "rep": f"bench-field-{i:02d}", "x": lon, "y": lat}
                t0 = time.perf_counter()
                try:
                    with conn.transaction():
                        p["id"] = conn.execute(insert, p).fetchone()[0]
                        conn.execute(link, p)
                        conn.execute(event, p)
                except psycopg.Error as e:
                    errs[type(e).__name__] += 1
                    continue
                mine.append((p["key"], (time.perf_counter() - t0) * 1000))
            with lock:
                out.extend(mine)
                errors.update(errs)
            pool.finished()


class FloorPool:
    """The floor's threads, each with its connection open from the first window to the last
    (so no window pays for connecting), inserting only inside the windows :meth:`run` opens."""

    def __init__(self, args, dsn, points, cats, run_id):
        self.out, self.errors, self.lock = [], collections.Counter(), threading.Lock()
        self._cond = threading.Condition()
        self._window, self._generation, self._closed = None, 0, False
        self._done = threading.Semaphore(0)
        self.threads = [threading.Thread(target=floor_client, daemon=True,
                                         args=(i, dsn, self, run_id, points, cats, self.out, self.errors, self.lock))
                        for i in range(args.clients)]
        for t in self.threads:
            t.start()

    def windows(self):
        """For a thread: each window as ``(start_at, stop_at)``, until :meth:`close`."""
        seen = 0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or self._generation != seen)
                if self._closed:
                    return
                seen, window = self._generation, self._window
            yield window

    def finished(self):
        self._done.release()

    def run(self, seconds, meter):
        """One window of ``seconds``; the CPU samples at its start and once every thread is done."""
        start_at = time.perf_counter() + 0.3
        with self._cond:
            self._window, self._generation = (start_at, start_at + seconds), self._generation + 1
            self._cond.notify_all()
        while time.perf_counter() < start_at:
            time.sleep(0.001)
        c0 = meter.sample()
        for _ in self.threads:
            self._done.acquire()
        return c0, meter.sample()

    def close(self):
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self.threads:
            t.join()


def check_floor(conn, done, run_id) -> dict:
    keys = {r[0] for r in conn.execute(
        "SELECT idempotency_key FROM incident i JOIN incident_link l ON l.id = i.id WHERE i.description LIKE %s "
        "AND l.grid_id IS NOT NULL", (f"{FLOOR_PREFIX}:{run_id}:%",))}
    return {"rows": len(keys), "lost": sum(1 for k, _ in done if k not in keys)}


# -- profile: one in-process request loop ---------------------------------------------------------
def profile(Session, tokens, points, cats, n: int) -> None:
    """cProfile of n reports through app.test_client(), and the SQL statements one report runs."""
    import cProfile
    import io
    import pstats

    from sqlalchemy import event

    from gisgrid.web import create_app

    app = create_app()
    engine = app.extensions["gisgrid"]["engine"]
    stmts = collections.defaultdict(lambda: [0, 0.0])

    def before(conn, cursor, statement, parameters, context, executemany):
        conn.info["t0"] = time.perf_counter()

    def after(conn, cursor, statement, parameters, context, executemany):
        s = stmts[" ".join(statement.split())[:90]]
        s[0] += 1
        s[1] += time.perf_counter() - conn.info.pop("t0")

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    client = app.test_client()
    rng = random.Random(SEED)
    hdr = {"Authorization": f"Bearer {tokens[0][1]}"}
    run_id = "prof" + uuid.uuid4().hex[:6]

    def one(k):
        lon, lat = rng.choice(points)
        r = client.post("/api/incidents", json={"category": rng.choice(cats), "lon": lon, "lat": lat,
                                                "description": f"{PREFIX}:{run_id}:0:{k}"},
                        headers={**hdr, "Idempotency-Key": str(uuid.uuid4())})
        assert r.status_code == 201, r.get_data(as_text=True)

    for k in range(20):             # warm up: pool, caches
        one(-k - 1)
    stmts.clear()
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for k in range(n):
        one(k)
    prof.disable()
    wall = time.perf_counter() - t0
    log(f"\nprofile: {n} reports in-process via app.test_client(): {wall / n * 1000:.1f} ms each "
        f"(under cProfile), {sum(v[0] for v in stmts.values()) / n:.1f} SQL statements per report, "
        f"{sum(v[1] for v in stmts.values()) / n * 1000:.1f} ms of it waiting on SQL")
    engine.dispose()
    for order, what, n_lines in (("cumulative", "", 12), ("cumulative", "gisgrid/", 15), ("tottime", "", 12)):
        buf = io.StringIO()
        st = pstats.Stats(prof, stream=buf).sort_stats(order)
        st.print_stats(*([what] if what else []), n_lines)
        text_ = buf.getvalue()
        log(f"top by {order}" + (f" within {what}" if what else "") + ":")
        log(text_[text_.index("   ncalls"):].rstrip() if "   ncalls" in text_ else text_)
    log("SQL statements per report (ms per report, count per report), by time:")
    for sql, (cnt, secs) in sorted(stmts.items(), key=lambda kv: -kv[1][1]):
        log(f"  {secs / n * 1000:6.2f} ms  {cnt / n:4.1f}×  {sql}")


# -- main -----------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--smoke", action="store_true", help="5 clients for 5 s")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="also profile N reports in-process (cProfile, SQL per statement)")
    ap.add_argument("--timeout", type=float, default=TIMEOUT_S, help="client timeout per attempt, s (default 5)")
    ap.add_argument("--ceiling", type=float, default=10.0, metavar="S",
                    help="after the reports, S seconds of GET /healthz as the server stack's reference (0: skip)")
    ap.add_argument("--no-floor", action="store_true", help="skip the psycopg floor")
    ap.add_argument("--blocks", type=int, default=6,
                    help="gisgrid and the floor take turns in this many blocks of seconds / blocks each")
    ap.add_argument("--paced-seconds", type=float, default=30.0, metavar="S",
                    help="then S seconds with the clients paced to 0.5 × the floor's throughput, for the "
                         "latency at the goal's throughput (0: skip)")
    ap.add_argument("--no-bare-stack", dest="bare_stack", action="store_false",
                    help="skip the bare Flask + server reference")
    ap.add_argument("--keep-db", action="store_true", help="leave the cluster running at the end")
    args = ap.parse_args()
    if args.smoke:
        args.clients, args.seconds, args.ceiling = 5, 5.0, min(args.ceiling, 2.0)
        args.blocks = min(args.blocks, 2)
        args.paced_seconds = min(args.paced_seconds, 3.0)
    home = environment()
    import psycopg

    from gisgrid.db.engine import cluster_for

    settings, engine, Session, dsn = connect()
    cluster = cluster_for(settings)
    servers = contextlib.ExitStack()      # gisgrid serve, from the first run to the paced one
    try:
        log(ensure_demo(Session))
        run_id = time.strftime("%H%M%S") + uuid.uuid4().hex[:4]
        with psycopg.connect(dsn, autocommit=True) as conn:
            log(conn.execute("SELECT split_part(version(), ' on ', 1) || ', PostGIS ' || postgis_lib_version()")
                .fetchone()[0] + f"; {os.cpu_count()} cores shared by server, database and clients")
            removed = reset_bench_rows(conn)
            points = grid_points(conn)
            n_grid, n_inc = conn.execute("SELECT (SELECT count(*) FROM grid WHERE valid_to IS NULL), "
                                         "(SELECT count(*) FROM incident)").fetchone()
        from gisgrid.layers import incidents as inc_layer

        with Session() as s:
            cats = sorted(c["code"] for c in inc_layer.categories(s))
        tokens = field_tokens(Session, max(args.clients, 1), run_id)
        log(f"run {run_id}: {n_grid} grids, {len(points):,} report points ({POINTS_PER_GRID} per grid), "
            f"{n_inc:,} incidents before (removed {removed:,} rows of earlier bench runs), "
            f"{args.clients} clients × {args.seconds:g} s, timeout {args.timeout:g} s, ≤ {MAX_ATTEMPTS} attempts")
        postmaster = cluster.postmaster_pid()
        if args.profile:
            profile(Session, tokens, points, cats, args.profile)

        log(f"\ngisgrid: POST /api/incidents, {args.clients} clients (bench/keepalive.py, one keep-alive connection each)")
        server = servers.enter_context(GisgridServer(home))
        floor = None
        if not args.no_floor:
            floor = FloorPool(args, dsn, points, cats, run_id)
            servers.callback(floor.close)
        # the two alternate in blocks (this machine's speed drifts by a third from minute to
        # minute; a minute of each in turn measured the drift as much as the two)
        blocks = max(1, args.blocks)
        res, errs, g_secs, g_samples, xacts, f_samples = [], collections.Counter(), 0.0, [], None, []
        for k in range(blocks):
            out, e, secs, samples, x = run_gisgrid(args, server, tokens, points, cats, run_id, postmaster, dsn,
                                                   seconds=args.seconds / blocks, first_seq=k * 1_000_000)
            res += out
            errs.update(e)
            g_secs += secs
            g_samples.append(samples)
            xacts = x if xacts is None else [a + b for a, b in zip(xacts, x)]
            if floor is not None:
                f_samples.append(floor.run(args.seconds / blocks, CpuMeter(None, postmaster)))
        g_cpu = CpuMeter.line(*summed(g_samples), sum(1 for r in res if r.status in (200, 201)))
        ceiling = run_ceiling(args, server, postmaster) if args.ceiling > 0 else None
        with psycopg.connect(dsn, autocommit=True) as conn:
            chk = check_gisgrid(conn, res, run_id)
        ok = [r for r in res if r.status in (200, 201)]
        g_tput = len(ok) / g_secs
        done = [r.done_ms for r in ok]
        first = [r.first_ms for r in res if r.first_ok]
        log(f"  {len(ok):,} reports acknowledged in {g_secs:.1f} s ({sum(r.status == 201 for r in ok):,} × 201, "
            f"{sum(r.status == 200 for r in ok):,} × 200 replay; {sum(r.attempts > 1 for r in res):,} needed a retry)")
        log(f"  completed latency (incl. retries): p50 {pct(done, 50):.1f} ms  p95 {pct(done, 95):.1f} ms  "
            f"p99 {pct(done, 99):.1f} ms  max {max(done, default=float('nan')):.1f} ms")
        log(f"  first attempts that succeeded: p50 {pct(first, 50):.1f} ms  p95 {pct(first, 95):.1f} ms")
        log(f"  errors by kind: {dict(errs) or 'none'}")
        log(f"  {g_cpu}")
        log(f"  database check: {chk['rows']:,} rows for {chk['acked']:,} acknowledged keys; lost {chk['lost']}, "
            f"duplicated by key {chk['dup_key']}, duplicated by (client, seq) {chk['dup_seq']}, "
            f"code differs from the response {chk['code_mismatch']}, stored but never acknowledged "
            f"{chk['stored_unacked']}, unlinked {chk['unlinked']}, without their one event {chk['no_event']}, "
            f"without their one audit row {chk['no_audit']}")
        if xacts and ok:
            n = len(ok)
            log(f"  database work per acknowledged report (pg_stat_database): {xacts[0] / n:.1f} commits, "
                f"{xacts[1] / n:.1f} rollbacks, {xacts[2] / n:.1f} rows inserted, {xacts[3] / n:.1f} rows updated, "
                f"{xacts[4] / n:.0f} rows scanned")
        if ceiling:
            log(f"  reference, same server and clients, GET /healthz for {args.ceiling:g} s (no auth, one SELECT 1): "
                f"{ceiling[0]:.0f} requests/s, p50 {ceiling[1]:.1f} ms, p95 {ceiling[2]:.1f} ms; {ceiling[3]}")

        if args.bare_stack:
            n, secs, lat, cpu, w, t = run_bare_stack(args, points, cats, run_id)
            bare = n / secs
            log(f"\nreference: the web stack alone (bench/bare_stack.py: Flask parses the body and echoes it, no "
                f"database; Granian {w} workers × {t} threads, the same clients): {bare:.1f} requests/s, "
                f"p50 {pct(lat, 50):.1f} ms, p95 {pct(lat, 95):.1f} ms; {cpu}")
        if args.no_floor:
            return
        log(f"\nfloor, in turn with gisgrid ({blocks} blocks of {args.seconds / blocks:g} s each): psycopg, "
            f"{args.clients} threads, one autocommit connection each; per report one transaction "
            "of INSERT incident + INSERT incident_link (linking.LOCATE_SQL) + INSERT incident_event")
        fres, ferrs = floor.out, floor.errors
        f_secs = sum(b[3] - a[3] for a, b in f_samples)
        f_cpu = CpuMeter.line(*summed(f_samples), len(fres))
        with psycopg.connect(dsn, autocommit=True) as conn:
            fchk = check_floor(conn, fres, run_id)
        f_tput = len(fres) / f_secs
        flat = [ms for _, ms in fres]
        log(f"  {len(fres):,} reports in {f_secs:.1f} s; p50 {pct(flat, 50):.1f} ms  p95 {pct(flat, 95):.1f} ms; "
            f"errors {dict(ferrs) or 'none'}; {fchk['rows']:,} linked rows in the database, lost {fchk['lost']}")
        log(f"  {f_cpu}")

        log(f"\n{'':24s} {'reports/s':>10s} {'p50 ms':>8s} {'p95 ms':>8s}")
        log(f"{'gisgrid (HTTP)':24s} {g_tput:10.1f} {pct(done, 50):8.1f} {pct(done, 95):8.1f}")
        log(f"{'floor (psycopg SQL)':24s} {f_tput:10.1f} {pct(flat, 50):8.1f} {pct(flat, 95):8.1f}")
        log(f"{'gisgrid / floor':24s} {g_tput / f_tput:9.2f}× {pct(done, 50) / pct(flat, 50):7.2f}× "
            f"{pct(done, 95) / pct(flat, 95):7.2f}×")
        paced = None
        if args.paced_seconds > 0:
            # latency at the goal's throughput: with every client posting again the moment it is
            # answered, latency is queueing (Little's law: mean latency = clients / throughput,
            # 50 / 500 per s = 100 ms), so it says no more than the throughput does
            rate = 0.5 * f_tput
            with psycopg.connect(dsn, autocommit=True) as conn:
                reset_bench_rows(conn)      # the paced run starts from the same table as the first
            prun = run_id + "p"
            pres, perrs, p_secs, p_samples, _ = run_gisgrid(args, server, tokens, points, cats, prun, postmaster,
                                                            rate=rate, seconds=args.paced_seconds)
            with psycopg.connect(dsn, autocommit=True) as conn:
                pchk = check_gisgrid(conn, pres, prun)
            pok = [r for r in pres if r.status in (200, 201)]
            paced = [r.done_ms for r in pok]
            kept_up = len(pok) / p_secs >= 0.95 * rate
            log(f"\ngisgrid paced at the goal's throughput, 0.5 × floor = {rate:.0f} reports/s offered "
                f"({args.clients} clients, one report every {args.clients / rate * 1000:.0f} ms each, "
                f"{args.paced_seconds:g} s): {len(pok) / p_secs:.1f} reports/s answered, p50 {pct(paced, 50):.1f} ms  "
                f"p95 {pct(paced, 95):.1f} ms  p99 {pct(paced, 99):.1f} ms; errors {dict(perrs) or 'none'}; "
                f"lost {pchk['lost']}, duplicated {pchk['dup_key'] + pchk['dup_seq']}")
            log(f"  {CpuMeter.line(*p_samples, len(pok))}")
            chk = {k: chk[k] + pchk[k] for k in ("lost", "dup_key", "dup_seq")}
        if args.bare_stack:
            log(f"{'bare stack (no database)':24s} {bare:10.1f} {pct(lat, 50):8.1f} {pct(lat, 95):8.1f}")
            log(f"{'bare stack / floor':24s} {bare / f_tput:9.2f}×   (the most a Flask view under this server reaches here)")
            log(f"{'gisgrid / bare stack':24s} {g_tput / bare:9.2f}×")
        log(f"\ngisgrid vs goals ({args.clients} clients × {args.seconds:g} s):")
        if paced is not None:
            log(f"  p95 at the goal's throughput (0.5 × floor offered) {pct(paced, 95):.0f} ms (goal < 100 ms) – "
                + ("met" if pct(paced, 95) < 100 and kept_up else
                   "NOT met" + ("" if kept_up else " (answered < 95% of the offered rate: it did not keep up)")))
        else:
            log("  p95 at the goal's throughput: not measured (--paced-seconds 0)")
        log(f"  throughput {g_tput / f_tput:.2f}× floor (goal ≥ 0.5×) – {'met' if g_tput / f_tput >= 0.5 else 'NOT met'}")
        lossless = chk["lost"] == 0 and chk["dup_key"] == 0 and chk["dup_seq"] == 0
        log(f"  lost {chk['lost']}, duplicated {chk['dup_key'] + chk['dup_seq']} (goal 0 and 0) – "
            f"{'met' if lossless else 'NOT met'}")
        # printed beside the goals, as what it is: with every client posting again the moment it
        # is answered, the mean latency is clients / throughput whatever the server does
        log(f"  beside them, p95 as fast as answered: {pct(done, 95):.0f} ms (the floor's the same way "
            f"{pct(flat, 95):.0f} ms); {args.clients} clients at {g_tput:.0f} reports/s wait "
            f"{args.clients / g_tput * 1000:.0f} ms on average whatever the server does (Little's law)")
    finally:
        servers.close()
        engine.dispose()
        if not args.keep_db:
            subprocess.run(gisgrid_cmd("db", "stop"), env=os.environ, capture_output=True)
            log("cluster stopped (gisgrid db stop)")


if __name__ == "__main__":
    main()
