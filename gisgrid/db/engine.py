"""Engine and sessions. One sessionmaker per app; layer functions take the session and never commit."""
from __future__ import annotations

from sqlalchemy import create_engine
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


def make_engine(url: str, *, statement_timeout_ms: int | None = None, **kw) -> Engine:
    """An engine that re-establishes dropped connections (pool_pre_ping) and never waits for ever
    to connect (connect_timeout)."""
    connect_args = {"connect_timeout": 10}
    if statement_timeout_ms:
        connect_args["options"] = f"-c statement_timeout={int(statement_timeout_ms)}"
    engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args, **kw)
    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
