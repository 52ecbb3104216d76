"""Tallies: how many incidents each grid holds, by state, and how many buildings and
households, kept up to date by the database, so the one map's low-zoom tiles and grid figures
read one row per grid instead of every incident or building.

``incident_tally (grid_id, shard, n, <one column per state>, merged, due, sx, sy)`` holds, per
current link of an incident to a grid (``incident_link.grid_id``), the number of incidents
(``n``), how many are in each state, how many closed ones were merged into another (``merged``:
not "resolved"), how many open ones have a deadline (``due``), how many carry a satisfaction
(``rated``) and how many of those are 4 or 5 (``satisfied``; migration 0014) and the sums of their longitudes
and latitudes (``sx``, ``sy``: the mean position of a grid's incidents, where a bin draws them).
``building_tally (grid_id, shard, buildings, households, sx, sy)`` is kept the same way from
buildings (their ``anchor``) and ``building_link``. Each row also carries its grid's codes (grid, community, street, district, copied from the
links), so community sums and jurisdiction filters need no join to the grids. A grid's figures
are the sum of its shards: a writer adds to the shard of its backend
(``pg_backend_pid() % 8``), so concurrent reports into one grid seldom wait on the same row.

Statement-level triggers with transition tables (migration 0011) keep it: a link inserted,
moved or deleted adds or removes its incident as it is now; an incident updated or deleted
removes its old values and adds its new ones, in the grid of its link. An incident inserted
counts when its link is written (the report statement writes both; imports and
:func:`gisgrid.layers.linking.link_ids` write the link after the row). Deleting incidents fires
``tally_delete`` before ``unlink`` removes their links (triggers run in name order), and
removing a link of a deleted incident finds no incident, so nothing counts twice. A bulk
re-link swaps in a new link table (the triggers move with it) and then :func:`refresh` counts
afresh. (All of this holds for buildings and their links alike.) One statement that changes an incident *and* its link at once is not supported (none
does).

What the tally cannot hold is read beside it, from small indexes: *overdue* depends on the
clock (open incidents with a deadline − those whose deadline is still ahead,
``ix_incident_open_deadline``), *rejected* closed orders (``ix_incident_event_rejected``) are
not resolved, and incidents outside every grid (``ix_incident_link_unlinked``) are counted from
their rows. Filtered views (time range, category, state) aggregate the incidents themselves.
"""
from __future__ import annotations

from sqlalchemy import Float, Index, Integer, SmallInteger, String, text
from sqlalchemy.orm import Mapped, declared_attr, mapped_column
from sqlalchemy.orm import Session

from gisgrid.db.base import Base
from gisgrid.layers import incidents

STATES = tuple(incidents.STATES)
SHARDS = 8


class _GridRow:
    """A tally row: a grid's shard, its codes, and the mean position of its records (sums).
    The codes are indexed as the link tables' are (an area and its parents' codes: one index
    serves every level; migration 0014)."""

    @declared_attr.directive
    def __table_args__(cls):
        return (Index(f"ix_{cls.__tablename__}_area", "district_code", "street_code", "community_code", "grid_code"),)

    grid_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    grid_code: Mapped[str | None] = mapped_column(String(20, collation="C"))
    community_code: Mapped[str | None] = mapped_column(String(12, collation="C"))
    street_code: Mapped[str | None] = mapped_column(String(12, collation="C"))
    district_code: Mapped[str | None] = mapped_column(String(12, collation="C"))
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    sx: Mapped[float] = mapped_column(Float(precision=53), server_default="0")
    sy: Mapped[float] = mapped_column(Float(precision=53), server_default="0")


def _count():
    return mapped_column(Integer, server_default="0")


class IncidentTally(_GridRow, Base):
    __tablename__ = "incident_tally"

    n: Mapped[int] = _count()
    reported: Mapped[int] = _count()
    accepted: Mapped[int] = _count()
    dispatched: Mapped[int] = _count()
    handling: Mapped[int] = _count()
    feedback: Mapped[int] = _count()
    evaluated: Mapped[int] = _count()
    closed: Mapped[int] = _count()
    merged: Mapped[int] = _count()
    due: Mapped[int] = _count()
    rated: Mapped[int] = _count()        # a satisfaction given (migration 0014)
    satisfied: Mapped[int] = _count()    # satisfaction 4 or 5


