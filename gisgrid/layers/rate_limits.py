"""Rate-limit counters shared by every web worker process (fixed windows, in PostgreSQL).

Counters kept in process memory count per process: with several worker processes a login
limit of 5 a minute would become 5 per worker. These counters live in one UNLOGGED table
(not WAL-logged, emptied after a crash, which is harmless for counters), one row per key.
The functions take a plain autocommitted psycopg connection: a hit is on every limited request,
and SQLAlchemy's pool and result layers cost more CPU than the statement itself.
"""
from __future__ import annotations

import functools
import random
import time
from dataclasses import dataclass

import psycopg
from sqlalchemy import Column, DateTime, Integer, String, Table

from gisgrid.db.base import Base
from gisgrid.errors import GisgridError

rate_limit = Table(
    "rate_limit", Base.metadata,
    Column("key", String(300), primary_key=True),
    Column("count", Integer, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    prefixes=["UNLOGGED"],
)

def _hit_sql(key: str, amount: str, seconds: str, also: str = "") -> str:
    """The one fixed-window hit, with the given placeholders: add ``amount`` to ``key``'s count,
    or start a new window of ``seconds`` once the old one has expired. Returns ``count``,
    ``reset`` (epoch seconds) and the columns ``also`` adds."""
    return (
        f"INSERT INTO rate_limit AS r (key, count, expires_at) VALUES ({key}, {amount}, "
        f"now() + make_interval(secs => {seconds})) ON CONFLICT (key) DO UPDATE SET "
        "count = CASE WHEN r.expires_at <= now() THEN EXCLUDED.count ELSE r.count + EXCLUDED.count END, "
        "expires_at = CASE WHEN r.expires_at <= now() THEN EXCLUDED.expires_at ELSE r.expires_at END "
        f"RETURNING count, extract(epoch FROM expires_at) AS reset{also}")


_INCR = _hit_sql("%(k)s", "%(n)s", "%(e)s")


def incr(conn: psycopg.Connection, key: str, expiry: int, amount: int = 1) -> tuple[int, float]:
    """Add ``amount`` to ``key``'s window (a new window of ``expiry`` seconds once the old one
    has expired); returns the count in the window and when the window ends (epoch seconds)."""
    if random.random() < 0.001:      # now and then, forget windows long gone
        conn.execute("DELETE FROM rate_limit WHERE expires_at < now() - interval '1 hour'")
    count, ends = conn.execute(_INCR, {"k": key[:300], "n": amount, "e": expiry}).fetchone()
    return count, float(ends)


# -- a quota counted inside a write's own statement --------------------------------------------
@functools.lru_cache(maxsize=32)
def _parse(limit: str) -> tuple[int, int]:
    import limits

    item = limits.parse(limit)
    return item.amount, item.get_expiry()


class Exceeded(GisgridError):
    """Too many requests in the window: 429, with when to retry."""
    status = 429

    def __init__(self, message: str, quota: "Quota"):
        super().__init__(message)
        self.quota = quota


@dataclass
class Quota:
    """``amount`` per ``seconds`` for ``key``. A write that is one statement (a field report)
    counts its hit in that statement (:data:`HIT_SQL`) instead of in a round trip of its own;
    ``count`` and ``reset`` (epoch seconds) are filled from the statement's answer."""
    key: str
    amount: int
    seconds: int
    count: int | None = None
    reset: float | None = None

    @classmethod
    def parse(cls, key: str, limit: str) -> "Quota":
        """From the limits library's syntax (``"120 per minute"``), parsed by it (once per limit
        string: this runs on every report)."""
        amount, seconds = _parse(limit)
        return cls(key[:300], amount, seconds)

    def refuse_if_exceeded(self, what: str = "requests") -> None:
        """Raise :class:`Exceeded` (429) when the counted attempt was past the quota."""
        if self.count is not None and self.count > self.amount:
            raise Exceeded(f"at most {self.amount} {what} per {self.seconds} s; "
                           f"retry in {max(1, int(self.reset - time.time()))} s", self)

    def params(self) -> dict:
        return {"qk": self.key, "qn": self.amount, "qs": self.seconds}

    def headers(self) -> dict:
        """The usual rate-limit headers (as Flask-Limiter and most APIs send them)."""
        reset = int(self.reset if self.reset is not None else time.time() + self.seconds)
        out = {"X-RateLimit-Limit": str(self.amount),
               "X-RateLimit-Remaining": str(max(0, self.amount - (self.count or 0))),
               "X-RateLimit-Reset": str(reset)}
        if self.count is not None and self.count > self.amount:
            out["Retry-After"] = str(max(1, reset - int(time.time())))
        return out


#: a CTE body (name it ``quota``): one hit on the quota bound as :qk, :qn, :qs (:func:`_hit_sql`,
#: as :func:`hit`); its row has ``count``, ``reset`` and ``allowed``
HIT_SQL = _hit_sql(":qk", "1", ":qs", also=", count <= :qn AS allowed")


def hit(conn: psycopg.Connection, quota: Quota) -> Quota:
    """Count one attempt against ``quota`` in a statement of its own; fills in its count and
    window end."""
    quota.count, quota.reset = incr(conn, quota.key, quota.seconds)
    return quota
