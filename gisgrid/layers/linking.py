"""Linking: which grid, community, street and district contain each record.

The one place where derived links are written. Two paths, one rule:

* :func:`link_ids` – the records just written, inside the writer's transaction (a lateral
  lookup per record; right for a handful of rows);
* :func:`relink` – every record of every linked layer, in bulk, after a boundary change or an
  import (`gisgrid link`). Polygon-driven: the outer loop runs over the grids and probes the
  GiST index of the points, so PostGIS reuses each grid's prepared geometry for all the points
  it holds; rows whose links did not change are not rewritten.

The rule (``grids.LOOKUP_SQL`` states it for a single point): a record belongs to the current
grid that intersects its anchor point; a point on an edge shared by several grids belongs to the
one with the **lowest code**. A record outside every grid keeps ``grid_id`` NULL ("unlinked")
and takes its community/street/district codes from the deepest admin area that contains it,
so it can still be routed to a street or district centre. Nothing is ever dropped.

Anchors: points link by themselves; buildings and routes by ``anchor`` (``ST_PointOnSurface``
of the footprint or line, a generated column); residents by their building, or by their own
point when they have none.
"""
from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

#: layer table → column holding the point the layer is linked by
ANCHORS = {"building": "anchor", "place": "geom", "patrol_point": "geom", "patrol_route": "anchor",
           "incident": "geom"}
#: order matters: residents copy their building's links
ORDER = ("building", "resident", "place", "patrol_point", "patrol_route", "incident")
_COLS = LINK_COLUMNS = ("grid_id", "grid_code", "community_code", "street_code", "district_code")
_SET = ", ".join(f"{c} = l.{c}" for c in _COLS)
_CHANGED = " OR ".join(f"p.{c} IS DISTINCT FROM l.{c}" for c in _COLS)

_GRID_LATERAL = (
    "LEFT JOIN LATERAL (SELECT id, code, community_code, street_code, district_code FROM grid "
    "WHERE valid_to IS NULL AND ST_Intersects(geom, s.pt) ORDER BY code LIMIT 1) g ON true "
)
_ADMIN_LATERAL = (
    "LEFT JOIN LATERAL (SELECT community_code, street_code, district_code FROM admin_area "
    "WHERE g.id IS NULL AND geom IS NOT NULL AND ST_Intersects(geom, s.pt) "
    "ORDER BY CASE level WHEN 'community' THEN 0 WHEN 'street' THEN 1 ELSE 2 END, code LIMIT 1) a ON true "
)
_LOCATE = (
    "SELECT s.id, g.id AS grid_id, g.code AS grid_code, "
    "coalesce(g.community_code, a.community_code) AS community_code, "
    "coalesce(g.street_code, a.street_code) AS street_code, "
    "coalesce(g.district_code, a.district_code) AS district_code "
    "FROM src s " + _GRID_LATERAL + _ADMIN_LATERAL
)


def _check(table: str) -> None:
    if table not in ORDER:
        raise ValueError(f"{table!r} is not a linked layer; linked layers: {', '.join(ORDER)}")


def _point_sql(table: str, anchor: str, where: str) -> str:
    return (f"WITH src AS (SELECT id, {anchor} AS pt FROM {table} p WHERE {where}), l AS ({_LOCATE}) "
            f"UPDATE {table} p SET {_SET} FROM l WHERE p.id = l.id AND ({_CHANGED})")


def _residents_by_building(where: str) -> str:
    return (f"WITH l AS (SELECT r.id, b.grid_id, b.grid_code, b.community_code, b.street_code, b.district_code "
            f"FROM resident r JOIN building b ON b.id = r.building_id WHERE {where}) "
            f"UPDATE resident p SET {_SET} FROM l WHERE p.id = l.id AND ({_CHANGED})")


#: above this many records, link_ids runs polygon-driven like relink (imports)
MANY = 5000


def link_ids(session: Session, table: str, ids: list[int]) -> int:
    """Link the records ``ids`` of ``table`` (just inserted or moved). Returns rows changed.

    Runs in the caller's transaction; never commits. Up to :data:`MANY` records, a lookup per
    record; more (an import), the polygon-driven join of :func:`relink` restricted to them.
    """
    _check(table)
    if not ids:
        return 0
    if len(ids) > MANY:
        session.execute(text("DROP TABLE IF EXISTS _gisgrid_ids"))
        session.execute(text("CREATE TEMP TABLE _gisgrid_ids ON COMMIT DROP AS "
                             "SELECT unnest(CAST(:ids AS bigint[])) AS id"), {"ids": list(ids)})
        return link_written(session, table, "_gisgrid_ids")
    params = {"ids": list(ids)}
    if table == "resident":
        n = session.execute(text(_residents_by_building("r.id = ANY(:ids)")), params).rowcount
        return n + session.execute(
            text(_point_sql("resident", "geom", "id = ANY(:ids) AND building_id IS NULL")), params).rowcount
    return session.execute(text(_point_sql(table, ANCHORS[table], "id = ANY(:ids)")), params).rowcount


#: the anchor of a staged (not yet inserted) record, as the table's generated column computes it
_STAGED_ANCHORS = {"building": "ST_PointOnSurface(s.geom)", "patrol_route": "ST_PointOnSurface(s.geom)"}


