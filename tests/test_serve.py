"""`gisgrid serve` as it runs in production (gunicorn, several worker processes): limits are
shared by the workers, and a kill -9 of the whole server during a burst of reports loses and
duplicates nothing once the clients retry with their idempotency keys."""
from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from conftest import gisgrid_env
from test_browser import free_port


def start(url: str, port: int, **env) -> subprocess.Popen:
    env = {"GISGRID_WORKERS": "2", **env}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "gisgrid"), "serve"],
                            env=gisgrid_env(GISGRID_DATABASE_URL=url, GISGRID_PORT=str(port),
                                            GISGRID_COOKIE_SECURE="0", **env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).close()
            return proc
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                kill(proc)
                raise RuntimeError(f"server did not come up: {proc.stdout.read()}")
            time.sleep(0.2)


def kill(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    """Signal the server's whole process group (the gunicorn master and its workers)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(timeout=20)
    proc.stdout.close()


def test_limits_are_shared_by_the_worker_processes(demo_url):
    """Three login attempts a minute in all, made alternately to two separate server processes
    on one database: the fourth is refused (per-process counters would allow six)."""
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


@pytest.fixture
def field_token(demo_url):
    from gisgrid.db.engine import make_engine, make_sessionmaker
    from gisgrid.layers import users

    eng = make_engine(demo_url)
    try:
        with make_sessionmaker(eng)() as s:
            district = s.execute(text("SELECT code FROM admin_area WHERE level = 'district'")).scalar()
            name = f"burst-{uuid.uuid4().hex[:8]}"
            u = users.add(s, name, "field", [district], "burst-password-1")
            token, _ = users.create_token(s, u, "burst", ["report", "read"])
            lon, lat = s.execute(text("SELECT ST_X(p), ST_Y(p) FROM (SELECT ST_PointOnSurface(geom) AS p FROM grid "
                                      "WHERE valid_to IS NULL ORDER BY code LIMIT 1) x")).one()
            s.commit()
    finally:
        eng.dispose()
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
                except OSError:
                    pass
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
