"""Grid plans (网格调整方案): draft boundaries a planner edits before they replace the current grids.

A plan covers a scope (one community or a whole street) and starts as a copy of the scope's
current grids, one **cell** per grid. Its life is a state machine::

    draft ──submit──▶ review ──publish──▶ published ──rollback──▶ rolled_back
      ▲  ◀──reopen──   │
      └─ discard ◀─────┘ (draft or review) ──▶ discarded

Edits (replace, reshape, split, merge, propose) are only allowed in ``draft``. Every edit
takes the plan's row lock, carries the version of each cell it touches (a stale one is a 409:
two planners never overwrite each other silently), gives every cell it changes the plan's next
sequence number as its new version, and is kept in ``plan_edit`` (who, when, the cells before
and after) so the last edits can be undone in order.

Publishing is one transaction: the scope's current grids get ``valid_to``, the cells become
grids (codes kept where a cell keeps a grid's code, new deterministic serials otherwise), staff
assignments follow the code, every linked record of the scope is re-linked
(:func:`gisgrid.layers.linking.link_ids`), and open incidents whose grid changed go to the new
grid's head. Any failure leaves everything as it was. ``rollback`` publishes the grids the plan
replaced again, the same way.

Geometry is stored in EPSG:4326; checks and proposals run in the district's CGCS2000
Gauss-Krüger zone (:func:`gisgrid.spatial.crs.gk_zone_for`).
"""
from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import shapely
from sqlalchemy import (ARRAY, CheckConstraint, DateTime, Float, ForeignKey, Integer, String, UniqueConstraint,
                        func, text)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, Session, mapped_column

from gisgrid import authz
from gisgrid.db.base import Base
from gisgrid.errors import Conflict, IllegalTransition, InvalidGeometry, InvalidInput, NotFound
from gisgrid.layers import admin_areas, audit, linking
from gisgrid.layers._columns import geom_type, gist, types, valid

STATES = ("draft", "review", "published", "discarded", "rolled_back")
#: action → (states it may start from, state it leads to)
TRANSITIONS = {"submit": (("draft",), "review"), "reopen": (("review",), "draft"),
               "discard": (("draft", "review"), "discarded"), "publish": (("review",), "published"),
               "rollback": (("published",), "rolled_back")}
EDIT_OPS = ("replace", "reshape", "split", "merge", "propose")


