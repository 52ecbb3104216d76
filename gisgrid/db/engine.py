"""Engine and sessions. One sessionmaker per app; layer functions take the session and never commit."""
from __future__ import annotations

import time

from sqlalchemy import create_engine, event, exc
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from gisgrid.config import Settings
from gisgrid.db.cluster import Cluster


def cluster_for(settings: Settings) -> Cluster:
    return Cluster(settings.home, settings.pg_bindir, settings.pg_fast)


def database_url(settings: Settings, *, start: bool = True) -> str:
    """The SQLAlchemy URL: ``GISGRID_DATABASE_URL`` if set, else the embedded cluster's
    (started first when ``start``). A set URL never touches a local cluster."""
    if settings.database_url:
        url = settings.database_url
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix):]
        return url
    cluster = cluster_for(settings)
    if start:
        cluster.start()
    return cluster.url()


#: a pooled connection idle longer than this is pinged before use
PING_AFTER_IDLE_S = 1.0


def make_engine(url: str, *, statement_timeout_ms: int | None = None, server_settings: dict | None = None,
                prepare: bool = True, **kw) -> Engine:
    """An engine that re-establishes dropped connections and never waits for ever to connect
    (connect_timeout).

    A connection that sat in the pool for more than ``PING_AFTER_IDLE_S`` is pinged before
    use (a dead one is replaced, and SQLAlchemy then discards every older connection of the
    pool); a connection handed back a moment ago is used as it is. ``pool_pre_ping`` would
    ping every checkout, one more round trip per request under load. Should the database go
    away between two busy requests, the first statement fails (503 Database unavailable), the
    pool is invalidated, and the client's retry gets a new connection.

    ``server_settings``: PostgreSQL settings for every connection (``-c name=value``).
    ``prepare=False``: psycopg never prepares a statement server-side, so each execution is
    planned for its own parameters (what tile statements need: a generic plan cannot see how
    many rows a box holds).
    """
    connect_args = _connect_args(statement_timeout_ms, server_settings)
    if not prepare:      # every statement planned for its own parameters (no server-side prepared plans)
        connect_args["prepare_threshold"] = None
    engine = create_engine(url, connect_args=connect_args, **kw)

    @event.listens_for(engine, "checkin")
    def _idle_from(dbapi_conn, record):
        record.info["idle_from"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_conn, record, proxy):
        idle_from = record.info.get("idle_from")
        if idle_from is not None and time.monotonic() - idle_from > PING_AFTER_IDLE_S:
            try:
                ok = engine.dialect.do_ping(dbapi_conn)
            except Exception as e:       # any failure of the ping means: use another connection
                raise exc.DisconnectionError(f"stale pooled connection: {e}") from e
            if not ok:
                raise exc.DisconnectionError("stale pooled connection")
    return engine


def _connect_args(statement_timeout_ms: int | None = None, server_settings: dict | None = None) -> dict:
    """libpq connection arguments: a connect timeout, and PostgreSQL settings (``-c name=value``)."""
    args: dict = {"connect_timeout": 10}
    options = {**({"statement_timeout": int(statement_timeout_ms)} if statement_timeout_ms else {}),
               **(server_settings or {})}
    if options:
        args["options"] = " ".join(f"-c {k}={v}" for k, v in options.items())
    return args


