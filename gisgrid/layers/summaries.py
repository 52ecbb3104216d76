"""Figures of one area or of the map view, aggregated in SQL: what the one map's side panel,
KPI strip and search show (the page never adds up records itself).

An *area* is a current grid (15+ digit code) or an admin area (12 digits). Every figure is
limited to the caller's jurisdiction (:func:`gisgrid.authz.scope_sql`): a field worker who opens
their community sees their own grid's households and incidents, not the neighbours'. Incident
figures take the one map's filters (:class:`gisgrid.layers.tiles.Filters`).
"""
from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

from gisgrid import authz
from gisgrid.errors import InvalidInput, NotFound
from gisgrid.layers import incidents, staff
from gisgrid.layers.tiles import Filters

#: the column of a linked table that holds an area of each level
AREA_COLUMN = {"grid": "grid_code", "community": "community_code", "street": "street_code", "district": "district_code"}
RECENT = 10
#: incidents with their links (alias ``i``, link ``l``)
_INCIDENTS = "incident i LEFT JOIN incident_link l ON l.id = i.id"

# one pass over the incidents of the selection: received, open, overdue, resolved, satisfaction
_FIGURES = (
    "count(*) AS received, count(*) FILTER (WHERE i.state = ANY(:open)) AS open, "
    "count(*) FILTER (WHERE i.state = ANY(:open) AND i.deadline < now()) AS overdue, "
    f"count(*) FILTER (WHERE {incidents.RESOLVED_SQL}) AS resolved, "
    "count(*) FILTER (WHERE i.satisfaction >= 4) AS satisfied, count(i.satisfaction) AS evaluated, "
    "count(*) FILTER (WHERE i.reported_at >= date_trunc('day', now() AT TIME ZONE 'Asia/Shanghai') "
    "AT TIME ZONE 'Asia/Shanghai') AS new_today")


def _rates(row) -> dict:
    out = {k: int(row[k]) for k in ("received", "open", "overdue", "resolved", "new_today")}
    out["resolution_rate"] = round(row["resolved"] / row["received"], 4) if row["received"] else None
    out["satisfaction_rate"] = round(row["satisfied"] / row["evaluated"], 4) if row["evaluated"] else None
    return out


def area(session: Session, code: str, principal: authz.Principal) -> dict:
    """The grid or admin area ``code`` if the caller may see it: ``{code, name, level, id,
    bounds}``; NotFound otherwise (an area outside the jurisdiction is not revealed)."""
    if not isinstance(code, str) or not code.isdigit() or len(code) not in (12, 15, 16, 17, 18, 19, 20):
        raise InvalidInput(f"an area code is 12 digits (admin area) or 15+ digits (grid), got {code!r}", field="code")
    if len(code) > 12:
        scope, params = authz.scope_sql(principal, "g", grid_col="code")
        row = session.execute(text(
            "SELECT g.id, g.code, g.name, 'grid' AS level, g.community_code, ST_XMin(g.geom) AS w, "
            "ST_YMin(g.geom) AS s, ST_XMax(g.geom) AS e, ST_YMax(g.geom) AS n FROM grid g "
            f"WHERE g.code = :c AND g.valid_to IS NULL AND {scope}"), {"c": code, **params}).mappings().first()
    else:
        scope, params = authz.admin_area_sql(principal, "a")
        row = session.execute(text(
            "SELECT a.id, a.code, a.name, a.level, a.community_code, ST_XMin(a.geom) AS w, ST_YMin(a.geom) AS s, "
            f"ST_XMax(a.geom) AS e, ST_YMax(a.geom) AS n FROM admin_area a WHERE a.code = :c AND {scope}"),
            {"c": code, **params}).mappings().first()
    if row is None:
        raise NotFound("no area with this code in your jurisdiction", field="code")
    out = {k: row[k] for k in ("id", "code", "name", "level")}
    out["bounds"] = [row["w"], row["s"], row["e"], row["n"]] if row["w"] is not None else None
    return out


