"""Figures of one area or of the map view, aggregated in SQL: what the one map's side panel,
KPI strip and search show (the page never adds up records itself).

An *area* is a current grid (15+ digit code) or an admin area (12 digits). Every figure is
limited to the caller's jurisdiction (:func:`gisgrid.authz.scope_sql`): a field worker who opens
their community sees their own grid's households and incidents, not the neighbours'. Incident
figures take the one map's filters (:class:`gisgrid.layers.tiles.Filters`).

Without filters the figures come from the per-grid tallies (:mod:`gisgrid.layers.tallies`): the
tally rows of the grids in the selection, the few records outside every grid (and, for a map
view, the records of the grids its edge cuts) counted from their rows, and what the tally cannot
hold read beside it from small indexes (open incidents not yet due, rejected closures, today's
reports). A city-wide strip reads 40,000 tally rows instead of a million incidents. With filters
(time range, category, state) they are counted from the incidents themselves, as
``fresh=True`` does for any selection (what the tests compare the tally figures with).
"""
from __future__ import annotations

from dataclasses import dataclass

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
    "count(*) FILTER (WHERE i.satisfaction >= 4) AS satisfied, count(i.satisfaction) AS rated, "
    "count(*) FILTER (WHERE i.reported_at >= date_trunc('day', now() AT TIME ZONE 'Asia/Shanghai') "
    "AT TIME ZONE 'Asia/Shanghai') AS new_today")


_TODAY = ("date_trunc('day', now() AT TIME ZONE 'Asia/Shanghai') AT TIME ZONE 'Asia/Shanghai'")
_OPEN_LIST = ", ".join(f"'{s}'" for s in incidents.OPEN_STATES)     # literal: the partial index's predicate
_LINKED = "incident i JOIN incident_link l ON l.id = i.id"


@dataclass(frozen=True)
class _Selection:
    """Which incidents a figure counts, three ways: ``tally`` a condition on the tally rows ``t``
    wholly inside it, ``rest`` a FROM … WHERE giving the incidents ``i`` inside it that those rows
    do not hold (``{lscope}``: the jurisdiction on their links ``l``), ``where`` a condition on
    ``i``/``l`` of all of them."""
    tally: str
    rest: str
    where: str


def _select_area(level: str) -> _Selection:
    t, l = _in_area(level, "t"), _in_area(level, "l")
    return _Selection(t, f"{_LINKED} WHERE l.grid_id IS NULL AND {l} AND {{lscope}}", l)


#: the codes of an area's level and above, and how many digits of a code name each
_CHAIN = (("district", 6), ("street", 9), ("community", 12), ("grid", None))


def _in_area(level: str, alias: str) -> str:
    """``alias`` (a table with the four codes) inside the area of ``level`` (``:c`` and its
    parents ``:c_<level>``, bound by :func:`_area_params`): with the parents' codes one
    (district, street, community, grid) index serves every level."""
    conds = []
    for lv, _ in _CHAIN:
        conds.append(f"{alias}.{AREA_COLUMN[lv]} = :{'c' if lv == level else 'c_' + lv}")
        if lv == level:
            return " AND ".join(conds)
    raise ValueError(level)


def _area_params(level: str, code: str) -> dict:
    out = {"c": code}
    for lv, digits in _CHAIN:
        if lv == level:
            return out
        out[f"c_{lv}"] = code[:digits].ljust(12, "0")
    raise ValueError(level)


_EVERYWHERE = _Selection("TRUE", f"{_LINKED} WHERE l.grid_id IS NULL AND {{lscope}}", "TRUE")
_BOX = "ST_MakeEnvelope(:w, :s, :e, :n, 4326)"
#: a map view: the grids it covers from the tally; from their rows, the incidents outside every
#: grid and those of the grids its edge cuts (a grid's incidents lie in it: found from the
#: incident index, a probe per cut grid)
_IN_BOX = _Selection(
    # (the grids meeting the view, each marked covered or not: the planner estimates how many
    # meet a box well, how many it covers badly, and would probe the tally once per grid)
    f"t.grid_id IN (SELECT g.id FROM (SELECT g.id, g.geom @ {_BOX} AS covered FROM grid g "
    f"WHERE g.valid_to IS NULL AND g.geom && {_BOX} OFFSET 0) g WHERE g.covered)",
    f"(SELECT i.state, i.deadline, i.merged_into_id, i.satisfaction FROM {_LINKED} "
    f"WHERE l.grid_id IS NULL AND i.geom && {_BOX} AND {{lscope}} UNION ALL "
    "SELECT c.* FROM grid g CROSS JOIN LATERAL (SELECT i.state, i.deadline, i.merged_into_id, i.satisfaction "
    f"FROM {_LINKED} WHERE i.geom && g.geom AND i.geom && {_BOX} AND l.grid_id = g.id AND {{lscope}} OFFSET 0) c "
    f"WHERE g.valid_to IS NULL AND g.geom && {_BOX} AND NOT g.geom @ {_BOX}) i WHERE TRUE",   # (OFFSET 0: per grid)
    f"i.geom && {_BOX}")

