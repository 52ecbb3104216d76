"""Linking: which grid, community, street and district contain each record.

The one place where derived links are written. Links live in one narrow table per linked layer,
``<layer>_link (id, grid_id, grid_code, community_code, street_code, district_code)``, keyed by
the record's id, not in the layer's own (wide, many-indexed) rows: re-linking a whole layer then
builds a new narrow table instead of rewriting every record and every index of the layer
(measured in bench/link.py). Readers join it: ``FROM incident i LEFT JOIN incident_link l ON
l.id = i.id`` (:func:`join_sql`). A record with no link row is treated as unlinked.

Three paths, one rule:

* :func:`link_ids` – the records just written, inside the writer's transaction (a lateral
  lookup per record, upserted into the link table; right for a handful of rows);
* :func:`relink` – every record of the given linked layers, in bulk, after a boundary change
  or an import (`gisgrid link`). Polygon-driven: the outer loop runs over the grids and probes
  the GiST index of the points, so PostGIS reuses each grid's prepared geometry for all the
  points it holds. The result goes into a fresh table that replaces the old one in a short
  swap at the end; readers are never blocked except during that swap. Writers of links wait
  for the rebuild of their layer (it holds the old link table in EXCLUSIVE mode, which lets
  readers in); then PostgreSQL looks the table's name up again and their rows land in the new
  table: no link written meanwhile is lost;
* :func:`grids_of_points` + :func:`link_staged` – a file's worth of new points (imports): the
  grid of each point found in-process by the same predicate (GEOS, polygon-driven over a shapely
  STRtree) before anything is written, the link rows written from the staging table. Like
  the SQL join of an import, it sees the grids current when it runs: a plan published while
  a long import runs is applied to the imported rows by ``gisgrid link``.

The rule (``grids.LOOKUP_SQL`` states it for a single point): a record belongs to the current
grid that intersects its anchor point; a point on an edge shared by several grids belongs to the
one with the **lowest code**. A record outside every grid keeps ``grid_id`` NULL ("unlinked")
and takes its community/street/district codes from the deepest admin area that contains it,
so it can still be routed to a street or district centre. Nothing is ever dropped.

Anchors: points link by themselves; buildings and routes by ``anchor`` (``ST_PointOnSurface``
of the footprint or line, a generated column); residents by their building, or by their own
point when they have none.

Deleting a record deletes its link row (a statement-level trigger ``gisgrid_unlink`` on each
layer, created by migration 0004); link tables carry no foreign keys, so a rebuild can swap
them without locking the layer tables.
"""
from __future__ import annotations

import logging
import re
import time

import numpy as np
import shapely
from sqlalchemy import Column, Index, Integer, String, Table, text
from sqlalchemy.orm import Session

from gisgrid.db.base import Base

log = logging.getLogger(__name__)

#: layer table → column holding the point the layer is linked by
ANCHORS = {"building": "anchor", "place": "geom", "patrol_point": "geom", "patrol_route": "anchor",
           "incident": "geom"}
#: order matters: residents copy their building's links
ORDER = ("building", "resident", "place", "patrol_point", "patrol_route", "incident")
COLUMNS = ("grid_id", "grid_code", "community_code", "street_code", "district_code")


def _link_table(layer: str) -> Table:
    """Codes compare bytewise (COLLATE "C": digits, and index builds sort them fastest). One
    index serves every jurisdiction filter: admin codes nest (a street code starts with its
    district's six digits, a grid code with its community's twelve), so
    :func:`gisgrid.authz.scope_sql` names the parents of each code it filters on, and every
    level's condition is a prefix of (district, street, community, grid)."""
    name = f"{layer}_link"
    return Table(
        name, Base.metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("grid_id", Integer), Column("grid_code", String(20, collation="C")),
        Column("community_code", String(12, collation="C")), Column("street_code", String(12, collation="C")),
        Column("district_code", String(12, collation="C")),
        Index(f"ix_{name}_area", "district_code", "street_code", "community_code", "grid_code"),
        # the few records outside every grid: tiles add them to the grid tallies (gisgrid.layers.tallies)
        *([Index(f"ix_{name}_unlinked", "id", postgresql_where=text("grid_id IS NULL"))]
          if layer in ("incident", "building") else []))