def locate_staged(session: Session, table: str, stage: str) -> None:
    """The links of records staged for insertion into ``table`` (an import), by the same rule,
    before they are inserted, so the insert writes them and no row is rewritten.

    ``stage`` is a temporary table the caller made (never input) with a row number ``_n``,
    ``geom`` and, for residents, ``building_code``. Creates the temporary table
    ``_gisgrid_located (_n, grid_id, grid_code, community_code, street_code, district_code)``:
    one row per staged record that has an anchor (residents: a building, or else a point).
    """
    _check(table)
    anchor = _STAGED_ANCHORS.get(table, "s.geom")
    where = "s.building_code IS NULL AND s.geom IS NOT NULL" if table == "resident" else "s.geom IS NOT NULL"
    session.execute(text("DROP TABLE IF EXISTS _gisgrid_pts, _gisgrid_located"))
    session.execute(text(f"CREATE TEMP TABLE _gisgrid_pts ON COMMIT DROP AS SELECT s._n AS id, {anchor} AS pt "
                         f"FROM {stage} s WHERE {where}"))
    session.execute(text("CREATE INDEX ON _gisgrid_pts USING gist (pt)"))
    session.execute(text("ANALYZE _gisgrid_pts"))
    # polygon-driven, fenced, lowest code on shared edges: as _bulk
    session.execute(text(
        "CREATE TEMP TABLE _gisgrid_located ON COMMIT DROP AS SELECT DISTINCT ON (p.id) p.id AS _n, g.id AS grid_id, "
        "g.code AS grid_code, g.community_code, g.street_code, g.district_code FROM grid g CROSS JOIN LATERAL "
        "(SELECT id FROM _gisgrid_pts p WHERE ST_Intersects(g.geom, p.pt) OFFSET 0) p WHERE g.valid_to IS NULL "
        "ORDER BY p.id, g.code"))
    session.execute(text(
        "INSERT INTO _gisgrid_located WITH src AS (SELECT id, pt FROM _gisgrid_pts p WHERE NOT EXISTS "
        f"(SELECT 1 FROM _gisgrid_located k WHERE k._n = p.id)) {_LOCATE}"))
    if table == "resident":
        session.execute(text(
            "INSERT INTO _gisgrid_located SELECT s._n, b.grid_id, b.grid_code, b.community_code, b.street_code, "
            f"b.district_code FROM {stage} s JOIN building b ON b.code = s.building_code"))
    session.execute(text("DROP TABLE _gisgrid_pts"))
    session.execute(text("CREATE UNIQUE INDEX ON _gisgrid_located (_n)"))
    session.execute(text("ANALYZE _gisgrid_located"))


def link_written(session: Session, table: str, ids_table: str) -> int:
    """Link the records of ``table`` whose ids are in the temporary table ``ids_table`` (a
    column ``id``, unique: an import's written rows), polygon-driven like :func:`relink`.
    Returns rows changed. ``ids_table`` is a name the caller made, never input."""
    _check(table)
    session.execute(text(f"CREATE UNIQUE INDEX ON {ids_table} (id)"))
    session.execute(text(f"ANALYZE {ids_table}"))
    mine = f"EXISTS (SELECT 1 FROM {ids_table} k WHERE k.id = p.id)"
    if table == "resident":
        n = session.execute(text(_residents_by_building(f"r.id IN (SELECT id FROM {ids_table})"))).rowcount
        return n + _bulk(session, "resident", "geom", f"p.building_id IS NULL AND {mine}")
    return _bulk(session, table, ANCHORS[table], mine)


def _bulk(session: Session, table: str, anchor: str | None = None, where: str = "true") -> int:
    anchor = anchor or ANCHORS[table]
    session.execute(text("DROP TABLE IF EXISTS _gisgrid_link"))
    # Polygon-driven: grids outside, an index probe into the points for each grid. OFFSET 0
    # fences the lateral subquery: without it PostgreSQL flattens the lateral into a plain join
    # and runs it point-driven (a grid-index probe per point, 6-7x slower at city scale).
    session.execute(text(
        "CREATE TEMP TABLE _gisgrid_link ON COMMIT DROP AS "
        "SELECT DISTINCT ON (p.id) p.id, g.id AS grid_id, g.code AS grid_code, g.community_code, "
        "g.street_code, g.district_code "
        f"FROM grid g CROSS JOIN LATERAL (SELECT id FROM {table} p WHERE ST_Intersects(g.geom, p.{anchor}) "
        f"AND {where} OFFSET 0) p WHERE g.valid_to IS NULL ORDER BY p.id, g.code"))
    session.execute(text("ANALYZE _gisgrid_link"))      # temp tables have no statistics otherwise
    changed = session.execute(text(
        f"UPDATE {table} p SET {_SET} FROM _gisgrid_link l WHERE p.id = l.id AND ({_CHANGED})")).rowcount
    # Whatever no grid holds: unlinked, with its admin codes from the admin areas.
    changed += session.execute(text(_point_sql(
        table, anchor, f"{where} AND NOT EXISTS (SELECT 1 FROM _gisgrid_link k WHERE k.id = p.id)"))).rowcount
    session.execute(text("DROP TABLE _gisgrid_link"))
    return changed


def relink(session: Session, tables: tuple[str, ...] | None = None) -> dict[str, int]:
    """Recompute the links of every record of ``tables`` (default: all linked layers) in bulk.

    Returns
    -------
    dict
        table → number of rows whose links changed.
    """
    tables = ORDER if tables is None else tables
    for t in tables:
        _check(t)
    out = {}
    for t in ORDER:
        if t not in tables:
            continue
        if t == "resident":
            out[t] = session.execute(text(_residents_by_building("true"))).rowcount
            out[t] += session.execute(text(_point_sql("resident", "geom", "building_id IS NULL"))).rowcount
        else:
            out[t] = _bulk(session, t)
    return out