_STATE_COLUMNS = ", ".join(incidents.STATES)
#: per part of a selection: received, by state, due (open with a deadline), closed and not
#: merged, rated, satisfied (4 or 5) – from tally rows ``t`` or from incidents ``i``
_TALLY_PART = ("SELECT sum(t.n) AS n, " + ", ".join(f"sum(t.{st}) AS {st}" for st in incidents.STATES)
               + ", sum(t.due) AS due, sum(t.closed - t.merged) AS closed_unmerged, sum(t.rated) AS rated, "
               "sum(t.satisfied) AS satisfied FROM incident_tally t WHERE {tally} AND {tscope}")
_ROW_PART = ("SELECT count(*), " + ", ".join(f"count(*) FILTER (WHERE i.state = '{st}')" for st in incidents.STATES)
             + ", count(*) FILTER (WHERE i.state = ANY(:open) AND i.deadline IS NOT NULL), "
             "count(*) FILTER (WHERE i.state = 'closed' AND i.merged_into_id IS NULL), count(i.satisfaction), "
             "count(*) FILTER (WHERE i.satisfaction >= 4) FROM {rest}")
_TALLIED = (
    "SELECT coalesce(sum(n), 0)::int AS received, "
    + ", ".join(f"coalesce(sum({st}), 0)::int AS {st}" for st in incidents.STATES)
    + ", coalesce(sum(due), 0)::int AS due, coalesce(sum(closed_unmerged), 0)::int AS closed_unmerged, "
    "coalesce(sum(rated), 0)::int AS rated, coalesce(sum(satisfied), 0)::int AS satisfied, "
    # beside the tally, from small indexes: open and not yet due, closed after a rejection, today's
    f"(SELECT count(*) FROM {_LINKED} WHERE i.state IN ({_OPEN_LIST}) AND i.deadline >= now() "
    "AND {where} AND {lscope})::int AS not_due, "
    "(SELECT count(DISTINCT i.id) FROM incident_event e JOIN incident i ON i.id = e.incident_id "
    "JOIN incident_link l ON l.id = i.id WHERE e.note LIKE '[reject]%' AND i.state = 'closed' "
    "AND i.merged_into_id IS NULL AND {where} AND {lscope})::int AS rejected, "
    f"(SELECT count(*) FROM {_LINKED} WHERE i.reported_at >= {_TODAY} AND {{where}} AND {{lscope}})::int AS new_today "
    f"FROM ({_TALLY_PART} UNION ALL {_ROW_PART}) u")


def _tallied(session: Session, principal: authz.Principal, sel: _Selection, params: dict) -> dict:
    """Figures and counts by state of a selection, without filters, from the tally."""
    tscope, tp = authz.scope_sql(principal, "t")
    lscope, lp = authz.scope_sql(principal, "l")
    sql = _TALLIED.format(tally=sel.tally, rest=sel.rest.format(lscope=lscope), where=sel.where, tscope=tscope,
                          lscope=lscope)
    row = dict(session.execute(text(sql), {**params, **tp, **lp, "open": list(incidents.OPEN_STATES)}).mappings().one())
    row["open"] = sum(row[st] for st in incidents.OPEN_STATES)
    row["overdue"] = row.pop("due") - row.pop("not_due")
    row["resolved"] = row.pop("closed_unmerged") - row.pop("rejected")
    return row


def _rates(row) -> dict:
    out = {k: int(row[k]) for k in ("received", "open", "overdue", "resolved", "new_today")}
    out["resolution_rate"] = round(row["resolved"] / row["received"], 4) if row["received"] else None
    out["satisfaction_rate"] = round(row["satisfied"] / row["rated"], 4) if row["rated"] else None
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


