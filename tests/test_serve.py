"""`gisgrid serve` as it runs in production (Granian, several worker processes): limits are
shared by the workers, and a kill -9 of the whole server during a burst of reports loses and
duplicates nothing once the clients retry with their idempotency keys."""
from __future__ import annotations

import http.client
import json
import re
import signal
import subprocess
import threading
import time
import uuid

import pytest
from sqlalchemy import text

from test_browser import free_port, stop
from test_browser import start as serve


def start(url: str, port: int, **env) -> subprocess.Popen:
    return serve(url, port, **{"GISGRID_WORKERS": "2", "GISGRID_COOKIE_SECURE": "0", **env})


def kill(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    """Signal the server's whole process group (the server's main process and its workers)."""
    stop(proc, sig)


def test_limits_are_shared_by_the_worker_processes(demo_url):
    """Three login attempts a minute in all, made alternately to two separate server processes
    on one database: the fourth is refused (per-process counters would allow six)."""
    import psycopg

    with psycopg.connect(demo_url.replace("+psycopg", ""), autocommit=True) as c:
        c.execute("DELETE FROM rate_limit")     # earlier tests' logins from 127.0.0.1 in this minute
    ports = [free_port(), free_port()]
    procs = [start(demo_url, p, GISGRID_LOGIN_LIMIT="3 per minute", GISGRID_WORKERS="1") for p in ports]
    try:
        codes = []
        for i in range(6):
            port = ports[i % 2]
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                c.request("GET", "/login")
                r = c.getresponse()
                token = re.search(rb'name="csrf_token" value="([^"]+)"', r.read()).group(1).decode()
                c.request("POST", "/login", body=f"username=nobody{i}&password=x&csrf_token={token}", headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Cookie": r.getheader("Set-Cookie").split(";")[0]})
                codes.append(c.getresponse().status)
            finally:
                c.close()
        assert codes == [401, 401, 401, 429, 429, 429], codes
    finally:
        for p in procs:
            kill(p, signal.SIGTERM)


def field_user(demo_url: str, prefix: str, scopes: list[str], tokens: int = 1):
    """A new field account of the demo district with ``tokens`` API tokens: (username, [(token,
    token id)], a point inside the first grid)."""
    from gisgrid.db.engine import make_engine, make_sessionmaker
    from gisgrid.layers import users

    eng = make_engine(demo_url)
    try:
        with make_sessionmaker(eng)() as s:
            district = s.execute(text("SELECT code FROM admin_area WHERE level = 'district'")).scalar()
            name = f"{prefix}-{uuid.uuid4().hex[:8]}"
            u = users.add(s, name, "field", [district], f"{prefix}-password-1")
            made = [users.create_token(s, u, f"{prefix}{i}", scopes) for i in range(tokens)]
            point = s.execute(text("SELECT ST_X(p), ST_Y(p) FROM (SELECT ST_PointOnSurface(geom) AS p FROM grid "
                                   "WHERE valid_to IS NULL ORDER BY code LIMIT 1) x")).one()
            s.commit()
            return name, [(plain, row.id) for plain, row in made], tuple(point)
    finally:
        eng.dispose()


@pytest.fixture
def field_token(demo_url):
    _, [(token, _)], (lon, lat) = field_user(demo_url, "burst", ["report", "read"])
    return token, lon, lat


def test_kill_9_during_a_burst_loses_and_duplicates_nothing(demo_url, field_token):
    token, lon, lat = field_token
    port = free_port()
    run = uuid.uuid4().hex[:8]
    proc = {"p": start(demo_url, port, GISGRID_REPORT_LIMIT="100000 per minute")}
    acked: dict[str, str] = {}
    lock = threading.Lock()
    stop_at = time.monotonic() + 8

    def client(n: int):
        seq = 0
        while time.monotonic() < stop_at:
            seq += 1
            key = f"{run}-{n}-{seq}"
            body = json.dumps({"category": "sanitation", "lon": lon, "lat": lat, "description": f"burst:{key}"})
            for _ in range(60):          # retry the SAME request with the SAME key until it is acknowledged
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                try:
                    c.request("POST", "/api/incidents", body=body, headers={
                        "Authorization": f"Bearer {token}", "Content-Type": "application/json",
                        "Idempotency-Key": key})
                    r = c.getresponse()
                    data = r.read()
                    if r.status in (200, 201):
                        with lock:
                            acked[key] = json.loads(data)["code"]
                        break
                    assert r.status >= 500 or r.status == 429, (r.status, data[:300])
                except (OSError, http.client.HTTPException):
                    pass        # no whole answer (the server was killed mid-response): retry
                finally:
                    c.close()
                time.sleep(0.25)
            else:
                raise AssertionError(f"report {key} never acknowledged")

    errors = []

    def guarded(n: int):
        try:
            client(n)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(3)
        assert acked, "no report acknowledged before the kill"
        kill(proc["p"])                                   # kill -9 the master and every worker
        proc["p"] = start(demo_url, port, GISGRID_REPORT_LIMIT="100000 per minute")
        for t in threads:
            t.join(timeout=120)
    finally:
        kill(proc["p"], signal.SIGTERM)
    assert not errors, errors
    from gisgrid.db.engine import make_engine

    eng = make_engine(demo_url)
    try:
        with eng.connect() as c:
            rows = c.execute(text("SELECT i.idempotency_key, i.code, l.grid_id FROM incident i "
                                  "LEFT JOIN incident_link l ON l.id = i.id WHERE i.description LIKE :p"),
                             {"p": f"burst:{run}-%"}).all()
    finally:
        eng.dispose()
    stored = {}
    for key, code, grid_id in rows:
        assert key not in stored, f"duplicate report for key {key}"
        assert grid_id is not None, f"{code} not linked"
        stored[key] = code
    assert len(acked) > 20
    lost = {k for k in acked if k not in stored}
    assert not lost, f"acknowledged but not stored: {sorted(lost)[:5]}"
    assert all(stored[k] == acked[k] for k in acked), "a retry got another incident's code"
    assert set(stored) == set(acked), "stored but never acknowledged (a client gave up)"
    assert re.fullmatch(r"SJ\d{15}", next(iter(stored.values())))


def test_workers_remember_a_token_and_forget_it_when_revoked_or_disabled(demo_url):
    """A worker answers a known token from memory (a request succeeds while another transaction
    holds an exclusive lock on api_token and app_user), and a revocation or a disabled account
    made by another process (the CLI) is refused at once after it commits: no time-to-live."""
    import psycopg

    from test_cli_accounts import run

    name, tokens, _ = field_user(demo_url, "cache", ["read"], tokens=2)
    port = free_port()
    proc = start(demo_url, port, GISGRID_WORKERS="1")

    def status(plain: str, timeout: float = 10) -> int:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            c.request("GET", "/api/categories", headers={"Authorization": f"Bearer {plain}"})
            r = c.getresponse()
            r.read()
            return r.status
        finally:
            c.close()

    def refused_soon(plain: str) -> list[int]:
        seen = [status(plain)]
        deadline = time.monotonic() + 3        # the notification is delivered at commit; allow for scheduling
        while seen[-1] != 401 and time.monotonic() < deadline:
            time.sleep(0.05)
            seen.append(status(plain))
        return seen

    try:
        (first, first_id), (second, _) = tokens
        deadline = time.monotonic() + 10       # the worker's listener connects after the worker starts
        while status(first) == 200 and time.monotonic() < deadline:
            with psycopg.connect(demo_url.replace("+psycopg", "")) as locker:
                locker.execute("LOCK TABLE api_token, app_user IN ACCESS EXCLUSIVE MODE")
                try:
                    if status(first, timeout=2) == 200:
                        break               # answered from memory: the tables could not be read
                except OSError:
                    pass                    # not remembered yet (listener not up): the request waited
        else:
            raise AssertionError("a known token was never answered without reading api_token")
        r = run(demo_url, "user", "token", "revoke", str(first_id))
        assert r.returncode == 0, r.stderr
        assert refused_soon(first)[-1] == 401
        assert status(second) == 200
        r = run(demo_url, "user", "disable", name)
        assert r.returncode == 0, r.stderr
        assert refused_soon(second)[-1] == 401
    finally:
        stop(proc)


def _workers(proc: subprocess.Popen) -> set[int]:
    """The pids of the server's worker processes: the main process's children."""
    import os

    kids = set()
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if ppid == proc.pid:
                kids.add(int(p))
    return kids


def test_a_worker_that_dies_is_replaced_and_the_server_keeps_answering(demo_url):
    """kill -9 of one worker (an out-of-memory kill, a crash in a C extension): the server does
    not exit, the main process starts a new worker in its place, and then every request is
    answered. (Until the new worker is up, Granian resets some new connections; the clients
    retry, as test_kill_9_during_a_burst_loses_and_duplicates_nothing shows they do.)"""
    import os
    import urllib.request

    port = free_port()
    proc = start(demo_url, port)              # 2 workers
    try:
        before = _workers(proc)
        assert len(before) == 2, before
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, "the server exited when a worker died"
            now = _workers(proc)
            if len(now) == 2 and victim not in now:
                break
            assert time.monotonic() < deadline, f"no worker replaced the killed one: {now}"
            time.sleep(0.2)
        time.sleep(2)                         # the new worker builds its app
        for _ in range(20):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                assert r.status == 200
        assert proc.poll() is None
    finally:
        kill(proc, signal.SIGTERM)


def test_sigterm_lets_a_report_in_flight_finish(demo_url, field_token):
    """A report still waiting on the database when the server is told to stop (SIGTERM, as a
    deploy or systemd does) gets its answer, and is stored, before the server exits."""
    import psycopg

    token, lon, lat = field_token
    port = free_port()
    proc = start(demo_url, port)
    key = str(uuid.uuid4())
    out = {}

    def post():
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            c.request("POST", "/api/incidents", body=json.dumps({"category": "sanitation", "lon": lon, "lat": lat,
                                                                 "description": "in flight at SIGTERM"}),
                      headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                               "Idempotency-Key": key})
            r = c.getresponse()
            out["status"], out["body"] = r.status, json.loads(r.read())
        finally:
            c.close()

    with psycopg.connect(demo_url.replace("+psycopg", "")) as locker:
        locker.execute("LOCK TABLE incident_tally IN ACCESS EXCLUSIVE MODE")   # the report's trigger waits
        t = threading.Thread(target=post)
        t.start()
        deadline = time.monotonic() + 10
        while not locker.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()[0]:
            assert time.monotonic() < deadline, "the report never reached the lock"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert proc.poll() is None, "the server exited with a request in flight"
        locker.rollback()                     # let the report through
    t.join(30)
    try:
        proc.wait(timeout=20)
    finally:
        kill(proc, signal.SIGKILL)
    assert out.get("status") == 201, out
    with psycopg.connect(demo_url.replace("+psycopg", "")) as c:
        assert c.execute("SELECT code FROM incident WHERE idempotency_key = %s", (key,)).fetchone() == (out["body"]["code"],)