class GridPlan(Base):
    __tablename__ = "grid_plan"
    __table_args__ = (
        CheckConstraint("state IN ('draft', 'review', 'published', 'discarded', 'rolled_back')", name="state"),
        CheckConstraint("target > 0", name="target"),
        CheckConstraint("tolerance >= 0 AND tolerance < 1", name="tolerance"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    scope_code: Mapped[str] = mapped_column(String(12), ForeignKey("admin_area.code"), index=True)
    state: Mapped[str] = mapped_column(String(12), default="draft", server_default="draft")
    target: Mapped[int] = mapped_column(Integer, default=250, server_default="250")
    tolerance: Mapped[float] = mapped_column(Float, default=0.10, server_default="0.1")
    #: the last edit's sequence number; a cell's version is the sequence of its last change
    seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: the current grids the plan was copied from (publish refuses if they changed meanwhile)
    base_grid_ids: Mapped[list[int]] = mapped_column(ARRAY(Integer), default=list, server_default="{}")
    #: the grids a publish retired (rollback restores them)
    replaced_grid_ids: Mapped[list[int] | None] = mapped_column(ARRAY(Integer))
    created_by: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    published_by: Mapped[str | None] = mapped_column(String(100))
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    rolled_back_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class PlanCell(Base):
    __tablename__ = "plan_cell"
    __table_args__ = (UniqueConstraint("plan_id", "code"), valid(), types("geom", "MultiPolygon"), gist("plan_cell"))

    id: Mapped[int] = mapped_column(primary_key=True)
    plan_id: Mapped[int] = mapped_column(Integer, ForeignKey("grid_plan.id", ondelete="CASCADE"), index=True)
    code: Mapped[str] = mapped_column(String(20))
    community_code: Mapped[str] = mapped_column(String(12))
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    geom = mapped_column(geom_type("MULTIPOLYGON"), nullable=False)


class PlanEdit(Base):
    """One edit of a plan: the cells it removed or changed (``before``, with geometry as WKB
    hex) and the cells it left (``after``: code and version), so it can be undone."""
    __tablename__ = "plan_edit"
    __table_args__ = (CheckConstraint("op IN ('replace', 'reshape', 'split', 'merge', 'propose')", name="op"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    plan_id: Mapped[int] = mapped_column(Integer, ForeignKey("grid_plan.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    op: Mapped[str] = mapped_column(String(10))
    actor: Mapped[str | None] = mapped_column(String(100))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    before: Mapped[list] = mapped_column(JSONB)
    after: Mapped[list] = mapped_column(JSONB)
    note: Mapped[str | None] = mapped_column(String(500))
    undone_by: Mapped[str | None] = mapped_column(String(100))
    undone_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


# -- reading ----------------------------------------------------------------------------------
_PLAN_COLS = ("id", "name", "scope_code", "state", "target", "tolerance", "seq", "created_by", "created_at",
              "published_by", "published_at", "rolled_back_at")


def _plain(row: dict) -> dict:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


def _scope_record(scope_code: str) -> dict:
    return {k: v for k, v in admin_areas.chain(scope_code).items() if v}


def _plan_row(session: Session, principal: authz.Principal, plan_id, *, lock: bool = False) -> dict:
    """The plan, if the principal's jurisdiction covers its scope (else 404, not revealed)."""
    try:
        pid = int(plan_id)
    except (TypeError, ValueError):
        raise InvalidInput(f"plan id must be an integer, got {plan_id!r}", field="plan") from None
    row = session.execute(text(
        f"SELECT {', '.join(_PLAN_COLS)}, base_grid_ids, replaced_grid_ids FROM grid_plan WHERE id = :id"
        + (" FOR UPDATE" if lock else "")), {"id": pid}).mappings().first()
    if row is None or not authz.covers(principal, _scope_record(row["scope_code"])):
        raise NotFound(f"no plan {plan_id} in your jurisdiction", field="plan")
    return dict(row)


def list_plans(session: Session, principal: authz.Principal, state: str | None = None) -> list[dict]:
    """Plans whose scope lies in the principal's jurisdiction, newest first."""
    if state is not None and state not in STATES:
        raise InvalidInput(f"state must be one of {', '.join(STATES)}, got {state!r}", field="state")
    rows = session.execute(text(
        f"SELECT {', '.join(_PLAN_COLS)} FROM grid_plan WHERE (CAST(:state AS text) IS NULL OR state = :state) ORDER BY id DESC"),
        {"state": state}).mappings()
    return [_plain(dict(r)) for r in rows if authz.covers(principal, _scope_record(r["scope_code"]))]


def get(session: Session, principal: authz.Principal, plan_id) -> dict:
    """The plan with its cells as GeoJSON features and its edit history."""
    plan = _plan_row(session, principal, plan_id)
    out = _plain({k: plan[k] for k in _PLAN_COLS})
    out["cells"] = cell_features(session, plan["id"])
    out["edits"] = [_plain(dict(r)) for r in session.execute(text(
        "SELECT seq, op, actor, at, note, undone_by, undone_at FROM plan_edit WHERE plan_id = :p ORDER BY seq"),
        {"p": plan["id"]}).mappings()]
    out["allowed"] = [a for a, (src, _) in TRANSITIONS.items() if plan["state"] in src]
    return out


def cell_features(session: Session, plan_id: int) -> list[dict]:
    rows = session.execute(text(
        "SELECT code, community_code, version, ST_AsGeoJSON(geom, 7) AS gj FROM plan_cell WHERE plan_id = :p "
        "ORDER BY code"), {"p": plan_id}).mappings()
    return [{"type": "Feature", "geometry": json.loads(r["gj"]),
             "properties": {"code": r["code"], "community_code": r["community_code"], "version": r["version"]}}
            for r in rows]


# -- the scope: communities, grids, buildings, roads --------------------------------------------
def _communities(session: Session, scope_code: str) -> dict[str, dict]:
    """code → {name, kind, geom (4326 shapely)} of the communities a scope holds."""
    level = admin_areas.level_of(scope_code)
    if level == "district":
        raise InvalidInput("a plan's scope is a community or a street, not a district", field="scope")
    col = "code" if level == "community" else "parent_code"
    rows = session.execute(text(
        f"SELECT code, name, kind, ST_AsBinary(geom) AS wkb FROM admin_area WHERE level = 'community' AND {col} = :c "
        "AND geom IS NOT NULL ORDER BY code"), {"c": scope_code}).mappings().all()
    if not rows:
        admin_areas.get(session, scope_code)      # 422 when the code names nothing
        raise InvalidInput(f"{scope_code} has no community with a boundary to plan", field="scope")
    return {r["code"]: {"name": r["name"], "kind": r["kind"], "geom": shapely.from_wkb(bytes(r["wkb"]))} for r in rows}


#: the link columns a plan reads (one place, for when links move to narrow tables)
_BUILDINGS_SQL = (
    "SELECT b.id, b.households, l.grid_code, ST_X(b.anchor) AS x, ST_Y(b.anchor) AS y FROM building b "
    + linking.join_sql("building", "b") + " WHERE ST_Intersects(b.anchor, ST_GeomFromWKB(:scope, 4326)) ORDER BY b.id")
_MAJOR_ROADS_SQL = (
    "SELECT ST_AsBinary(ST_Intersection(geom, ST_GeomFromWKB(:scope, 4326))) FROM road "
    "WHERE kind = ANY(:kinds) AND ST_Intersects(geom, ST_GeomFromWKB(:scope, 4326))")
_ALL_ROADS_SQL = (
    "SELECT ST_AsBinary(ST_Intersection(geom, ST_GeomFromWKB(:scope, 4326))) FROM road "
    "WHERE ST_Intersects(geom, ST_GeomFromWKB(:scope, 4326))")


class _Scope:
    """The scope of a plan loaded once: communities, buildings, roads, and the metric CRS."""

    def __init__(self, session: Session, scope_code: str):
        from gisgrid.layers.roads import MAJOR
        from gisgrid.spatial import crs

        self.communities = _communities(session, scope_code)
        union = shapely.union_all([c["geom"] for c in self.communities.values()])
        self.metric = crs.gk_zone_for(union.centroid.x)
        wkb = shapely.to_wkb(union)
        rows = session.execute(text(_BUILDINGS_SQL), {"scope": wkb}).all()
        self.building_ids = np.asarray([r[0] for r in rows], dtype=np.int64)
        self.households = np.asarray([r[1] for r in rows], dtype=np.int64)
        self.building_grid = [r[2] for r in rows]
        ll = shapely.points(np.asarray([(r[3], r[4]) for r in rows], dtype=float).reshape(-1, 2))
        self.points = self.to_metric(ll)
        major = [shapely.from_wkb(bytes(r[0])) for r in session.execute(
            text(_MAJOR_ROADS_SQL), {"scope": wkb, "kinds": list(MAJOR)})]
        every = [shapely.from_wkb(bytes(r[0])) for r in session.execute(text(_ALL_ROADS_SQL), {"scope": wkb})]
        self.major_roads = self.to_metric(np.asarray(major, dtype=object))
        self.roads = self.to_metric(np.asarray(every, dtype=object))

    def _transform(self, geoms, src, dst):
        import pyproj

        tr = pyproj.Transformer.from_crs(src, dst, always_xy=True)
        return shapely.transform(np.asarray(geoms, dtype=object),
                                 lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))

    def to_metric(self, geoms):
        """Projected to the metric CRS. Edges are first cut into pieces of at most 0.0002° (about
        20 m) so a long straight edge in lon/lat and the same edge split at a neighbour's vertex
        stay the same line once projected (else they part by centimetres over a kilometre)."""
        if not len(geoms):
            return np.asarray(geoms, dtype=object)
        return self._transform(shapely.segmentize(np.asarray(geoms, dtype=object), 0.0002), "EPSG:4326", self.metric)

    def to_storage(self, geoms):
        return self._transform(geoms, self.metric, "EPSG:4326")

    def area_metric(self, code: str):
        return self.to_metric([self.communities[code]["geom"]])[0]


def _cells(session: Session, plan_id: int, *, lock: bool = False) -> dict[str, dict]:
    rows = session.execute(text(
        "SELECT code, community_code, version, ST_AsBinary(geom) AS wkb FROM plan_cell WHERE plan_id = :p ORDER BY code"
        + (" FOR UPDATE" if lock else "")), {"p": plan_id}).mappings()
    return {r["code"]: {"community_code": r["community_code"], "version": r["version"],
                        "geom": shapely.from_wkb(bytes(r["wkb"]))} for r in rows}


# -- creating ---------------------------------------------------------------------------------
def create(session: Session, principal: authz.Principal, scope_code: str, name: str | None = None, *,
           target: int | None = None, tolerance: float = 0.10) -> dict:
    """A draft plan for ``scope_code`` (a community or a street), holding a copy of its current grids.

    Parameters
    ----------
    target : households per grid; default 250 for an urban community, 150 for a rural one
    tolerance : allowed deviation, a fraction in [0, 1)

    Raises
    ------
    InvalidInput, UnknownReference (422), Forbidden (outside the jurisdiction)
    """
    from gisgrid.layers.grids import TARGET_HOUSEHOLDS

    authz.require(principal, "plan")
    if not isinstance(scope_code, str):
        raise InvalidInput(f"scope must be a 12-digit admin code, got {scope_code!r}", field="scope")
    comms = _communities(session, scope_code)
    if not authz.covers(principal, _scope_record(scope_code)):
        raise authz.Forbidden(f"{scope_code} is outside your jurisdiction")
    kinds = {c["kind"] for c in comms.values()}
    target = _target(TARGET_HOUSEHOLDS["rural" if kinds == {"rural"} else "urban"] if target is None else target)
    tolerance = _tolerance(tolerance)
    name = (name or "").strip() or f"{scope_code} {datetime.now():%Y-%m-%d %H:%M}"
    if len(name) > 200:
        raise InvalidInput(f"name is {len(name)} characters; at most 200", field="name")
    pid = session.execute(text(
        "INSERT INTO grid_plan (name, scope_code, target, tolerance, created_by, base_grid_ids) "
        "SELECT :n, :s, :t, :tol, :a, coalesce(array_agg(id ORDER BY id), '{}') FROM grid "
        "WHERE valid_to IS NULL AND community_code = ANY(:c) RETURNING id"),
        {"n": name, "s": scope_code, "t": target, "tol": tolerance, "a": principal.username,
         "c": list(comms)}).scalar()
    session.execute(text(
        "INSERT INTO plan_cell (plan_id, code, community_code, version, geom) "
        "SELECT :p, code, community_code, 0, geom FROM grid WHERE valid_to IS NULL AND community_code = ANY(:c)"),
        {"p": pid, "c": list(comms)})
    audit.record(session, principal.username, "create", "grid_plan", pid,
                 after={"scope": scope_code, "target": target, "tolerance": tolerance})
    return get(session, principal, pid)


def _target(value) -> int:
    try:
        t = int(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"target must be a whole number of households, got {value!r}", field="target") from None
    if not 1 <= t <= 100_000 or (isinstance(value, float) and value != t):
        raise InvalidInput(f"target must be a whole number in 1..100000, got {value!r}", field="target")
    return t


def _tolerance(value) -> float:
    try:
        tol = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"tolerance must be a fraction such as 0.10, got {value!r}", field="tolerance") from None
    if not 0 <= tol < 1:
        raise InvalidInput(f"tolerance must be in [0, 1) (0.10 = ±10 %), got {value!r}", field="tolerance")
    return tol


# -- checks -----------------------------------------------------------------------------------
def _layout(scope: _Scope, cells: dict[str, dict], target: float, tolerance: float):
    from gisgrid.spatial.coverage import Layout

    codes = sorted(cells)
    stored = np.asarray([cells[c]["geom"] for c in codes], dtype=object)
    return Layout(codes=codes, communities=[cells[c]["community_code"] for c in codes],
                  cells=scope.to_metric(stored), topology_cells=stored, to_metric=scope.to_metric,
                  areas={k: scope.area_metric(k) for k in scope.communities},
                  building_points=scope.points, households=scope.households, major_roads=scope.major_roads,
                  target=target, tolerance=tolerance)


def _report(scope: _Scope, cells: dict[str, dict], target: float, tolerance: float) -> dict:
    """The checks' report with each problem as a GeoJSON feature (EPSG:4326)."""
    from gisgrid.spatial import coverage

    rep = coverage.check(_layout(scope, cells, target, tolerance))
    feats = []
    for p in rep.pop("problems"):
        g = p.pop("geom")
        geometry = None
        if g is not None and not g.is_empty:
            geometry = json.loads(shapely.to_geojson(shapely.set_precision(scope.to_storage([g])[0], 1e-7)))
        feats.append({"type": "Feature", "geometry": geometry, "properties": p})
    rep["features"] = {"type": "FeatureCollection", "features": feats}
    return rep


def check(session: Session, principal: authz.Principal, plan_id) -> dict:
    """Run every check of :mod:`gisgrid.spatial.coverage` on the plan's cells."""
    plan = _plan_row(session, principal, plan_id)
    return _report(_Scope(session, plan["scope_code"]), _cells(session, plan["id"]), plan["target"], plan["tolerance"])


# -- editing ----------------------------------------------------------------------------------
def _versions(body_versions, codes: list[str], cells: dict[str, dict]) -> None:
    """Every touched cell must be named with the version the editor saw; stale → 409."""
    if not isinstance(body_versions, dict):
        raise InvalidInput("versions must be an object {cell code: version}", field="versions")
    for c in codes:
        if c not in cells:
            raise NotFound(f"plan has no cell {c!r}", field="code")
        if c not in body_versions:
            raise InvalidInput(f"versions must give the version of cell {c}", field="versions")
        v = body_versions[c]
        if not isinstance(v, int) or isinstance(v, bool):
            raise InvalidInput(f"version of cell {c} must be an integer, got {v!r}", field="versions")
        if v != cells[c]["version"]:
            raise Conflict(f"cell {c} is at version {cells[c]['version']}, the edit was made on version {v}: "
                           "someone changed it meanwhile; reload the plan", field="versions")


def _polygonal(geojson, field: str = "geometry"):
    from gisgrid.spatial.geometry import check as check_geom, from_geojson

    g = check_geom(from_geojson(geojson, field=field), ("Polygon", "MultiPolygon"), field=field)
    return g


def _multi(g):
    g = shapely.make_valid(g) if not g.is_valid else g
    polys = [p for p in shapely.get_parts(g) if p.geom_type in ("Polygon", "MultiPolygon")]
    parts = []
    for p in polys:
        parts.extend(shapely.get_parts(p))
    if not parts:
        raise InvalidGeometry("the edit leaves a cell with no area", field="geometry")
    return shapely.MultiPolygon(parts)


def _write(session: Session, plan: dict, actor: str, op: str, before: dict[str, dict],
           after: dict[str, object], note: str | None = None) -> int:
    """Apply one edit: cells in ``before`` not in ``after`` are deleted, cells in ``after`` are
    written with the plan's next sequence as version. Records the edit."""
    seq = plan["seq"] + 1
    gone = [c for c in before if c not in after]
    if gone:
        session.execute(text("DELETE FROM plan_cell WHERE plan_id = :p AND code = ANY(:c)"),
                        {"p": plan["id"], "c": gone})
    for code, (community, geom) in after.items():
        session.execute(text(
            "INSERT INTO plan_cell (plan_id, code, community_code, version, geom) "
            "VALUES (:p, :c, :cc, :v, ST_GeomFromWKB(:g, 4326)) "
            "ON CONFLICT (plan_id, code) DO UPDATE SET geom = EXCLUDED.geom, version = EXCLUDED.version, "
            "community_code = EXCLUDED.community_code"),
            {"p": plan["id"], "c": code, "cc": community, "v": seq, "g": shapely.to_wkb(_multi(geom))})
    session.execute(text("UPDATE grid_plan SET seq = :s WHERE id = :p"), {"s": seq, "p": plan["id"]})
    session.execute(text(
        "INSERT INTO plan_edit (plan_id, seq, op, actor, before, after, note) VALUES (:p, :s, :op, :a, :b, :af, :n)"),
        {"p": plan["id"], "s": seq, "op": op, "a": actor, "n": note,
         "b": json.dumps([{"code": c, "community_code": v["community_code"], "version": v["version"],
                           "wkb": shapely.to_wkb(v["geom"], hex=True)} for c, v in sorted(before.items())]),
         "af": json.dumps(sorted(after))})
    audit.record(session, actor, op, "grid_plan", plan["id"], before={"cells": sorted(before)},
                 after={"cells": sorted(after), "seq": seq}, reason=note)
    return seq


def _editable(session: Session, principal: authz.Principal, plan_id) -> dict:
    authz.require(principal, "plan")
    plan = _plan_row(session, principal, plan_id, lock=True)
    if plan["state"] != "draft":
        raise IllegalTransition(f"plan {plan['id']} is {plan['state']}: only a draft can be edited "
                                "(reopen it first)", ["reopen"] if plan["state"] == "review" else [])
    return plan


def _next_codes(session: Session, plan_id: int, community: str, n: int, taken: set[str] = frozenset()) -> list[str]:
    """``n`` new grid codes for ``community``: the serials after every code the community has
    ever had (current or retired grids) and every cell of the plan. Deterministic."""
    used = set(session.execute(text(
        "SELECT code FROM grid WHERE community_code = :c UNION SELECT code FROM plan_cell WHERE plan_id = :p "
        "AND community_code = :c"), {"c": community, "p": plan_id}).scalars()) | set(taken)
    serials = [int(c[12:]) for c in used if c.startswith(community) and c[12:].isdigit()]
    start = max(serials, default=0) + 1
    width = max(3, len(str(start + n)))
    return [f"{community}{s:0{width}d}" for s in range(start, start + n)]


def edit(session: Session, principal: authz.Principal, plan_id, op: str, body: dict) -> dict:
    """Apply one edit to a draft plan and return the plan's new cells and the check report.

    Operations (``body`` fields):

    ``replace``  ``code``, ``geometry`` (GeoJSON Polygon/MultiPolygon, EPSG:4326): the cell's
                 new shape, nothing else changes (the checks show any gap or overlap)
    ``reshape``  ``code``, ``geometry``: the cell takes the new shape, neighbours lose what it
                 now covers, and what it gave up goes to the neighbour sharing the longest edge
    ``split``    ``code``, ``line`` (GeoJSON LineString): the cell cut in two or more along the
                 line; the largest piece keeps the code, the others get new codes
    ``merge``    ``codes`` (two or more cells of one community): one cell, the lowest code kept

    Every touched cell's version goes in ``versions`` (``{code: version}``); ``note`` is optional.

    Raises
    ------
    Conflict (409) a stale version; IllegalTransition (409) the plan is not a draft;
    InvalidInput / InvalidGeometry (400); NotFound (404)
    """
    if op not in ("replace", "reshape", "split", "merge"):
        raise InvalidInput(f"op must be one of replace, reshape, split, merge (propose has its own call), got {op!r}",
                           field="op")
    if not isinstance(body, dict):
        raise InvalidInput("the edit must be a JSON object", field="body")
    plan = _editable(session, principal, plan_id)
    cells = _cells(session, plan["id"], lock=True)
    note = body.get("note")
    if note is not None and (not isinstance(note, str) or len(note) > 500):
        raise InvalidInput("note must be a string of at most 500 characters", field="note")
    scope = _Scope(session, plan["scope_code"])
    if op == "merge":
        codes = body.get("codes")
        if not isinstance(codes, list) or len(codes) < 2 or not all(isinstance(c, str) for c in codes) \
                or len(set(codes)) != len(codes):
            raise InvalidInput("merge needs codes: a list of two or more distinct cell codes", field="codes")
    else:
        code = body.get("code")
        if not isinstance(code, str):
            raise InvalidInput(f"{op} needs code: the cell's code", field="code")
        codes = [code]
    _versions(body.get("versions"), codes, cells)
    touched = {c: cells[c] for c in codes}
    if op == "merge":
        comms = {cells[c]["community_code"] for c in codes}
        if len(comms) > 1:
            raise InvalidInput(f"cells {codes} lie in different communities {sorted(comms)}: a grid stays inside "
                               "one community", field="codes")
        keep = min(codes)
        merged = shapely.union_all([cells[c]["geom"] for c in codes])     # in lon/lat: vertices stay put
        after = {keep: (cells[keep]["community_code"], merged)}
    elif op == "replace":
        after = {code: (cells[code]["community_code"], _polygonal(body.get("geometry")))}
    elif op == "reshape":
        after, extra = _reshape(scope, cells, code, _polygonal(body.get("geometry")))
        _versions(body.get("versions"), sorted(extra), cells)
        touched.update({c: cells[c] for c in extra})
    else:
        after = _split(session, plan, cells, code, body.get("line"))
    seq = _write(session, plan, principal.username, op, touched, after, note)
    return {"seq": seq, "cells": cell_features(session, plan["id"]),
            "check": _report(scope, _cells(session, plan["id"]), plan["target"], plan["tolerance"])}


def _reshape(scope: _Scope, cells: dict, code: str, new_geom) -> tuple[dict, set[str]]:
    """New shape for ``code``; neighbours lose what it covers now; the area it gave up goes to
    the same-community neighbour with the longest shared edge. Returns (after, neighbours touched).

    The set operations run on the stored lon/lat geometry, so the edges they leave are exactly
    the neighbours' (a round trip through the metric CRS would move vertices by nanometres and
    break the coverage); only the areas are measured in metres."""
    comm = cells[code]["community_code"]
    others = sorted(c for c in cells if c != code)
    area_m2 = lambda g: float(scope.to_metric([g])[0].area) if not g.is_empty else 0.0  # noqa: E731
    new = shapely.intersection(new_geom, scope.communities[comm]["geom"])
    after, touched = {code: new}, set()
    for c in others:
        g = cells[c]["geom"]
        if g.intersects(new) and area_m2(g.intersection(new)) > 1e-3:
            rest = g.difference(new)
            if area_m2(rest) < 1.0:
                raise InvalidGeometry(f"the new shape of {code} would swallow cell {c} whole: merge them instead",
                                      field="geometry")
            after[c] = rest
            touched.add(c)
    for piece in shapely.get_parts(cells[code]["geom"].difference(new)):
        if area_m2(piece) < 1e-3:
            continue
        best, best_len = None, 0.0
        for c in others:
            if cells[c]["community_code"] != comm:
                continue
            shared = after.get(c, cells[c]["geom"]).boundary.intersection(piece.boundary).length
            if shared > best_len:
                best, best_len = c, shared
        if best is not None:
            after[best] = shapely.union(after.get(best, cells[best]["geom"]), piece)
            touched.add(best)
    return {c: (cells[c]["community_code"], g) for c, g in sorted(after.items())}, touched


def _split(session: Session, plan: dict, cells: dict, code: str, line_json) -> dict:
    from shapely.ops import split

    from gisgrid.spatial.geometry import check as check_geom, from_geojson

    line = check_geom(from_geojson(line_json, field="line"), ("LineString",), field="line")
    geom = cells[code]["geom"]
    pieces = [p for p in shapely.get_parts(split(geom, line)) if p.area > 0]
    if len(pieces) < 2:
        raise InvalidGeometry(f"the line does not cut cell {code} in two: it must cross the cell from edge to edge",
                              field="line")
    pieces.sort(key=lambda p: (-p.area, p.centroid.x, p.centroid.y))
    comm = cells[code]["community_code"]
    new = _next_codes(session, plan["id"], comm, len(pieces) - 1)
    out = {code: (comm, pieces[0])}
    out.update({c: (comm, p) for c, p in zip(new, pieces[1:])})
    return out


def propose(session: Session, principal: authz.Principal, plan_id, *, target: int | None = None,
            tolerance: float | None = None, keep_current: bool = False, seed: int = 0) -> dict:
    """Replace every cell of a draft plan with a proposal from
    :func:`gisgrid.spatial.districting.propose`, community by community. Codes follow the
    current grid holding most of a new cell's households (each kept once), the rest get new
    serials. Returns the cells, the check report, and the proposal's summary with every
    exception named (part code, households, deviation, reason)."""
    from gisgrid.spatial import districting

    plan = _editable(session, principal, plan_id)
    target = plan["target"] if target is None else _target(target)
    tolerance = plan["tolerance"] if tolerance is None else _tolerance(tolerance)
    cells = _cells(session, plan["id"], lock=True)
    scope = _Scope(session, plan["scope_code"])
    rng = np.random.default_rng(seed)
    after, exceptions, moved, total = {}, [], 0, int(scope.households.sum())
    comm_of_bldg = _community_of_points(scope)
    for comm in scope.communities:
        sel = comm_of_bldg == comm
        area = scope.area_metric(comm)
        roads = shapely.intersection(scope.roads, area) if len(scope.roads) else scope.roads
        major = shapely.intersection(scope.major_roads, area) if len(scope.major_roads) else scope.major_roads
        current = None
        grid_codes = [scope.building_grid[i] for i in np.flatnonzero(sel)]
        if keep_current:
            names = sorted({g for g in grid_codes if g})
            current = np.asarray([names.index(g) if g else -1 for g in grid_codes])
        try:
            prop = districting.propose(area, scope.points[sel], scope.households[sel], roads, major, target=target,
                                       tolerance=tolerance, current=current, rng=rng)
        except districting.ProposalError as e:
            raise InvalidInput(f"community {comm}: {e}", field="scope") from None
        codes = _codes_for(session, plan["id"], comm, prop, grid_codes, scope.households[sel], set(after))
        geoms = scope.to_storage(prop.geoms)
        for q, c in enumerate(codes):
            after[c] = (comm, geoms[q])
        hh = scope.households[sel]
        moved += int(sum(h for h, old, q in zip(hh, grid_codes, prop.labels) if old != codes[q]))
        for e in prop.exceptions:
            exceptions.append({"code": codes[e["part"]], "community_code": comm, **{k: v for k, v in e.items()
                                                                                  if k != "part"}})
    note = f"propose target={target} tolerance={tolerance} keep_current={keep_current}"
    seq = _write(session, plan, principal.username, "propose", cells, after, note)
    if target != plan["target"] or tolerance != plan["tolerance"]:
        session.execute(text("UPDATE grid_plan SET target = :t, tolerance = :tol WHERE id = :p"),
                        {"t": target, "tol": tolerance, "p": plan["id"]})
    report = _report(scope, _cells(session, plan["id"]), target, tolerance)
    return {"seq": seq, "cells": cell_features(session, plan["id"]), "check": report,
            "proposal": {"parts": len(after), "households": total, "households_moved": moved,
                         "target": target, "tolerance": tolerance, "keep_current": keep_current,
                         "exceptions": exceptions}}


def _community_of_points(scope: _Scope) -> np.ndarray:
    codes = list(scope.communities)
    out = np.full(len(scope.points), None, dtype=object)
    if not len(scope.points):
        return out
    areas = scope.to_metric([scope.communities[c]["geom"] for c in codes])
    pi, ai = shapely.STRtree(areas).query(scope.points, predicate="intersects")
    order = np.lexsort((ai, pi))
    pi, ai = pi[order], ai[order]
    first = np.r_[True, pi[1:] != pi[:-1]]
    out[pi[first]] = np.asarray(codes, dtype=object)[ai[first]]
    return out


def _codes_for(session, plan_id, comm, prop, grid_codes, households, taken) -> list[str]:
    """A code per part: the current grid holding most of its households keeps its code (each
    code once, best matches first); the others get new serials, ordered north-west first."""
    n = prop.n_parts
    overlap: dict[tuple[int, str], int] = {}
    for q, old, h in zip(prop.labels, grid_codes, households):
        if old:
            overlap[(int(q), old)] = overlap.get((int(q), old), 0) + int(h) + 1
    codes: list[str | None] = [None] * n
    used = set()
    for (q, old), _ in sorted(overlap.items(), key=lambda kv: (-kv[1], kv[0])):
        if codes[q] is None and old not in used and old.startswith(comm):
            codes[q], used = old, used | {old}
    rest = [q for q in range(n) if codes[q] is None]
    rest.sort(key=lambda q: (-prop.geoms[q].centroid.y, prop.geoms[q].centroid.x))
    for q, c in zip(rest, _next_codes(session, plan_id, comm, len(rest), taken | used)):
        codes[q] = c
    return codes


def undo(session: Session, principal: authz.Principal, plan_id) -> dict:
    """Undo the plan's last edit not yet undone: its cells go back to what they were (with a
    new version each). Undo again to go further back."""
    plan = _editable(session, principal, plan_id)
    last = session.execute(text(
        "SELECT id, seq, op, before, after FROM plan_edit WHERE plan_id = :p AND undone_at IS NULL "
        "ORDER BY seq DESC LIMIT 1"), {"p": plan["id"]}).mappings().first()
    if last is None:
        raise Conflict(f"plan {plan['id']} has no edit to undo", field="plan")
    # every later edit is undone already, so the cells are as ``last`` left them
    seq = plan["seq"] + 1
    session.execute(text("DELETE FROM plan_cell WHERE plan_id = :p AND code = ANY(:c)"),
                    {"p": plan["id"], "c": list(last["after"])})
    for b in last["before"]:
        session.execute(text(
            "INSERT INTO plan_cell (plan_id, code, community_code, version, geom) "
            "VALUES (:p, :c, :cc, :v, ST_GeomFromWKB(decode(:g, 'hex'), 4326))"),
            {"p": plan["id"], "c": b["code"], "cc": b["community_code"], "v": seq, "g": b["wkb"]})
    session.execute(text("UPDATE grid_plan SET seq = :s WHERE id = :p"), {"s": seq, "p": plan["id"]})
    session.execute(text("UPDATE plan_edit SET undone_by = :a, undone_at = now() WHERE id = :i"),
                    {"a": principal.username, "i": last["id"]})
    audit.record(session, principal.username, "undo", "grid_plan", plan["id"], after={"undone_seq": last["seq"]})
    return {"seq": seq, "undone": {"seq": last["seq"], "op": last["op"]}, "cells": cell_features(session, plan["id"]),
            "check": check(session, principal, plan["id"])}


# -- state ------------------------------------------------------------------------------------
def transition(session: Session, principal: authz.Principal, plan_id, action: str) -> dict:
    """``submit``, ``reopen`` or ``discard`` (``publish`` and ``rollback`` have their own calls)."""
    if action not in ("submit", "reopen", "discard"):
        raise InvalidInput(f"action must be submit, reopen or discard, got {action!r}", field="action")
    authz.require(principal, "plan")
    plan = _plan_row(session, principal, plan_id, lock=True)
    _allowed(plan, action)
    target = TRANSITIONS[action][1]
    session.execute(text("UPDATE grid_plan SET state = :s WHERE id = :p"), {"s": target, "p": plan["id"]})
    audit.record(session, principal.username, action, "grid_plan", plan["id"], before={"state": plan["state"]},
                 after={"state": target})
    return {"id": plan["id"], "state": target,
            "allowed": [a for a, (src, _) in TRANSITIONS.items() if target in src]}


def _allowed(plan: dict, action: str) -> None:
    if plan["state"] not in TRANSITIONS[action][0]:
        allowed = [a for a, (src, _) in TRANSITIONS.items() if plan["state"] in src]
        raise IllegalTransition(f"cannot {action} a plan in state {plan['state']!r}; allowed: "
                                f"{', '.join(allowed) or 'none'}", allowed)


# -- diff and publish -------------------------------------------------------------------------
#: which cell of the plan holds each record's anchor (the linking rule: lowest code on an edge),
#: against the record's current grid code. The link columns a diff reads are all here.
def _diff_sql(layer: str, alias: str, anchor: str, extra: str = "", joins: str = "", n: str = "1") -> str:
    return (f"SELECT {alias}.id, l.grid_code AS old, c.code AS new, {n} AS n FROM {layer} {alias} "
            + linking.join_sql(layer, alias) + f" {joins}"
            "LEFT JOIN LATERAL (SELECT code FROM plan_cell WHERE plan_id = :p "
            f"AND ST_Intersects(geom, {anchor}) ORDER BY code LIMIT 1) c ON true "
            f"WHERE {extra}(ST_Intersects({anchor}, ST_GeomFromWKB(:scope, 4326)) OR l.grid_id = ANY(:base)) "
            "AND l.grid_code IS DISTINCT FROM c.code")


_DIFF_SQL = {
    "building": _diff_sql("building", "b", "b.anchor", n="b.households"),
    "resident": _diff_sql("resident", "r", "coalesce(b.anchor, r.geom)",
                          joins="LEFT JOIN building b ON b.id = r.building_id "),
    "open_incident": _diff_sql("incident", "i", "i.geom", extra="i.state = ANY(:open) AND "),
    "place": _diff_sql("place", "x", "x.geom"),
    "patrol_point": _diff_sql("patrol_point", "x", "x.geom"),
}


def diff(session: Session, principal: authz.Principal, plan_id) -> dict:
    """What publishing the plan would change: per layer, the records that change grid (total,
    and counts per old and per new cell: households for buildings), the staff assignments kept
    (their grid code stays) and ended (their grid disappears), and the changed areas as GeoJSON
    (each cell's difference from the current grid of the same code)."""
    from gisgrid.layers.incidents import OPEN_STATES

    plan = _plan_row(session, principal, plan_id)
    areas = _communities(session, plan["scope_code"])
    comms = list(areas)
    scope_wkb = shapely.to_wkb(shapely.union_all([c["geom"] for c in areas.values()]))
    base = _current_ids(session, comms)
    params = {"p": plan["id"], "scope": scope_wkb, "base": base, "open": list(OPEN_STATES)}
    layers = {}
    for layer, sql in _DIFF_SQL.items():
        rows = session.execute(text(sql), params).all()
        by_old, by_new = {}, {}
        for _, old, new, n in rows:
            by_old[old or "-"] = by_old.get(old or "-", 0) + n
            by_new[new or "-"] = by_new.get(new or "-", 0) + n
        layers[layer] = {"records": len(rows), "count": sum(r[3] for r in rows), "by_old": by_old, "by_new": by_new}
    new_codes = set(session.execute(text("SELECT code FROM plan_cell WHERE plan_id = :p"), {"p": plan["id"]}).scalars())
    staff = session.execute(text(
        "SELECT g.code, a.role, count(*) FROM grid_assignment a JOIN grid g ON g.id = a.grid_id "
        "WHERE a.valid_to IS NULL AND g.id = ANY(:base) GROUP BY g.code, a.role ORDER BY g.code, a.role"),
        {"base": base}).all()
    old_codes = set(session.execute(text("SELECT code FROM grid WHERE id = ANY(:b)"), {"b": base}).scalars())
    kept = [{"grid": c, "role": r, "n": n} for c, r, n in staff if c in new_codes]
    ended = [{"grid": c, "role": r, "n": n} for c, r, n in staff if c not in new_codes]
    changed = session.execute(text(
        "SELECT coalesce(c.code, g.code) AS code, ST_AsGeoJSON(ST_CollectionExtract(ST_SymDifference("
        "coalesce(c.geom, 'SRID=4326;POLYGON EMPTY'::geometry), coalesce(g.geom, 'SRID=4326;POLYGON EMPTY'::geometry)), 3), 7) "
        "FROM (SELECT code, geom FROM plan_cell WHERE plan_id = :p) c "
        "FULL JOIN (SELECT code, geom FROM grid WHERE id = ANY(:base)) g ON g.code = c.code "
        "WHERE c.geom IS NULL OR g.geom IS NULL OR NOT ST_Equals(c.geom, g.geom) ORDER BY 1"),
        {"p": plan["id"], "base": base}).all()
    features = [{"type": "Feature", "geometry": json.loads(gj), "properties": {"code": code}}
                for code, gj in changed if gj and json.loads(gj)["coordinates"]]
    return {"plan": plan["id"], "layers": layers,
            "staff_assignments": {"kept": sum(k["n"] for k in kept), "ended": sum(e["n"] for e in ended),
                                  "kept_by_grid": kept, "ended_by_grid": ended},
            "grids": {"current": len(base), "planned": len(new_codes), "new_codes": sorted(new_codes - old_codes),
                      "dropped_codes": sorted(old_codes - new_codes)},
            "changed_areas": {"type": "FeatureCollection", "features": features}}


def _current_ids(session: Session, comms: list[str], *, lock: bool = False) -> list[int]:
    return list(session.execute(text(
        "SELECT id FROM grid WHERE valid_to IS NULL AND community_code = ANY(:c) ORDER BY id"
        + (" FOR UPDATE" if lock else "")), {"c": list(comms)}).scalars())


def _locked_scope(session: Session, principal: authz.Principal, plan_id, action: str):
    """(plan, communities, current grid ids) with the plan's row and the scope's current grids
    locked, so two publishes (or rollbacks) of one scope run one after the other."""
    authz.require(principal, "plan")
    plan = _plan_row(session, principal, plan_id, lock=True)
    _allowed(plan, action)
    comms = _communities(session, plan["scope_code"])
    return plan, comms, _current_ids(session, list(comms), lock=True)


def publish(session: Session, principal: authz.Principal, plan_id) -> dict:
    """Make a plan in review the current grids of its scope, in the caller's transaction.

    Refuses (409) when the checks find an error (gap, overlap, outside, fragmented…) or when the
    scope's current grids changed since the plan was made. The caller commits; any failure
    before that leaves everything as it was.
    """
    plan, comms, base = _locked_scope(session, principal, plan_id, "publish")
    if sorted(base) != sorted(plan["base_grid_ids"] or []):
        raise Conflict(f"the current grids of {plan['scope_code']} changed since plan {plan['id']} was made "
                       "(another plan was published): start a new plan", field="plan")
    scope = _Scope(session, plan["scope_code"])
    cells = _cells(session, plan["id"])
    report = _report(scope, cells, plan["target"], plan["tolerance"])
    if not report["ok"]:
        bad = [f["properties"]["message"] for f in report["features"]["features"]
               if f["properties"]["severity"] == "error"]
        raise Conflict(f"plan {plan['id']} fails {report['errors']} check(s): " + "; ".join(bad[:5]), field="check")
    now = session.execute(text("SELECT now()")).scalar()
    out = _activate(session, principal.username, plan, comms, base, now,
                    [(c, cells[c]["community_code"], cells[c]["geom"]) for c in sorted(cells)])
    session.execute(text("UPDATE grid_plan SET state = 'published', published_by = :a, published_at = :t, "
                         "replaced_grid_ids = :r WHERE id = :p"),
                    {"a": principal.username, "t": now, "r": base, "p": plan["id"]})
    audit.record(session, principal.username, "publish", "grid_plan", plan["id"],
                 before={"grids": len(base)}, after={k: v for k, v in out.items() if k != "grid_ids"})
    return {"id": plan["id"], "state": "published", **out}


def rollback(session: Session, principal: authz.Principal, plan_id) -> dict:
    """Put back the grids a published plan replaced (as new current rows with the same codes
    and shapes; the plan's grids keep their history), re-linking and carrying staff the same way."""
    plan, comms, current = _locked_scope(session, principal, plan_id, "rollback")
    mine = set(session.execute(text("SELECT id FROM grid WHERE plan_id = :p AND valid_to IS NULL"),
                               {"p": plan["id"]}).scalars())
    if set(current) != mine:
        raise Conflict(f"plan {plan['id']} is no longer the latest publication of {plan['scope_code']}: "
                       "roll back the later plan first", field="plan")
    old = session.execute(text(
        "SELECT code, community_code, ST_AsBinary(geom) FROM grid WHERE id = ANY(:r) ORDER BY code"),
        {"r": plan["replaced_grid_ids"] or []}).all()
    now = session.execute(text("SELECT now()")).scalar()
    out = _activate(session, principal.username, None, comms, current, now,
                    [(c, cc, shapely.from_wkb(bytes(g))) for c, cc, g in old])
    session.execute(text("UPDATE grid_plan SET state = 'rolled_back', rolled_back_at = :t WHERE id = :p"),
                    {"t": now, "p": plan["id"]})
    audit.record(session, principal.username, "rollback", "grid_plan", plan["id"],
                 after={k: v for k, v in out.items() if k != "grid_ids"})
    return {"id": plan["id"], "state": "rolled_back", **out}


def _activate(session: Session, actor: str, plan: dict | None, comms: dict, retire: list[int], now,
              cells: list[tuple[str, str, object]]) -> dict:
    """Retire ``retire``, insert ``cells`` (code, community, 4326 geometry) as current grids,
    carry staff by code, re-link the scope's records, hand open incidents to the new teams."""
    names = dict(session.execute(text("SELECT code, name FROM grid WHERE id = ANY(:r)"), {"r": retire}).all())
    session.execute(text("UPDATE grid SET valid_to = :t WHERE id = ANY(:r)"), {"t": now, "r": retire})
    serial_name = {}
    new_ids = {}
    for code, comm, geom in cells:
        area = comms[comm]
        name = names.get(code) or serial_name.setdefault(code, f"{area['name']}第{int(code[12:])}网格")
        new_ids[code] = session.execute(text(
            "INSERT INTO grid (code, name, community_code, street_code, district_code, kind, plan_id, valid_from, geom) "
            "VALUES (:c, :n, :cc, :sc, :dc, :k, :p, :t, ST_Multi(ST_GeomFromWKB(:g, 4326))) RETURNING id"),
            {"c": code, "n": name, "cc": comm, "sc": comm[:9] + "000", "dc": comm[:6] + "000000", "k": area["kind"],
             "p": plan["id"] if plan else None, "t": now, "g": shapely.to_wkb(_multi(geom))}).scalar()
    # staff: an assignment follows its grid's code; a code that disappears ends its assignments
    carried = session.execute(text(
        "INSERT INTO grid_assignment (staff_id, grid_id, role, valid_from) "
        "SELECT a.staff_id, n.id, a.role, CAST(:t AS date) FROM grid_assignment a JOIN grid o ON o.id = a.grid_id "
        "JOIN grid n ON n.code = o.code AND n.id = ANY(:new) WHERE a.valid_to IS NULL AND o.id = ANY(:r)"),
        {"t": now, "new": list(new_ids.values()), "r": retire}).rowcount
    ended = session.execute(text(
        "UPDATE grid_assignment SET valid_to = CAST(:t AS date) WHERE valid_to IS NULL AND grid_id = ANY(:r)"),
        {"t": now, "r": retire}).rowcount - carried
    relinked = _relink_scope(session, comms, retire)
    handed = _hand_over_incidents(session, actor, now, retire)
    return {"grids": len(new_ids), "retired": len(retire), "grid_ids": sorted(new_ids.values()),
            "staff_carried": carried, "staff_ended": ended, "relinked": relinked, "incidents_handed_over": handed}


#: the records of a scope to re-link: inside its area or linked to a retired grid
_SCOPE_IDS_SQL = {
    t: (f"SELECT id FROM {t} WHERE ST_Intersects({col}, ST_GeomFromWKB(:scope, 4326)) "
        f"UNION SELECT id FROM {t}_link WHERE grid_id = ANY(:r)")
    for t, col in (("building", "anchor"), ("place", "geom"), ("patrol_point", "geom"),
                      ("patrol_route", "anchor"), ("incident", "geom"))}
_SCOPE_IDS_SQL["resident"] = (
    "SELECT r.id FROM resident r LEFT JOIN building b ON b.id = r.building_id "
    "WHERE ST_Intersects(coalesce(b.anchor, r.geom), ST_GeomFromWKB(:scope, 4326)) "
    "UNION SELECT id FROM resident_link WHERE grid_id = ANY(:r)")


def _relink_scope(session: Session, comms: dict, retire: list[int]) -> dict[str, int]:
    """Re-link every record of the scope (and any still pointing at a retired grid) through
    :func:`linking.link_ids`, in the linking order (residents after their buildings)."""
    wkb = shapely.to_wkb(shapely.union_all([c["geom"] for c in comms.values()]))
    out = {}
    for table in linking.ORDER:
        ids = list(session.execute(text(_SCOPE_IDS_SQL[table]), {"scope": wkb, "r": retire}).scalars())
        out[table] = linking.link_ids(session, table, ids)
    return out


#: open incidents whose assignee is no longer on their (new) grid's team: to the new grid's head
_HANDOVER_SQL = (
    "UPDATE incident i SET assignee_id = h.staff_id, updated_at = :t FROM ("
    "  SELECT i2.id, (SELECT a.staff_id FROM grid_assignment a WHERE a.grid_id = l.grid_id AND a.role = 'head' "
    "   AND a.valid_to IS NULL ORDER BY a.id LIMIT 1) AS staff_id "
    "  FROM incident i2 " + linking.join_sql("incident", "i2") + " WHERE i2.state = ANY(:open) "
    "  AND i2.assignee_id IS NOT NULL AND l.grid_id IS NOT NULL "
    "  AND EXISTS (SELECT 1 FROM grid_assignment o WHERE o.staff_id = i2.assignee_id AND o.grid_id = ANY(:r)) "
    "  AND NOT EXISTS (SELECT 1 FROM grid_assignment c WHERE c.staff_id = i2.assignee_id "
    "   AND c.grid_id = l.grid_id AND c.valid_to IS NULL)"
    ") h WHERE i.id = h.id AND i.assignee_id IS DISTINCT FROM h.staff_id RETURNING i.id, i.state")


def _hand_over_incidents(session: Session, actor: str, now, retire: list[int]) -> int:
    from gisgrid.layers.incidents import OPEN_STATES

    rows = session.execute(text(_HANDOVER_SQL), {"t": now, "open": list(OPEN_STATES), "r": retire}).all()
    if rows:
        session.execute(text(
            "INSERT INTO incident_event (incident_id, at, actor, from_state, to_state, note) "
            "SELECT x.id, :t, :a, x.state, x.state, '[regrid] grid redrawn: handed to the new grid head' "
            "FROM unnest(CAST(:ids AS int[]), CAST(:states AS text[])) AS x(id, state)"),
            {"t": now, "a": actor, "ids": [r[0] for r in rows], "states": [r[1] for r in rows]})
    return len(rows)
