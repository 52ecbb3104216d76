"""Rate-limit counters shared by every web worker process (fixed windows, in PostgreSQL).

Flask-Limiter's memory storage counts per process: with several worker processes a login
limit of 5 a minute would become 5 per worker. These counters live in one UNLOGGED table
(not WAL-logged, emptied after a crash, which is harmless for counters), one row per key.
"""
from __future__ import annotations

import random
import time

from sqlalchemy import Column, DateTime, Integer, String, Table, text
from sqlalchemy.engine import Connection

from gisgrid.db.base import Base

rate_limit = Table(
    "rate_limit", Base.metadata,
    Column("key", String(300), primary_key=True),
    Column("count", Integer, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    prefixes=["UNLOGGED"],
)

_INCR = text(
    "INSERT INTO rate_limit AS r (key, count, expires_at) VALUES (:k, :n, now() + make_interval(secs => :e)) "
    "ON CONFLICT (key) DO UPDATE SET "
    "count = CASE WHEN r.expires_at <= now() THEN EXCLUDED.count ELSE r.count + EXCLUDED.count END, "
    "expires_at = CASE WHEN r.expires_at <= now() THEN EXCLUDED.expires_at ELSE r.expires_at END "
    "RETURNING count, extract(epoch FROM expires_at)")


def incr(conn: Connection, key: str, expiry: int, amount: int = 1) -> tuple[int, float]:
    """Add ``amount`` to ``key``'s window (a new window of ``expiry`` seconds once the old one
    has expired); returns the count in the window and when the window ends (epoch seconds)."""
    if random.random() < 0.001:      # now and then, forget windows long gone
        conn.execute(text("DELETE FROM rate_limit WHERE expires_at < now() - interval '1 hour'"))
    count, ends = conn.execute(_INCR, {"k": key[:300], "n": amount, "e": expiry}).one()
    return count, float(ends)


def get(conn: Connection, key: str) -> int:
    return conn.execute(text("SELECT count FROM rate_limit WHERE key = :k AND expires_at > now()"),
                        {"k": key[:300]}).scalar() or 0


def expiry(conn: Connection, key: str) -> float:
    """When ``key``'s window ends (epoch seconds; now if it has none)."""
    found = conn.execute(text("SELECT extract(epoch FROM expires_at) FROM rate_limit WHERE key = :k AND "
                              "expires_at > now()"), {"k": key[:300]}).scalar()
    return float(found) if found is not None else time.time()


def clear(conn: Connection, key: str | None = None) -> int:
    """Forget ``key`` (or every key); returns rows removed."""
    if key is None:
        return conn.execute(text("DELETE FROM rate_limit")).rowcount
    return conn.execute(text("DELETE FROM rate_limit WHERE key = :k"), {"k": key[:300]}).rowcount