#: layer → its link table
TABLES = {layer: _link_table(layer) for layer in ORDER}

_LIST = ", ".join(COLUMNS)
_UPSERT_SET = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS)

_GRID_LATERAL = (
    "LEFT JOIN LATERAL (SELECT id, code, community_code, street_code, district_code FROM grid "
    "WHERE valid_to IS NULL AND ST_Intersects(geom, s.pt) ORDER BY code LIMIT 1) g ON true "
)
_ADMIN_LATERAL = (
    "LEFT JOIN LATERAL (SELECT community_code, street_code, district_code FROM admin_area "
    "WHERE g.id IS NULL AND geom IS NOT NULL AND ST_Intersects(geom, s.pt) "
    "ORDER BY CASE level WHEN 'community' THEN 0 WHEN 'street' THEN 1 ELSE 2 END, code LIMIT 1) a ON true "
)
#: id and links of every row of a CTE ``src(id, pt)`` (one lateral lookup each)
LOCATE_SQL = (
    "SELECT s.id, g.id AS grid_id, g.code AS grid_code, "
    "coalesce(g.community_code, a.community_code) AS community_code, "
    "coalesce(g.street_code, a.street_code) AS street_code, "
    "coalesce(g.district_code, a.district_code) AS district_code "
    "FROM src s " + _GRID_LATERAL + _ADMIN_LATERAL
)


def join_sql(layer: str, alias: str, link_alias: str = "l") -> str:
    """``LEFT JOIN <layer>_link <link_alias> ON …`` for a query over ``layer AS alias``."""
    _check(layer)
    return f"LEFT JOIN {layer}_link {link_alias} ON {link_alias}.id = {alias}.id"


def _check(table: str) -> None:
    if table not in ORDER:
        raise ValueError(f"{table!r} is not a linked layer; linked layers: {', '.join(ORDER)}")


def _located(table: str, where: str) -> str:
    """SELECT id + links of the records of ``table`` matching ``where``, one lateral lookup each."""
    if table == "resident":       # by their building, or by their own point when they have none
        return (f"SELECT r.id, {', '.join('b.' + c for c in COLUMNS)} FROM resident r "
                f"LEFT JOIN building_link b ON b.id = r.building_id WHERE r.building_id IS NOT NULL AND ({where}) "
                f"UNION ALL (WITH src AS (SELECT id, geom AS pt FROM resident r "
                f"WHERE r.building_id IS NULL AND ({where})) {LOCATE_SQL})")
    return f"WITH src AS (SELECT id, {ANCHORS[table]} AS pt FROM {table} r WHERE {where}) {LOCATE_SQL}"


def link_ids(session: Session, table: str, ids: list[int]) -> int:
    """Link the records ``ids`` of ``table`` (just inserted or moved). Returns rows changed.

    Runs in the caller's transaction; never commits. Waits while :func:`relink` rebuilds the
    same layer's links, so its rows land in the rebuilt table.
    """
    _check(table)
    if not ids:
        return 0
    link = f"{table}_link"
    return session.execute(text(
        f"INSERT INTO {link} AS k (id, {_LIST}) {_located(table, 'r.id = ANY(:ids)')} "
        f"ON CONFLICT (id) DO UPDATE SET {_UPSERT_SET} "
        f"WHERE (k.grid_id, k.grid_code, k.community_code, k.street_code, k.district_code) IS DISTINCT FROM "
        f"(EXCLUDED.grid_id, EXCLUDED.grid_code, EXCLUDED.community_code, EXCLUDED.street_code, "
        f"EXCLUDED.district_code)"), {"ids": list(ids)}).rowcount


