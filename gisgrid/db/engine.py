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


class ThreadConnections:
    """One autocommitted psycopg connection per thread, for hot paths whose whole work is one
    statement (a field report, a rate-limit hit): a pool checkout, an ORM session and their
    reset on return cost more CPU than such a statement. Made on first use, pinged when it sat
    idle longer than ``PING_AFTER_IDLE_S`` (as the engine's pool does), replaced after an error;
    all closed when ``engine`` is disposed."""

    def __init__(self, engine: Engine, *, application_name: str, statement_timeout_ms: int | None = None):
        import threading

        self._url = libpq_url(engine)
        self._args = {**_connect_args(statement_timeout_ms), "application_name": application_name}
        self._local = threading.local()
        self._all: list = []
        self._lock = threading.Lock()
        event.listen(engine, "engine_disposed", lambda _engine: self.close_all())

    def get(self):
        """This thread's connection, alive as far as a ping after idleness can tell."""
        import psycopg

        conn = getattr(self._local, "conn", None)
        if conn is not None and not (conn.closed or conn.broken) \
                and time.monotonic() - self._local.used > PING_AFTER_IDLE_S:
            try:
                conn.execute("")
            except psycopg.Error:
                conn.close()
        if conn is None or conn.closed or conn.broken:
            conn = self._local.conn = psycopg.connect(self._url, autocommit=True, **self._args)
            with self._lock:
                self._all = [c for c in self._all if not c.closed] + [conn]
        self._local.used = time.monotonic()
        return conn

    def run(self, work, *, retry: bool = False):
        """``work(connection)`` on this thread's connection. A connection that broke under it
        (``psycopg.OperationalError`` and the connection lost: the database went away) is
        closed; with ``retry`` the work is tried once more on a new one (only for work that may
        safely run twice). An operational error on a connection still up (a statement timeout,
        a cancel: ``QueryCanceled`` is one) is raised at once and the connection kept: running
        the statement again would only time out again."""
        import psycopg

        for attempt in (1, 2):
            conn = self.get()
            try:
                return work(conn)
            except psycopg.OperationalError:
                if not (conn.broken or conn.closed):
                    raise
                conn.close()
                if attempt == 2 or not retry:
                    raise

    def close_all(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for c in conns:
            c.close()


class PooledConnections:
    """The psycopg connections of ``engine``'s pool, without an ORM session or a SQLAlchemy
    connection around them, for work that prepares its statements: make the engine with
    ``pool_use_lifo=True``, so the connection handed out is the one used last, which has the
    statements of recent requests prepared already (with a connection per thread, as
    :class:`ThreadConnections` keeps, each of a worker's threads parses each statement
    itself: 1-3 ms for a tile statement, 30 ms for a new backend's first). The engine's checkout
    ping after idleness applies. ``run`` has :meth:`ThreadConnections.run`'s contract."""

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
    (a LISTEN connection, :class:`ThreadConnections`)."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