def summary(session: Session, code: str, principal: authz.Principal, filters: Filters = Filters(),
            fresh: bool = False) -> dict:
    """The side panel of one area: its team (names, roles, phones), households, buildings,
    residents, incidents by state and by category, the most recent incidents, and the
    resolution (化解率) and satisfaction (满意率) rates, all inside the caller's jurisdiction.

    Parameters
    ----------
    code : str
        A current grid's code or an admin area's 12-digit code.
    filters : Filters
        Applied to every incident figure.
    fresh : bool, default False
        Count every figure from the records themselves, not from the tallies (what the
        filtered panel does; the tests compare the two).

    Raises
    ------
    InvalidInput
        for a malformed code; NotFound for an area outside the jurisdiction or unknown.
    """
    a = area(session, code, principal)
    level = a["level"]
    fsql, fparams = filters.sql("i")
    out = dict(a)
    scope, sp = authz.scope_sql(principal, "l")
    params = {**_area_params(level, code), "open": list(incidents.OPEN_STATES), **fparams, **sp}
    out["buildings"], out["households"] = _buildings(session, principal, level, code, fresh)
    # one link row per resident (removed with it): counted from the link table's area index
    out["residents"] = session.execute(text(
        f"SELECT count(*) FROM resident_link l WHERE {_in_area(level, 'l')} AND {scope}"), params).scalar()
    where = f"{_in_area(level, 'l')} AND {scope} AND {fsql}"
    if filters.tallied() and not fresh:
        figures = _tallied(session, principal, _select_area(level), _area_params(level, code))
        by_state = [(st, figures[st]) for st in incidents.STATES if figures[st]]
    else:
        figures = session.execute(text(f"SELECT {_FIGURES} FROM {_INCIDENTS} WHERE {where}"), params).mappings().one()
        by_state = session.execute(text(f"SELECT i.state, count(*) FROM {_INCIDENTS} WHERE {where} GROUP BY 1"),
                                   params).all()
    out.update(_rates(figures))
    out["by_state"] = [{"state": st, "name": incidents.STATES[st], "n": n}
                       for st, n in sorted(by_state, key=lambda r: (-r[1], list(incidents.STATES).index(r[0])))]
    # named as the catalogue of the selection's district names them (the default one's names
    # when the selection spans districts)
    name = incidents.category_name_sql("i.category", "CASE WHEN min(l.district_code) = max(l.district_code) "
                                                     "THEN min(l.district_code) END")
    out["by_category"] = [{"category": c, "name": nm, "n": n} for c, nm, n in session.execute(
        text(f"SELECT i.category, {name}, count(*) FROM {_INCIDENTS} WHERE {where} GROUP BY 1 ORDER BY 3 DESC, 1"),
        params)]
    out["recent"] = [dict(r, state_name=incidents.STATES[r["state"]],
                          reported_at=r["reported_at"].isoformat()) for r in session.execute(text(
        f"SELECT i.code, i.state, i.category, {incidents.category_name_sql('i.category', 'l.district_code')} "
        "AS category_name, i.reported_at, i.address, ST_X(i.geom) AS lon, ST_Y(i.geom) AS lat "
        f"FROM {_INCIDENTS} WHERE {where} ORDER BY i.reported_at DESC, i.id DESC LIMIT {RECENT}"), params).mappings()]
    out["team"] = staff.team(session, a["id"]) if a["level"] == "grid" else []
    if level != "grid":
        gscope, gp = authz.scope_sql(principal, "g", grid_col="code")
        out["grids"] = session.execute(text(
            f"SELECT count(*) FROM grid g WHERE g.valid_to IS NULL AND g.{AREA_COLUMN[level]} = :c AND {gscope}"),
            {"c": code, **gp}).scalar()
    return out


def _buildings(session: Session, principal: authz.Principal, level: str, code: str, fresh: bool) -> tuple[int, int]:
    """Buildings and households of an area: the building tally of its grids and the buildings
    outside every grid (or every building, ``fresh``)."""
    lscope, lp = authz.scope_sql(principal, "l")
    rows = f"FROM building b JOIN building_link l ON l.id = b.id WHERE {_in_area(level, 'l')} AND {lscope}"
    if fresh:
        sql = f"SELECT count(*), coalesce(sum(b.households), 0) {rows}"
    else:
        tscope, tp = authz.scope_sql(principal, "t")
        lp.update(tp)
        sql = ("SELECT coalesce(sum(n), 0), coalesce(sum(h), 0) FROM ("
               f"SELECT sum(t.buildings) AS n, sum(t.households) AS h FROM building_tally t WHERE {_in_area(level, 't')} "
               f"AND {tscope} UNION ALL SELECT count(*), sum(b.households) {rows} AND l.grid_id IS NULL) u")
    n, households = session.execute(text(sql), {**_area_params(level, code), **lp}).one()
    return int(n), int(households)


def kpi(session: Session, principal: authz.Principal, *, bbox=None, code: str | None = None,
        filters: Filters = Filters(), fresh: bool = False) -> dict:
    """The KPI strip: new today, received, open, overdue, resolution and satisfaction rates of
    the incidents in ``bbox`` (``(w, s, e, n)`` degrees) or in area ``code`` (or everywhere the
    caller may see), with the filters. ``fresh``: counted from the incidents themselves, not
    from the tally (what the filtered strip does)."""
    params, level = {}, None
    if code:
        level = area(session, code, principal)["level"]
        params.update(_area_params(level, code))
    if bbox is not None:
        params.update(w=bbox[0], s=bbox[1], e=bbox[2], n=bbox[3])
    if filters.tallied() and not fresh and not (code and bbox is not None):
        sel = _select_area(level) if code else _IN_BOX if bbox is not None else _EVERYWHERE
        return _rates(_tallied(session, principal, sel, params))
    scope, sp = authz.scope_sql(principal, "l")
    fsql, fp = filters.sql("i")
    conds = [scope, fsql]
    params.update(sp, **fp, open=list(incidents.OPEN_STATES))
    if code:
        conds.append(_in_area(level, "l"))
    if bbox is not None:
        conds.append(f"i.geom && {_BOX}")
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