def _fill(session: Session, table: str, new: str) -> None:
    """Write the links of every record of ``table`` into the empty table ``new``."""
    if table == "resident":
        session.execute(text(f"INSERT INTO {new} (id, {_LIST}) {_located('resident', 'true')}"))
        return
    anchor = ANCHORS[table]
    # Polygon-driven: grids outside, an index probe into the points for each grid. OFFSET 0
    # fences the lateral subquery: without it PostgreSQL flattens the lateral into a plain join
    # and runs it point-driven (a grid-index probe per point, 6-7x slower at city scale).
    session.execute(text(
        f"INSERT INTO {new} (id, {_LIST}) "
        "SELECT DISTINCT ON (p.id) p.id, g.id, g.code, g.community_code, g.street_code, g.district_code "
        f"FROM grid g CROSS JOIN LATERAL (SELECT id FROM {table} p WHERE ST_Intersects(g.geom, p.{anchor}) "
        "OFFSET 0) p WHERE g.valid_to IS NULL ORDER BY p.id, g.code"))
    # Whatever no grid holds: unlinked, with its admin codes from the admin areas.
    session.execute(text(
        f"INSERT INTO {new} (id, {_LIST}) "
        + _located(table, f"NOT EXISTS (SELECT 1 FROM {new} k WHERE k.id = r.id)")))


def _rebuild(session: Session, table: str) -> int:
    link, new = f"{table}_link", f"{table}_link_new"
    steps, t0 = [], time.perf_counter()

    def step(name):
        nonlocal t0
        steps.append(f"{name} {time.perf_counter() - t0:.2f} s")
        t0 = time.perf_counter()

    indexes = session.execute(text(
        "SELECT i.relname AS name, pg_get_indexdef(i.oid) AS ddl, c.conname AS constraint "
        "FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
        "LEFT JOIN pg_constraint c ON c.conindid = i.oid AND c.conrelid = x.indrelid "
        "WHERE x.indrelid = CAST(:t AS regclass)"), {"t": link}).mappings().all()
    assert all(ix["constraint"] is None or ix["name"] == f"pk_{link}" for ix in indexes), indexes
    session.execute(text(f"DROP TABLE IF EXISTS {new}"))
    session.execute(text(f"CREATE TABLE {new} (LIKE {link} INCLUDING DEFAULTS)"))
    # Writers wait from here to the commit; readers go on reading the old table until the swap.
    session.execute(text(f"LOCK TABLE {link} IN EXCLUSIVE MODE"))
    step("lock")
    _fill(session, table, new)
    step("fill")
    for ix in indexes:       # built after the rows are in: one sort each, no per-row inserts
        tmp = f"{ix['name']}__new"
        if ix["constraint"]:
            session.execute(text(f"ALTER TABLE {new} ADD CONSTRAINT {ix['constraint']}__new PRIMARY KEY (id)"))
        else:
            ddl = re.sub(rf"^(CREATE (?:UNIQUE )?INDEX) {ix['name']} ON (ONLY )?((?:\S+\.)?){link} ",
                         rf"\1 {tmp} ON \2\3{new} ", ix["ddl"])
            session.execute(text(ddl))
    step(f"{len(indexes)} indexes")
    # its triggers (the incident tally's) move with it, after the fill: the fill is counted afresh
    for ddl in session.execute(text(
            "SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t WHERE t.tgrelid = CAST(:t AS regclass) "
            "AND NOT t.tgisinternal"), {"t": link}).scalars().all():
        session.execute(text(re.sub(rf" ON ((?:\S+\.)?){link} ", rf" ON \g<1>{new} ", ddl, count=1)))
    changed = session.execute(text(
        f"SELECT count(*) FROM {link} o FULL JOIN {new} n ON n.id = o.id "
        f"WHERE (o.id, o.grid_id, o.grid_code, o.community_code, o.street_code, o.district_code) IS DISTINCT FROM "
        f"(n.id, n.grid_id, n.grid_code, n.community_code, n.street_code, n.district_code)")).scalar_one()
    step("count changes")
    # The swap: readers of the old table finish first; the new one takes its name and index names.
    session.execute(text(f"DROP TABLE {link}"))
    session.execute(text(f"ALTER TABLE {new} RENAME TO {link}"))
    for ix in indexes:
        if ix["constraint"]:
            session.execute(text(f"ALTER TABLE {link} RENAME CONSTRAINT {ix['constraint']}__new TO {ix['constraint']}"))
        else:
            session.execute(text(f"ALTER INDEX {ix['name']}__new RENAME TO {ix['name']}"))
    session.execute(text(f"ANALYZE {link}"))
    step("swap + analyze")
    log.info("relink %s: %s; %d changed", table, ", ".join(steps), changed)
    return changed


