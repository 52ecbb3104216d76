"""Change counters: a number per table that grows with every committed write to it.

Tiles, their ETags and the one map's live updates need to know "has this layer's data changed
since I drew it?". Each tracked table has a statement-level trigger (migration 0006) that adds 1
to one of :data:`SHARDS` counter rows of ``table_change`` – the shard is the writer's backend pid,
so concurrent writers seldom wait on the same row. A table's version is the sum of its shards.

Why a sum of transactional counters and not a sequence or a timestamp: the counters are rows,
so a reader sees the increments of exactly the transactions its snapshot sees. Read in the same
statement as the data (:func:`version_sql`), the version and the data always agree, and the sum
only grows, so an unchanged version means unchanged data – a cache can never keep a stale tile
under a current version. A write that changes nothing may still bump it (a harmless miss).
"""
from __future__ import annotations

from sqlalchemy import BigInteger, SmallInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from gisgrid.db.base import Base

#: tables whose writes are counted (the trigger is created on each by migration 0006)
TRACKED = ("admin_area", "grid", "building", "resident", "place", "patrol_point", "patrol_route", "incident",
           "incident_event", "staff", "grid_assignment")
SHARDS = 16


class TableChange(Base):
    __tablename__ = "table_change"

    tbl: Mapped[str] = mapped_column(String(40), primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


def version_sql(param: str = "vtables", links: str = "vlinks") -> str:
    """A scalar SQL expression: ``"table:count,…"`` for the tables bound to ``:param`` (a list),
    in table order, then ``"link_table#oid,…"`` for the link tables bound to ``:links``. Put it in
    the same statement as the data it versions.

    Link tables (:mod:`gisgrid.layers.linking`) carry no counter: a single record's link is
    written with its record (whose table counts), and a bulk re-link builds a new link table and
    swaps it in, so its object id is new."""
    return (f"(SELECT coalesce(string_agg(tbl || ':' || total, ',' ORDER BY tbl), '') FROM "
            f"(SELECT tbl, sum(n) AS total FROM table_change WHERE tbl = ANY(:{param}) GROUP BY tbl) v) || '|' || "
            f"(SELECT coalesce(string_agg(c.relname || '#' || c.oid, ',' ORDER BY c.relname), '') FROM pg_class c "
            f"WHERE c.relname = ANY(:{links}) AND c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace)")