class BuildingTally(_GridRow, Base):
    """Buildings and households per grid (the grid and community figures of the one map)."""
    __tablename__ = "building_tally"

    buildings: Mapped[int] = _count()
    households: Mapped[int] = _count()


COUNTS = {"incident": ("n",) + STATES + ("merged", "due", "rated", "satisfied"), "building": ("buildings", "households")}
#: what each tally sums over the rows ``i`` of its layer joined to their links ``l``
_FRESH = {
    "incident": ("count(*)::int AS n, "
                 + ", ".join(f"count(*) FILTER (WHERE i.state = '{s}')::int AS {s}" for s in STATES)
                 + ", count(*) FILTER (WHERE i.state = 'closed' AND i.merged_into_id IS NOT NULL)::int AS merged, "
                 "count(*) FILTER (WHERE i.state = ANY(:open) AND i.deadline IS NOT NULL)::int AS due, "
                 "count(i.satisfaction)::int AS rated, count(*) FILTER (WHERE i.satisfaction >= 4)::int AS satisfied, "
                 "sum(ST_X(i.geom)) AS sx, sum(ST_Y(i.geom)) AS sy"),
    "building": ("count(*)::int AS buildings, coalesce(sum(i.households), 0)::int AS households, "
                 "sum(ST_X(i.anchor)) AS sx, sum(ST_Y(i.anchor)) AS sy"),
}
FLOATS = {"incident": ("sx", "sy"), "building": ("sx", "sy")}


#: a grid's codes, copied from its links (so tallies group and scope without the grid table)
CODES = ("grid_code", "community_code", "street_code", "district_code")


def fresh_sql(layer: str) -> str:
    """The tally of ``layer`` counted now from its records and links, one row per grid (what the
    triggers keep; :func:`refresh` writes it, the tests compare with it)."""
    codes = ", ".join("l." + c for c in CODES)
    return (f"SELECT l.grid_id, {codes}, {_FRESH[layer]} FROM {layer} i JOIN {layer}_link l ON l.id = i.id "
            f"WHERE l.grid_id IS NOT NULL GROUP BY l.grid_id, {codes}")


def _columns(layer: str) -> tuple[str, ...]:
    return COUNTS[layer] + FLOATS[layer]


def refresh(session: Session, layer: str) -> None:
    """Count the tally of ``layer`` afresh (after a bulk re-link). Runs in the caller's
    transaction; concurrent writers of the tally wait until it commits."""
    cols = ", ".join(_columns(layer))
    session.execute(text(f"LOCK TABLE {layer}_tally IN EXCLUSIVE MODE"))
    session.execute(text(f"DELETE FROM {layer}_tally"))
    codes = ", ".join(CODES)
    session.execute(text(f"INSERT INTO {layer}_tally (grid_id, {codes}, shard, {cols}) "
                         f"SELECT grid_id, {codes}, 0, {cols} FROM ({fresh_sql(layer)}) f"),
                    {"open": list(incidents.OPEN_STATES)})


def by_grid(session: Session, layer: str) -> dict[int, dict]:
    """grid id → the tally of ``layer`` summed over shards, without grids whose counts are all zero."""
    cols = ", ".join(f"sum({c}) AS {c}" for c in _columns(layer))
    rows = session.execute(text(f"SELECT grid_id, {', '.join(f'min({c}) AS {c}' for c in CODES)}, {cols}, "
                                f"count(DISTINCT ({', '.join(CODES)})) AS codings "
                                f"FROM {layer}_tally GROUP BY grid_id")).mappings()
    return {r["grid_id"]: dict(r) for r in rows if any(r[c] for c in COUNTS[layer])}


def fresh(session: Session, layer: str) -> dict[int, dict]:
    """grid id → the tally of ``layer`` counted now (what :func:`by_grid` must equal)."""
    rows = session.execute(text(fresh_sql(layer)), {"open": list(incidents.OPEN_STATES)}).mappings()
    return {r["grid_id"]: dict(r) for r in rows}