def summary(session: Session, code: str, principal: authz.Principal, filters: Filters = Filters()) -> dict:
    """The side panel of one area: its team (names, roles, phones), households, buildings,
    residents, incidents by state and by category, the most recent incidents, and the
    resolution (化解率) and satisfaction (满意率) rates, all inside the caller's jurisdiction.

    Parameters
    ----------
    code : str
        A current grid's code or an admin area's 12-digit code.
    filters : Filters
        Applied to every incident figure.

    Raises
    ------
    InvalidInput
        for a malformed code; NotFound for an area outside the jurisdiction or unknown.
    """
    a = area(session, code, principal)
    col = AREA_COLUMN[a["level"]]
    fsql, fparams = filters.sql("i")
    out = dict(a)
    params = {"c": code, "open": list(incidents.OPEN_STATES), **fparams}
    counts = {}
    scope, sp = authz.scope_sql(principal, "l")
    for alias, table in (("b", "building"), ("r", "resident")):
        counts[table] = session.execute(text(
            f"SELECT count(*), coalesce(sum({'b.households' if alias == 'b' else '0'}), 0) FROM {table} {alias} "
            f"JOIN {table}_link l ON l.id = {alias}.id WHERE l.{col} = :c AND {scope}"), {**params, **sp}).one()
    out["buildings"], out["households"] = int(counts["building"][0]), int(counts["building"][1])
    out["residents"] = int(counts["resident"][0])
    where = f"l.{col} = :c AND {scope} AND {fsql}"
    params.update(sp)
    out.update(_rates(session.execute(text(f"SELECT {_FIGURES} FROM {_INCIDENTS} WHERE {where}"),
                                      params).mappings().one()))
    out["by_state"] = [{"state": s, "name": incidents.STATES[s], "n": n} for s, n in session.execute(text(
        f"SELECT i.state, count(*) FROM {_INCIDENTS} WHERE {where} GROUP BY 1 ORDER BY 2 DESC"), params)]
    out["by_category"] = [{"category": c, "name": incidents.CATEGORIES.get(c, c), "n": n} for c, n in session.execute(
        text(f"SELECT i.category, count(*) FROM {_INCIDENTS} WHERE {where} GROUP BY 1 ORDER BY 2 DESC, 1"), params)]
    out["recent"] = [dict(r, state_name=incidents.STATES[r["state"]],
                          category_name=incidents.CATEGORIES.get(r["category"], r["category"]),
                          reported_at=r["reported_at"].isoformat()) for r in session.execute(text(
        "SELECT i.code, i.state, i.category, i.reported_at, i.address, ST_X(i.geom) AS lon, ST_Y(i.geom) AS lat "
        f"FROM {_INCIDENTS} WHERE {where} ORDER BY i.reported_at DESC, i.id DESC LIMIT {RECENT}"), params).mappings()]
    out["team"] = staff.team(session, a["id"]) if a["level"] == "grid" else []
    if a["level"] != "grid":
        gscope, gp = authz.scope_sql(principal, "g", grid_col="code")
        out["grids"] = session.execute(text(
            f"SELECT count(*) FROM grid g WHERE g.valid_to IS NULL AND g.{col if col != 'grid_code' else 'code'} = :c "
            f"AND {gscope}"), {"c": code, **gp}).scalar()
    return out