def relink(session: Session, tables: tuple[str, ...] | None = None) -> dict[str, int]:
    """Recompute the links of every record of ``tables`` (default: all linked layers) in bulk.

    Runs in the caller's transaction; never commits. Each layer's link table is rebuilt and
    swapped in; ``link_ids`` on that layer waits meanwhile.

    Returns
    -------
    dict
        table → number of records whose links changed.
    """
    tables = ORDER if tables is None else tables
    for t in tables:
        _check(t)
    changed = {t: _rebuild(session, t) for t in ORDER if t in tables}
    from gisgrid.layers import tallies

    for layer in set(changed) & set(tallies.COUNTS):   # the tallies by grid follow the new links
        tallies.refresh(session, layer)
    return changed


# -- imports ------------------------------------------------------------------------------------------
#: the anchor of a staged (not yet inserted) record, as the table's generated column computes it
_STAGED_ANCHORS = {"building": "ST_PointOnSurface(s.geom)", "patrol_route": "ST_PointOnSurface(s.geom)"}


#: layers whose records are linked by their own point (``geom``)
POINT_LAYERS = tuple(t for t in ORDER if ANCHORS.get(t, "geom") == "geom")


class Grids:
    """The current grids, in code order (the rule's order): ids, codes and shapely geometries."""

    def __init__(self, rows):
        self.ids = np.array([r[0] for r in rows], dtype=np.int64)
        self.codes = {c: np.array([r[i] for r in rows], dtype=object) for i, c in enumerate(COLUMNS[1:], start=2)}
        self.geoms = shapely.from_wkb([bytes(r[1]) for r in rows])


def current_grids(session: Session) -> Grids:
    """The current grids for :func:`grid_positions` (read in the caller's transaction)."""
    return Grids(session.execute(text(
        "SELECT id, ST_AsBinary(geom), code, community_code, street_code, district_code FROM grid "
        "WHERE valid_to IS NULL ORDER BY code")).all())


def grid_positions(grids: Grids, points) -> np.ndarray:
    """For each point, the position in ``grids`` of the grid holding it by the rule above (the
    lowest code where grids touch), -1 where none does or there is no point. No database: a
    shapely STRtree over the points, queried with every grid (each prepared once)."""
    points = np.asarray(points, dtype=object)
    out = np.full(len(points), -1, dtype=np.int64)
    has = np.flatnonzero(~shapely.is_missing(points))
    if not len(grids.ids) or not len(has):
        return out
    grid_pos, point_pos = shapely.STRtree(points[has]).query(grids.geoms, predicate="intersects")
    best = np.full(len(has), len(grids.ids), dtype=np.int64)       # rank by code: the query's order
    np.minimum.at(best, point_pos, grid_pos)
    found = best < len(grids.ids)
    out[has[found]] = best[found]
    return out


def grids_of_points(session: Session, points) -> np.ndarray:
    """The id of the current grid holding each point by the rule above (the lowest code where
    grids touch), or -1 when none does, computed in-process: the right tool for a file's
    worth of points that are not in the database yet.

    The same predicate as PostGIS's ``ST_Intersects`` (GEOS, boundary included), polygon-driven
    like :func:`relink`: a shapely STRtree over the points, queried with every current grid
    (each grid prepared once). A million points take about 3 s, where the SQL join takes 25 s
    plus a GiST build over the staged points (bench/import.py).

    Parameters
    ----------
    session : Session
        Reads the current grids (in the caller's transaction).
    points : array of shapely Point, EPSG:4326
        None for no point.

    Returns
    -------
    numpy.ndarray of int64
        Grid ids, -1 where no grid holds the point (or there is no point).
    """
    grids = current_grids(session)
    pos = grid_positions(grids, points)
    return np.where(pos >= 0, grids.ids[np.maximum(pos, 0)] if len(grids.ids) else -1, -1)


def link_frame(grids: Grids, ids, positions):
    """Link rows (``id`` and :data:`COLUMNS`) of records ``ids`` held by the grids at ``positions``."""
    import pandas as pd

    return pd.DataFrame({"id": np.asarray(ids, dtype=np.int64), "grid_id": grids.ids[positions],
                         **{c: v[positions] for c, v in grids.codes.items()}}).astype(object)


#: psycopg types of a link row's columns (binary COPY)
LINK_TYPES = ["int4", "int4", "text", "text", "text", "text"]


