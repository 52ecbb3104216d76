"""The service survives a restart of its database: requests during the outage fail fast with a
readable 503, and the first request after it succeeds (connections are re-established)."""
from __future__ import annotations

import shutil
import time

import pytest

from gisgrid.db import migrate
from gisgrid.db.cluster import Cluster
from gisgrid.db.engine import make_engine, make_sessionmaker
from gisgrid.layers import users

from conftest import make_home


@pytest.fixture
def own_cluster():
    home = make_home("ggf-") / "c"
    cluster = Cluster(home, fast=True)
    cluster.start()
    yield cluster
    cluster.stop()
    shutil.rmtree(home.parent, ignore_errors=True)


def test_database_restart(own_cluster):
    from gisgrid.web import create_app

    eng = make_engine(own_cluster.url())
    migrate.upgrade(eng)
    with make_sessionmaker(eng)() as s:
        u = users.add(s, "ops", "admin", [], "ops-password-123")
        plain, _ = users.create_token(s, u, "probe", ["read", "report"])
        s.commit()
    eng.dispose()
    app = create_app({"database_url": own_cluster.url(), "home": own_cluster.home, "tile_cache_mb": 0})
    c = app.test_client()
    h = {"Authorization": f"Bearer {plain}"}
    assert c.get("/api/me", headers=h).status_code == 200
    tile = "/tiles/grids/14/13393/6710.pbf"        # drawn on a connection of the tile engine
    assert c.get(tile, headers=h).status_code == 200
    assert c.get("/healthz").status_code == 200
    import re

    token = re.search(rb'name="csrf_token" value="([^"]+)"', c.get("/login").data).group(1).decode()
    login = {"username": "nobody", "password": "wrong-password", "csrf_token": token}
    assert c.post("/login", data=login).status_code == 401    # a rate-limit counter connection now exists
    import uuid

    def report():
        return c.post("/api/incidents", json={"category": "sanitation", "lon": 114.3, "lat": 30.6},
                      headers={**h, "Idempotency-Key": str(uuid.uuid4())})
    assert report().status_code == 201      # reports run on this thread's own connection

    own_cluster.stop()
    t0 = time.monotonic()
    down = c.get("/api/me", headers=h)
    assert down.status_code == 503 and down.json["error"] == "DatabaseUnavailable"
    assert c.get("/healthz").status_code == 503
    assert c.get(tile, headers=h).status_code == 503
    assert time.monotonic() - t0 < 15          # fails fast, does not hang

    assert c.post("/login", data=login).status_code == 503
    refused = report()
    assert refused.status_code == 503 and refused.json["error"] == "DatabaseUnavailable"

    own_cluster.start()
    assert c.get("/api/me", headers=h).status_code == 200   # pool_pre_ping reconnects
    # the tile connections broke with the database: replaced (a ping after idleness, or the
    # draw, a read, run again on a new one: PooledConnections.run), so the first tile is drawn
    assert [c.get(tile, headers=h).status_code for _ in range(2)] == [200, 200]
    # the counters' connection died with the database: replaced on the next hit, not a 500
    assert c.post("/login", data=login).status_code == 401
    assert report().status_code == 201      # the report's dead connection replaced too
    assert c.get("/healthz").json == {"ok": True}
    app.extensions["gisgrid"]["engine"].dispose()


def _conn(conns):
    """The connection ``conns`` hands out next (and takes back at once)."""
    return conns.run(lambda c: c)