def kpi(session: Session, principal: authz.Principal, *, bbox=None, code: str | None = None,
        filters: Filters = Filters()) -> dict:
    """The KPI strip: new today, received, open, overdue, resolution and satisfaction rates of
    the incidents in ``bbox`` (``(w, s, e, n)`` degrees) or in area ``code`` (or everywhere the
    caller may see), with the filters."""
    scope, sp = authz.scope_sql(principal, "l")
    fsql, fp = filters.sql("i")
    conds, params = [scope, fsql], {**sp, **fp, "open": list(incidents.OPEN_STATES)}
    if code:
        a = area(session, code, principal)
        conds.append(f"l.{AREA_COLUMN[a['level']]} = :c")
        params["c"] = code
    if bbox is not None:
        conds.append("i.geom && ST_MakeEnvelope(:w, :s, :e, :n, 4326)")
        params.update(w=bbox[0], s=bbox[1], e=bbox[2], n=bbox[3])
    row = session.execute(text(f"SELECT {_FIGURES} FROM {_INCIDENTS} WHERE {' AND '.join(conds)}"),
                          params).mappings().one()
    return _rates(row)


def parse_bbox(raw: str | None):
    """``"w,s,e,n"`` in degrees → a tuple, or None; InvalidInput naming ``bbox`` otherwise."""
    if raw is None or raw == "":
        return None
    try:
        w, s, e, n = (float(v) for v in raw.split(","))
    except ValueError:
        raise InvalidInput(f"bbox must be four numbers 'west,south,east,north', got {raw!r}", field="bbox") from None
    if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
        raise InvalidInput(f"bbox must have -180 <= west < east <= 180 and -90 <= south < north <= 90, got {raw!r}",
                           field="bbox")
    return w, s, e, n


SEARCH_LIMIT = 8


def search(session: Session, principal: authz.Principal, q: str) -> list[dict]:
    """Grids and admin areas by code or name, buildings by address or name, incidents by number:
    ``[{kind, code, label, lon, lat, zoom}]`` inside the caller's jurisdiction."""
    q = (q or "").strip()
    if not 1 <= len(q) <= 100:
        raise InvalidInput(f"q must be 1 to 100 characters, got {len(q)}", field="q")
    like = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    prefix = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    gscope, gp = authz.scope_sql(principal, "g", grid_col="code")
    ascope, ap = authz.admin_area_sql(principal, "a")
    bscope, bp = authz.scope_sql(principal, "bl")
    iscope, ip = authz.scope_sql(principal, "il")
    sql = f"""
        (SELECT 'grid' AS kind, g.code, g.name AS label, ST_X(ST_PointOnSurface(g.geom)) AS lon,
                ST_Y(ST_PointOnSurface(g.geom)) AS lat, 16 AS zoom FROM grid g
         WHERE g.valid_to IS NULL AND (g.code LIKE :prefix OR g.name LIKE :like) AND {gscope} ORDER BY g.code LIMIT :n)
        UNION ALL
        (SELECT a.level, a.code, a.name, ST_X(ST_PointOnSurface(a.geom)), ST_Y(ST_PointOnSurface(a.geom)),
                CASE a.level WHEN 'community' THEN 15 WHEN 'street' THEN 13 ELSE 11 END FROM admin_area a
         WHERE a.geom IS NOT NULL AND (a.code LIKE :prefix OR a.name LIKE :like) AND {ascope} ORDER BY a.code LIMIT :n)
        UNION ALL
        (SELECT 'building', b.code, coalesce(b.address, b.name, b.code), ST_X(b.anchor), ST_Y(b.anchor), 18
         FROM building b LEFT JOIN building_link bl ON bl.id = b.id WHERE (b.address LIKE :like OR b.name LIKE :like OR b.code = :q) AND {bscope}
         ORDER BY b.code LIMIT :n)
        UNION ALL
        (SELECT 'incident', i.code, i.code || ' ' || coalesce(i.address, i.category), ST_X(i.geom), ST_Y(i.geom), 18
         FROM incident i LEFT JOIN incident_link il ON il.id = i.id WHERE i.code LIKE :prefix AND {iscope} ORDER BY i.code LIMIT :n)"""
    rows = session.execute(text(sql), {"q": q, "like": like, "prefix": prefix, "n": SEARCH_LIMIT,
                                       **gp, **ap, **bp, **ip}).mappings()
    return [dict(r) for r in rows]