class DirectConnections:
    """Autocommitted psycopg connections for hot paths whose whole work is one statement (a
    field report, a rate-limit hit): a pool checkout, an ORM session and their reset on return
    cost more CPU than such a statement. :meth:`run` hands out an idle connection, the one used
    last first (its statements are prepared already), or makes one when none is idle, and takes
    it back afterwards; so there are at most as many as calls ever ran at once (a worker's
    threads), whichever threads make the calls. (They were once kept per thread: the server's
    threads come and go, Granian ends one idle for 30 s, and each new thread opened another
    connection while the old one stayed open.) A connection that sat idle longer than
    ``PING_AFTER_IDLE_S`` is pinged first (as the engine's pool does) and replaced if dead; one
    that broke under its work is closed. All are closed when ``engine`` is disposed."""

    def __init__(self, engine: Engine, *, application_name: str, statement_timeout_ms: int | None = None):
        import threading

        self._url = libpq_url(engine)
        # prepared at first use: every statement run here repeats (psycopg's default waits for
        # the fifth run, and each of the four before is parsed and planned by the server anew)
        self._args = {**_connect_args(statement_timeout_ms), "application_name": application_name,
                      "prepare_threshold": 0}
        self._idle: list = []           # (connection, monotonic time it was handed back), last used at the end
        self._all: set = set()
        self._lock = threading.Lock()
        event.listen(engine, "engine_disposed", lambda _engine: self.close_all())

    def _checkout(self):
        import psycopg

        with self._lock:
            conn, used = self._idle.pop() if self._idle else (None, 0.0)
        if conn is not None and time.monotonic() - used > PING_AFTER_IDLE_S:
            try:
                conn.execute("")
            except psycopg.Error:
                conn.close()
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                with self._lock:
                    self._all.discard(conn)
            conn = psycopg.connect(self._url, autocommit=True, **self._args)
            with self._lock:
                self._all.add(conn)
        return conn

    def _checkin(self, conn) -> None:
        with self._lock:
            if conn.closed or conn.broken:
                self._all.discard(conn)
            else:
                self._idle.append((conn, time.monotonic()))

    def run(self, work, *, retry: bool = False):
        """``work(connection)`` on a connection of its own for the call. A connection that
        broke under it (``psycopg.OperationalError`` and the connection lost: the database
        went away) is closed; with ``retry`` the work is tried once more on a new one (only for
        work that may safely run twice). An operational error on a connection still up (a
        statement timeout, a cancel: ``QueryCanceled`` is one) is raised at once and the
        connection kept: running the statement again would only time out again."""
        import psycopg

        for attempt in (1, 2):
            conn = self._checkout()
            try:
                return work(conn)
            except psycopg.OperationalError:
                if not (conn.broken or conn.closed):
                    raise
                conn.close()
                if attempt == 2 or not retry:
                    raise
            finally:
                self._checkin(conn)

    def warm(self, n: int, statements=()) -> int:
        """Open connections until ``n`` are open, before any call needs them (a worker about to
        serve), each having planned ``statements`` (``(sql, params)`` pairs, run under
        ``EXPLAIN``: planned, not executed), so that the first requests wait neither for a
        backend to start nor for its first statement (a new backend reads the catalog of every
        table, index and function the statement touches). Returns how many it opened. A
        database that cannot be reached leaves the rest to the first calls, as without it."""
        import psycopg
        from psycopg import RawCursor

        opened = []
        try:
            while len(self._all) + len(opened) < n:
                conn = psycopg.connect(self._url, autocommit=True, **self._args)
                opened.append(conn)
                for sql, params in statements:
                    with RawCursor(conn) as cur:
                        cur.execute("EXPLAIN " + sql, params)
        except psycopg.Error:
            pass
        with self._lock:
            for conn in opened:
                if not (conn.closed or conn.broken):
                    self._all.add(conn)
                    self._idle.append((conn, time.monotonic()))
        return len(opened)

    def open_connections(self) -> int:
        """How many connections are open (idle or in use)."""
        with self._lock:
            return len(self._all)

    def close_all(self) -> None:
        with self._lock:
            conns, self._all, self._idle = self._all, set(), []
        for c in conns:
            c.close()


class PooledConnections:
    """The psycopg connections of ``engine``'s pool, without an ORM session or a SQLAlchemy
    connection around them, for work that prepares its statements: make the engine with
    ``pool_use_lifo=True``, so the connection handed out is the one used last, which has the
    statements of recent requests prepared already (with a connection per thread, each of a
    worker's threads would parse each statement itself: 1-3 ms for a tile statement, 30 ms for
    a new backend's first). The engine's checkout ping after idleness applies. ``run`` has
    :meth:`DirectConnections.run`'s contract."""

    def __init__(self, engine: Engine):
        self._engine = engine

    def run(self, work, *, retry: bool = False):
        """``work(connection)`` on a connection of the pool, handed back after it. A connection
        that broke under it is invalidated with the pool's idle ones and, with ``retry``, the
        work run once more on a new one; an operational error on a connection still up (a statement timeout) is raised
        at once."""
        import psycopg

        for attempt in (1, 2):
            fairy = self._engine.raw_connection()
            try:
                conn = fairy.driver_connection
                try:
                    return work(conn)
                except psycopg.OperationalError:
                    if not (conn.broken or conn.closed):
                        raise
                    fairy.invalidate()
                    self._engine.pool.dispose()     # the idle ones went the same way (a restart)
                    if attempt == 2 or not retry:
                        raise
            finally:
                fairy.close()


def libpq_url(engine: Engine) -> str:
    """The engine's database as a plain libpq URL, for connections made with psycopg directly
    (a LISTEN connection, :class:`DirectConnections`)."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