def _at_once(conns, n: int) -> None:
    """``n`` calls of ``conns`` from ``n`` threads, all holding their connection at once."""
    import threading

    barrier = threading.Barrier(n)
    threads = [threading.Thread(target=lambda: conns.run(lambda c: (barrier.wait(10), c.execute("SELECT 1"))))
               for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_direct_connections_replace_a_connection_that_died_while_idle(db_url):
    """A direct connection whose backend went away while it sat idle (a restart, an admin's
    pg_terminate_backend) is noticed by the ping after idleness and replaced before use; one in
    steady use is handed back as it is; two calls at once have one each; dispose closes them all."""
    import psycopg

    from gisgrid.db import engine as db_engine

    eng = make_engine(db_url)
    conns = db_engine.DirectConnections(eng, application_name="gisgrid test")
    try:
        first = _conn(conns)
        assert _conn(conns) is first and conns.run(lambda c: c.execute("SELECT 1").fetchone()) == (1,)
        with psycopg.connect(db_engine.libpq_url(eng), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (first.info.backend_pid,))
        time.sleep(db_engine.PING_AFTER_IDLE_S + 0.2)
        second = _conn(conns)
        assert second is not first and first.closed
        assert conns.run(lambda c: c.execute("SELECT 1").fetchone()) == (1,)
        inner = conns.run(lambda outer: (outer, _conn(conns)))      # a call while another holds one
        assert inner[0] is second and inner[1] is not second
        assert inner[1].info.backend_pid != second.info.backend_pid and conns.open_connections() == 2
    finally:
        eng.dispose()
    assert second.closed and inner[1].closed and conns.open_connections() == 0


def test_direct_connections_do_not_pile_up_as_threads_come_and_go(db_url):
    """The server's threads end when idle and new ones start: calls made one after another from
    40 short-lived threads share one connection (a connection per thread left each ended
    thread's connection open), and 8 threads calling at once make at most 8."""
    import threading

    from gisgrid.db import engine as db_engine

    eng = make_engine(db_url)
    conns = db_engine.DirectConnections(eng, application_name="gisgrid test")
    try:
        for _ in range(40):
            t = threading.Thread(target=lambda: conns.run(lambda c: c.execute("SELECT 1")))
            t.start()
            t.join()
        assert conns.open_connections() == 1
        _at_once(conns, 8)
        assert conns.open_connections() == 8
        for _ in range(40):
            t = threading.Thread(target=lambda: conns.run(lambda c: c.execute("SELECT 1")))
            t.start()
            t.join()
        assert conns.open_connections() == 8
    finally:
        eng.dispose()


def test_direct_connections_warm_up_before_the_first_call(engine, db_url):
    """A worker about to serve opens its connections and plans the report on each (EXPLAIN:
    nothing written); calls then use them, opening none; warming again opens none; a database
    that cannot be reached leaves the connections to the first calls, without an error."""
    from sqlalchemy import text

    from gisgrid.db import engine as db_engine
    from gisgrid.layers import incidents

    eng = make_engine(db_url)       # the schema: migrated by the ``engine`` fixture
    conns = db_engine.DirectConnections(eng, application_name="gisgrid test")
    count = "SELECT (SELECT count(*) FROM incident) + (SELECT count(*) FROM rate_limit)"
    try:
        with eng.connect() as c:
            before = c.execute(text(count)).scalar()
        assert conns.warm(3, [incidents.report_warmup()]) == 3 and conns.open_connections() == 3
        with eng.connect() as c:
            assert c.execute(text(count)).scalar() == before
        _at_once(conns, 3)
        assert conns.open_connections() == 3 and conns.warm(3) == 0
    finally:
        eng.dispose()
    gone = make_engine(db_url.split("?")[0] + "?host=/nonexistent")
    try:
        dead = db_engine.DirectConnections(gone, application_name="gisgrid test")
        assert dead.warm(2) == 0 and dead.open_connections() == 0
    finally:
        gone.dispose()


def test_direct_connections_do_not_retry_a_statement_that_timed_out(db_url):
    """A statement cancelled by its timeout (``QueryCanceled``, an ``OperationalError``) on a
    connection that is still up is raised once, not run again, and the connection is kept; a
    connection that broke is replaced and, with ``retry``, the work runs again on the new one."""
    import psycopg

    from gisgrid.db import engine as db_engine

    eng = make_engine(db_url)
    conns = db_engine.DirectConnections(eng, application_name="gisgrid test", statement_timeout_ms=200)
    runs = []

    def slow(conn):
        runs.append(conn)
        return conn.execute("SELECT pg_sleep(2)").fetchone()
    try:
        first = _conn(conns)
        with pytest.raises(psycopg.errors.QueryCanceled):
            conns.run(slow, retry=True)
        assert runs == [first] and not first.closed and _conn(conns) is first
        assert conns.run(lambda c: c.execute("SELECT 1").fetchone()) == (1,)

        def dies_once(conn):
            runs.append(conn)
            if len(runs) == 2:
                with psycopg.connect(db_engine.libpq_url(eng), autocommit=True) as admin:
                    admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
            return conn.execute("SELECT 1").fetchone()
        assert conns.run(dies_once, retry=True) == (1,)
        assert runs[1] is first and first.closed and runs[2] is not first and _conn(conns) is runs[2]
    finally:
        eng.dispose()


def test_pooled_connections_hand_back_the_last_used_and_replace_a_broken_one(db_url):
    """The tile engine's connections (PooledConnections on a LIFO pool): one caller after another
    gets the connection used last (its prepared statements with it); a statement timeout is
    raised once and the connection kept; a connection that broke is replaced and, with
    ``retry``, the work runs again on a new one."""
    import psycopg

    from gisgrid.db import engine as db_engine

    eng = make_engine(db_url, statement_timeout_ms=200, isolation_level="AUTOCOMMIT", pool_use_lifo=True)
    conns = db_engine.PooledConnections(eng)
    seen = []

    def who(conn):
        seen.append(conn)
        return conn.execute("SELECT pg_backend_pid()", prepare=True).fetchone()[0]
    try:
        pid = conns.run(who)
        assert conns.run(who) == pid and seen[0] is seen[1]

        def slow(conn):
            seen.append(conn)
            return conn.execute("SELECT pg_sleep(2)").fetchone()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conns.run(slow, retry=True)
        assert len(seen) == 3 and conns.run(who) == pid

        def dies_once(conn):
            seen.append(conn)
            if len(seen) == 5:
                with psycopg.connect(db_engine.libpq_url(eng), autocommit=True) as admin:
                    admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
            return conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert conns.run(dies_once, retry=True) != pid
        assert len(seen) == 6 and seen[4].closed and not seen[5].closed
    finally:
        eng.dispose()