def copy_links(conn, table: str, links, packed: list[bytes] | None = None) -> int:
    """COPY link rows (:func:`link_frame`) into ``<table>_link`` on the psycopg connection ``conn``
    (the caller's transaction), in binary (``packed``: by :func:`gisgrid.db.bulk.pack_binary`)."""
    from gisgrid.db.bulk import copy_binary

    _check(table)
    return copy_binary(conn, f"{table}_link", links, LINK_TYPES, packed)


def link_staged(session: Session, table: str, stage: str) -> None:
    """Link records staged for an import by the rule above, polygon-driven, into
    ``<table>_link``: right for many rows (a lateral lookup each only for those no grid holds).

    ``stage`` is a temporary table the caller made (a name, never input) holding ``id`` (the
    id the record gets), ``geom`` and, for residents, ``building_code``; and, for the layers in
    :data:`POINT_LAYERS`, ``grid_id`` from :func:`grids_of_points` (NULL where no grid holds
    the point: those get their admin codes here). Link tables carry no foreign key, so this
    may run before or after the records are inserted.
    """
    _check(table)
    anchor = _STAGED_ANCHORS.get(table, "s.geom")
    where = "s.building_code IS NULL AND s.geom IS NOT NULL" if table == "resident" else "s.geom IS NOT NULL"
    link = f"{table}_link"
    if table in POINT_LAYERS:
        session.execute(text(
            f"INSERT INTO {link} (id, {_LIST}) SELECT s.id, g.id, g.code, g.community_code, g.street_code, "
            f"g.district_code FROM {stage} s JOIN grid g ON g.id = s.grid_id WHERE {where}"))
        where += " AND s.grid_id IS NULL"
    session.execute(text("DROP TABLE IF EXISTS _gisgrid_pts"))
    session.execute(text(f"CREATE TEMP TABLE _gisgrid_pts ON COMMIT DROP AS SELECT s.id, {anchor} AS pt "
                         f"FROM {stage} s WHERE {where}"))
    if table not in POINT_LAYERS:
        session.execute(text("CREATE INDEX ON _gisgrid_pts USING gist (pt)"))
        session.execute(text("ANALYZE _gisgrid_pts"))
        session.execute(text(
            f"INSERT INTO {link} (id, {_LIST}) "
            "SELECT DISTINCT ON (p.id) p.id, g.id, g.code, g.community_code, g.street_code, g.district_code "
            "FROM grid g CROSS JOIN LATERAL (SELECT id FROM _gisgrid_pts p WHERE ST_Intersects(g.geom, p.pt) "
            "OFFSET 0) p WHERE g.valid_to IS NULL ORDER BY p.id, g.code"))
    session.execute(text(
        f"INSERT INTO {link} (id, {_LIST}) WITH src AS (SELECT id, pt FROM _gisgrid_pts p WHERE NOT EXISTS "
        f"(SELECT 1 FROM {link} k WHERE k.id = p.id)) {LOCATE_SQL}"))
    if table == "resident":      # by their building
        session.execute(text(
            f"INSERT INTO {link} (id, {_LIST}) SELECT s.id, {', '.join('b.' + c for c in COLUMNS)} "
            f"FROM {stage} s JOIN building bb ON bb.code = s.building_code LEFT JOIN building_link b ON b.id = bb.id"))
    session.execute(text("DROP TABLE _gisgrid_pts"))


def link_written(session: Session, table: str, ids_table: str) -> int:
    """:func:`link_ids` for the ids in the temporary table ``ids_table`` (a name the caller
    made, never input): an upsert's written rows, without shipping the ids through Python."""
    _check(table)
    return session.execute(text(
        f"INSERT INTO {table}_link AS k (id, {_LIST}) {_located(table, f'r.id IN (SELECT id FROM {ids_table})')} "
        f"ON CONFLICT (id) DO UPDATE SET {_UPSERT_SET} "
        f"WHERE (k.grid_id, k.grid_code, k.community_code, k.street_code, k.district_code) IS DISTINCT FROM "
        f"(EXCLUDED.grid_id, EXCLUDED.grid_code, EXCLUDED.community_code, EXCLUDED.street_code, "
        f"EXCLUDED.district_code)")).rowcount
