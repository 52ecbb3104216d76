"""Patrol points and duty posts (巡逻点 / 执勤点), patrol routes, schedules and check-ins.

A street keeps its "lines of defence" with teams that walk routes and check in at points.

* ``patrol_point``: a point with a check-in radius; linked to its grid like every point layer.
* ``patrol_route``: a line walked by a team, linked by a point on it (``anchor``); the points it
  passes, in order, are ``patrol_route_point`` rows.
* ``patrol_schedule``: how often a point (or every point of a route) must be visited per day,
  by which team, on which weekdays, in which time window. A point with no schedule falls back
  to its own ``visits_per_day``.
* ``patrol_checkin``: one attempt of a worker to check in at a point from the phone, accepted
  or not. Nothing is dropped: a rejected attempt is stored with its distance, so a supervisor
  sees who tried where.

The check-in rule (:func:`allowed_metres`): an attempt is **accepted** when the distance from
the reported position to the point (on the WGS84 spheroid, PostGIS ``geography``) is at most
the point's radius plus the reported GPS accuracy, and the accuracy counts for at most the
radius itself: ``distance <= radius + min(accuracy, radius)``. A fix of ±20 m at a 50 m point
is accepted up to 70 m away; a fix of ±500 m is accepted only up to 100 m away (twice the
radius), so a useless fix cannot check in from across the district. No accuracy = 0.

Queries of compliance, overdue points, trails and statistics live here too; coverage lives in
:mod:`gisgrid.layers.patrol_coverage`.
"""
from __future__ import annotations

from datetime import date, datetime, time

from sqlalchemy import (Boolean, CheckConstraint, Computed, Date, DateTime, Float, ForeignKey, Integer, String,
                        Time, func, text)
from sqlalchemy.orm import Mapped, Session, mapped_column

from gisgrid.db.base import Base
from gisgrid.errors import InvalidInput, NotFound, UnknownReference
from gisgrid.layers._columns import geom_type, gist, types, valid

KINDS = {"patrol_point": "巡逻点", "duty_post": "执勤点"}
#: the day of a check-in is its local day in the district's time zone
LOCAL_TZ = "Asia/Shanghai"


class PatrolPoint(Base):
    __tablename__ = "patrol_point"
    __table_args__ = (
        CheckConstraint("kind IN ('patrol_point', 'duty_post')", name="kind"),
        CheckConstraint("radius_m > 0", name="radius"),
        valid(), types("geom", "Point"), gist("patrol_point"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20), default="patrol_point", server_default="patrol_point")
    radius_m: Mapped[float] = mapped_column(Float, default=50, server_default="50")
    visits_per_day: Mapped[int | None] = mapped_column(Integer)
    team: Mapped[str | None] = mapped_column(String(100))
    geom = mapped_column(geom_type("POINT"), nullable=False)


class PatrolRoute(Base):
    __tablename__ = "patrol_route"
    __table_args__ = (valid(), types("geom", "LineString", "MultiLineString"), gist("patrol_route"),
                      gist("patrol_route", "anchor"))

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    team: Mapped[str | None] = mapped_column(String(100))
    geom = mapped_column(geom_type("GEOMETRY"), nullable=False)
    anchor = mapped_column(geom_type("POINT"), Computed("ST_PointOnSurface(geom)", persisted=True))


class PatrolRoutePoint(Base):
    """The points a route passes, in walking order (a point may be passed twice)."""
    __tablename__ = "patrol_route_point"

    route_id: Mapped[int] = mapped_column(Integer, ForeignKey("patrol_route.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    point_id: Mapped[int] = mapped_column(Integer, ForeignKey("patrol_point.id", ondelete="CASCADE"), index=True)


class PatrolSchedule(Base):
    """A planned visit frequency for one point or for every point of one route."""
    __tablename__ = "patrol_schedule"
    __table_args__ = (
        CheckConstraint("(point_id IS NULL) <> (route_id IS NULL)", name="one_target"),
        CheckConstraint("visits_per_day > 0", name="visits"),
        CheckConstraint("weekdays ~ '^[1-7]{1,7}$'", name="weekdays"),
        CheckConstraint("valid_to IS NULL OR valid_from IS NULL OR valid_to >= valid_from", name="period"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    point_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("patrol_point.id", ondelete="CASCADE"), index=True)
    route_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("patrol_route.id", ondelete="CASCADE"), index=True)
    team: Mapped[str | None] = mapped_column(String(100))
    visits_per_day: Mapped[int] = mapped_column(Integer)
    #: ISO weekdays the plan applies to, 1 = Monday … 7 = Sunday
    weekdays: Mapped[str] = mapped_column(String(7), default="1234567", server_default="1234567")
    start_time: Mapped[time | None] = mapped_column(Time)
    end_time: Mapped[time | None] = mapped_column(Time)
    valid_from: Mapped[date | None] = mapped_column(Date)
    valid_to: Mapped[date | None] = mapped_column(Date)


class PatrolCheckin(Base):
    """One check-in attempt, accepted or rejected (with its distance)."""
    __tablename__ = "patrol_checkin"
    __table_args__ = (
        CheckConstraint("accuracy_m IS NULL OR accuracy_m >= 0", name="accuracy"),
        CheckConstraint("distance_m >= 0", name="distance"),
        valid(), types("geom", "Point"), gist("patrol_checkin"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    #: the phone's idempotency key (Idempotency-Key header or client_uuid): a resend is not a new visit
    key: Mapped[str] = mapped_column(String(100), unique=True)
    point_id: Mapped[int] = mapped_column(Integer, ForeignKey("patrol_point.id", ondelete="CASCADE"), index=True)
    route_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("patrol_route.id", ondelete="SET NULL"))
    worker: Mapped[str] = mapped_column(String(100), index=True)
    team: Mapped[str | None] = mapped_column(String(100))
    #: when the worker checked in (the phone's clock; offline check-ins arrive later)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    accuracy_m: Mapped[float | None] = mapped_column(Float)
    distance_m: Mapped[float] = mapped_column(Float)
    allowed_m: Mapped[float] = mapped_column(Float)
    accepted: Mapped[bool] = mapped_column(Boolean)
    input_crs: Mapped[str] = mapped_column(String(20), default="EPSG:4326", server_default="EPSG:4326")
    geom = mapped_column(geom_type("POINT"), nullable=False)


# -- reads of the link columns ------------------------------------------------------------------
# Points and routes are linked in patrol_point_link / patrol_route_link (aliases ``pl``, ``rl``:
# scopes are built with those aliases). Check-ins, schedules and route points carry no links of
# their own: they are inside a jurisdiction when their patrol point is. Every read of link
# columns goes through these.
POINT_FROM = "patrol_point p LEFT JOIN patrol_point_link pl ON pl.id = p.id"
ROUTE_FROM = "patrol_route r LEFT JOIN patrol_route_link rl ON rl.id = r.id"
CHECKIN_FROM = f"patrol_checkin c JOIN {POINT_FROM} ON p.id = c.point_id"


def _jsonable(row) -> dict:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in dict(row).items()}


def _text(name: str, value, limit: int, required: bool = False) -> str | None:
    if value is None or value == "":
        if required:
            raise InvalidInput(f"{name} is required", field=name)
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be text, got {type(value).__name__}", field=name)
    if len(value) > limit:
        raise InvalidInput(f"{name} is {len(value)} characters; at most {limit}", field=name)
    return value


def _number(name: str, value, lo: float, hi: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidInput(f"{name} must be a number, got {value!r}", field=name)
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{name} must be a number, got {value!r}", field=name) from None
    if not lo <= v <= hi:
        raise InvalidInput(f"{name} must be between {lo:g} and {hi:g}, got {v:g}", field=name)
    return v


# -- points and routes --------------------------------------------------------------------------
_POINT_COLS = ("p.code, p.name, p.kind, p.radius_m, p.visits_per_day, p.team, pl.grid_code, pl.community_code, "
               "pl.street_code, pl.district_code")
_ROUTE_COLS = "r.code, r.name, r.team, rl.grid_code, rl.community_code, rl.street_code, rl.district_code"


def point_features(session: Session, scope: tuple[str, dict], *, limit: int = 10_000, offset: int = 0) -> dict:
    """Patrol points inside ``scope`` (link alias ``pl``) as a GeoJSON FeatureCollection, by code,
    with ``total`` (before paging)."""
    import json

    total = session.execute(text(f"SELECT count(*) FROM {POINT_FROM} WHERE {scope[0]}"), scope[1]).scalar()
    rows = session.execute(text(
        f"SELECT {_POINT_COLS}, ST_AsGeoJSON(p.geom, 7) AS gj FROM {POINT_FROM} WHERE {scope[0]} "
        "ORDER BY p.code LIMIT :limit OFFSET :offset"), {**scope[1], "limit": limit, "offset": offset}).mappings()
    feats = [{"type": "Feature", "geometry": json.loads(r["gj"]),
              "properties": {k: v for k, v in r.items() if k != "gj"}} for r in rows]
    return {"type": "FeatureCollection", "total": total, "features": feats}


def route_features(session: Session, scope: tuple[str, dict], *, limit: int = 1000, offset: int = 0) -> dict:
    """Patrol routes inside ``scope`` (link alias ``rl``) with the codes of the points they pass."""
    import json

    total = session.execute(text(f"SELECT count(*) FROM {ROUTE_FROM} WHERE {scope[0]}"), scope[1]).scalar()
    rows = session.execute(text(
        f"SELECT {_ROUTE_COLS}, ST_AsGeoJSON(r.geom, 7) AS gj, "
        "ARRAY(SELECT pp.code FROM patrol_route_point rp JOIN patrol_point pp ON pp.id = rp.point_id "
        "      WHERE rp.route_id = r.id ORDER BY rp.seq) AS points "
        f"FROM {ROUTE_FROM} WHERE {scope[0]} ORDER BY r.code LIMIT :limit OFFSET :offset"),
        {**scope[1], "limit": limit, "offset": offset}).mappings()
    feats = [{"type": "Feature", "geometry": json.loads(r["gj"]),
              "properties": {k: v for k, v in r.items() if k != "gj"}} for r in rows]
    return {"type": "FeatureCollection", "total": total, "features": feats}


def _one(session: Session, kind: str, code: str, scope: tuple[str, dict]) -> int:
    source, alias = (POINT_FROM, "p") if kind == "point" else (ROUTE_FROM, "r")
    found = session.execute(text(f"SELECT {alias}.id FROM {source} WHERE {alias}.code = :c AND {scope[0]}"),
                            {"c": code, **scope[1]}).scalar()
    if found is None:
        raise NotFound(f"no patrol {kind} {code!r} in your jurisdiction", field="code")
    return found


def point_id(session: Session, code: str, scope: tuple[str, dict]) -> int:
    """The id of patrol point ``code`` inside ``scope`` (link alias ``pl``); NotFound otherwise."""
    return _one(session, "point", code, scope)


def route_id(session: Session, code: str, scope: tuple[str, dict]) -> int:
    """The id of patrol route ``code`` inside ``scope`` (link alias ``rl``); NotFound otherwise."""
    return _one(session, "route", code, scope)


POINT_FIELDS = {"code", "name", "kind", "radius_m", "visits_per_day", "team", "geometry"}
ROUTE_FIELDS = {"code", "name", "team", "geometry", "points"}


def _check_point(rec: dict, label: str) -> None:
    if "kind" in rec and rec["kind"] not in KINDS:
        raise InvalidInput(f"kind must be one of {', '.join(KINDS)}, got {rec['kind']!r}", record=label, field="kind")
    if rec.get("radius_m") is not None:
        rec["radius_m"] = _number("radius_m", rec["radius_m"], 1, 5000)
    if rec.get("visits_per_day") is not None:
        v = rec["visits_per_day"]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 96:
            raise InvalidInput(f"visits_per_day must be a whole number 0–96, got {v!r}", record=label,
                               field="visits_per_day")
    for name, limit in (("name", 200), ("team", 100), ("code", 40)):
        try:
            _text(name, rec.get(name), limit)
        except InvalidInput as e:
            raise InvalidInput(e.message, record=label, field=name) from None


def add_points(session: Session, features: list[dict], actor: str, *, crs: str = "EPSG:4326") -> list[str]:
    """Import patrol points: GeoJSON features (properties: code, name, kind, radius_m,
    visits_per_day, team), all or nothing, linked and audited. Returns the codes."""
    from gisgrid.layers import writes

    records = []
    for i, f in enumerate(features, start=1):
        rec = _record_from_feature(f, POINT_FIELDS, f"patrol_point #{i}")
        _check_point(rec, f"patrol_point #{i}")
        records.append(rec)
    writes.add(session, "patrol_point", records, crs=crs, actor=actor)
    return [r["code"] for r in records]


def add_routes(session: Session, features: list[dict], actor: str, scope: tuple[str, dict], *,
               crs: str = "EPSG:4326") -> list[str]:
    """Import patrol routes: features with properties code, name, team and ``points`` (codes of
    the patrol points passed, in order; each inside ``scope``, link alias ``pl``)."""
    from gisgrid.layers import writes

    records, passes = [], []
    for i, f in enumerate(features, start=1):
        label = f"patrol_route #{i}"
        rec = _record_from_feature(f, ROUTE_FIELDS, label)
        pts = rec.pop("points", None) or []
        if not isinstance(pts, list) or not all(isinstance(c, str) for c in pts):
            raise InvalidInput("points must be a list of patrol point codes", record=label, field="points")
        for name, limit in (("name", 200), ("team", 100), ("code", 40)):
            _text(name, rec.get(name), limit)
        records.append(rec)
        passes.append(pts)
    ids = writes.add(session, "patrol_route", records, crs=crs, actor=actor)
    for rid, pts in zip(ids, passes):
        _set_route_points(session, rid, pts, scope)
    return [r["code"] for r in records]


def _set_route_points(session: Session, rid: int, codes: list[str], scope: tuple[str, dict]) -> None:
    session.execute(text("DELETE FROM patrol_route_point WHERE route_id = :r"), {"r": rid})
    for seq, code in enumerate(codes, start=1):
        pid = session.execute(text(f"SELECT p.id FROM {POINT_FROM} WHERE p.code = :c AND {scope[0]}"),
                              {"c": code, **scope[1]}).scalar()
        if pid is None:
            raise UnknownReference(f"no patrol point {code!r} in your jurisdiction", field="points")
        session.execute(text("INSERT INTO patrol_route_point (route_id, seq, point_id) VALUES (:r, :s, :p)"),
                        {"r": rid, "s": seq, "p": pid})


def _record_from_feature(f, allowed: set[str], label: str) -> dict:
    if not isinstance(f, dict) or f.get("type") != "Feature":
        raise InvalidInput("expected a GeoJSON Feature", record=label)
    props = f.get("properties") or {}
    if not isinstance(props, dict):
        raise InvalidInput("properties must be an object", record=label, field="properties")
    unknown = sorted(set(props) - allowed)
    if unknown:
        raise InvalidInput(f"unknown properties {unknown}; allowed: {sorted(allowed - {'geometry'})}",
                           record=label, field=unknown[0])
    return {**props, "geometry": f.get("geometry")}


def update(session: Session, kind: str, code: str, changes: dict, actor: str, scope: tuple[str, dict], *,
           crs: str = "EPSG:4326", point_scope: tuple[str, dict] | None = None) -> None:
    """Change a point's or route's fields (and geometry, then re-linked), audited with before/after.
    ``scope`` filters the record's own table (link alias ``pl`` for points, ``rl`` for routes); a route's
    new ``points`` must lie inside ``point_scope`` (link alias ``pl``)."""
    import json

    from gisgrid.layers import audit, linking
    from gisgrid.spatial import crs as crs_mod
    from gisgrid.spatial.geometry import check, from_geojson

    table = "patrol_point" if kind == "point" else "patrol_route"
    allowed = (POINT_FIELDS if kind == "point" else ROUTE_FIELDS) - {"code"}
    unknown = sorted(set(changes) - allowed)
    if unknown or not changes:
        raise InvalidInput(f"unknown fields {unknown}; allowed: {sorted(allowed)}" if unknown
                           else f"nothing to change; fields: {sorted(allowed)}", field=unknown[0] if unknown else None)
    rid = _one(session, kind, code, scope)
    changes = dict(changes)
    if kind == "point":
        _check_point(changes, f"{table} {code}")
    pts = changes.pop("points", None)
    before = dict(session.execute(text(f"SELECT name, team, ST_AsGeoJSON(geom) AS geometry FROM {table} "
                                       "WHERE id = :i"), {"i": rid}).mappings().one())
    sets, params = [], {"i": rid}
    geom = changes.pop("geometry", None)
    for k, v in changes.items():
        if k in ("name",) and not v:
            raise InvalidInput("name may not be empty", field="name")
        sets.append(f"{k} = :{k}")
        params[k] = v
    if geom is not None:
        g = check(crs_mod.to_storage(from_geojson(geom) if isinstance(geom, dict) else geom, crs),
                  ("Point",) if kind == "point" else ("LineString", "MultiLineString"))
        sets.append("geom = ST_SetSRID(ST_GeomFromWKB(:geom), 4326)")
        params["geom"] = g.wkb
    if sets:
        session.execute(text(f"UPDATE {table} SET {', '.join(sets)} WHERE id = :i"), params)
    if geom is not None:
        linking.link_ids(session, table, [rid])
    if pts is not None:
        if not isinstance(pts, list) or not all(isinstance(c, str) for c in pts):
            raise InvalidInput("points must be a list of patrol point codes", field="points")
        _set_route_points(session, rid, pts, point_scope or ("FALSE", {}))
    after = {**{k: v for k, v in changes.items()}, **({"geometry": json.loads(json.dumps(geom))} if geom else {}),
             **({"points": pts} if pts is not None else {})}
    audit.record(session, actor, "update", table, rid, before=before, after=after)


def delete(session: Session, kind: str, code: str, actor: str, scope: tuple[str, dict]) -> None:
    """Delete a point (its schedules and check-ins go with it) or a route, audited."""
    from gisgrid.layers import audit

    table = "patrol_point" if kind == "point" else "patrol_route"
    rid = _one(session, kind, code, scope)
    before = dict(session.execute(text(f"SELECT code, name, team, ST_AsGeoJSON(geom) AS geometry FROM {table} "
                                       "WHERE id = :i"), {"i": rid}).mappings().one())
    session.execute(text(f"DELETE FROM {table} WHERE id = :i"), {"i": rid})
    audit.record(session, actor, "delete", table, rid, before=before)


# -- schedules ----------------------------------------------------------------------------------
SCHEDULE_FIELDS = {"point", "route", "team", "visits_per_day", "weekdays", "start_time", "end_time",
                   "valid_from", "valid_to"}


def add_schedule(session: Session, actor: str, scope_points: tuple[str, dict], scope_routes: tuple[str, dict],
                 **fields) -> dict:
    """Plan visits: ``point`` or ``route`` (a code inside the scope), ``visits_per_day`` (1–96),
    ``weekdays`` ("1234567", ISO, 1 = Monday), optional ``team``, ``start_time``/``end_time``
    ("HH:MM") and ``valid_from``/``valid_to`` (ISO dates)."""
    from gisgrid.layers import audit

    unknown = sorted(set(fields) - SCHEDULE_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown fields {unknown}; allowed: {sorted(SCHEDULE_FIELDS)}", field=unknown[0])
    if bool(fields.get("point")) == bool(fields.get("route")):
        raise InvalidInput("give exactly one of point or route", field="point")
    v = fields.get("visits_per_day")
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 96:
        raise InvalidInput(f"visits_per_day must be a whole number 1–96, got {v!r}", field="visits_per_day")
    weekdays = fields.get("weekdays") or "1234567"
    if not isinstance(weekdays, str) or not weekdays or any(ch not in "1234567" for ch in weekdays) \
            or len(set(weekdays)) != len(weekdays):
        raise InvalidInput(f"weekdays must be distinct digits 1 (Monday) to 7 (Sunday), got {weekdays!r}",
                           field="weekdays")
    times = {k: _parse(k, fields.get(k), time) for k in ("start_time", "end_time")}
    days = {k: _parse(k, fields.get(k), date) for k in ("valid_from", "valid_to")}
    if days["valid_from"] and days["valid_to"] and days["valid_to"] < days["valid_from"]:
        raise InvalidInput("valid_to is before valid_from", field="valid_to")
    team = _text("team", fields.get("team"), 100)
    pid = point_id(session, fields["point"], scope_points) if fields.get("point") else None
    rid = route_id(session, fields["route"], scope_routes) if fields.get("route") else None
    sid = session.execute(text(
        "INSERT INTO patrol_schedule (point_id, route_id, team, visits_per_day, weekdays, start_time, end_time, "
        "valid_from, valid_to) VALUES (:p, :r, :t, :v, :w, :st, :et, :vf, :vt) RETURNING id"),
        {"p": pid, "r": rid, "t": team, "v": v, "w": "".join(sorted(weekdays)), "st": times["start_time"],
         "et": times["end_time"], "vf": days["valid_from"], "vt": days["valid_to"]}).scalar()
    out = {"id": sid, "point": fields.get("point"), "route": fields.get("route"), "team": team, "visits_per_day": v,
           "weekdays": "".join(sorted(weekdays)), **{k: x.isoformat() if x else None for k, x in {**times, **days}.items()}}
    audit.record(session, actor, "create", "patrol_schedule", sid, after=out)
    return out


def _parse(name: str, value, kind):
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be text ({'HH:MM' if kind is time else 'YYYY-MM-DD'}), got {value!r}",
                           field=name)
    try:
        return kind.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{name} must be {'a time HH:MM' if kind is time else 'a date YYYY-MM-DD'}, "
                           f"got {value!r}", field=name) from None


_SCHEDULE_SCOPE = (
    "FROM patrol_schedule s LEFT JOIN patrol_point p ON p.id = s.point_id "
    "LEFT JOIN patrol_point_link pl ON pl.id = p.id LEFT JOIN patrol_route r ON r.id = s.route_id "
    "LEFT JOIN patrol_route_link rl ON rl.id = r.id "
)


def schedules(session: Session, scope_points: tuple[str, dict], scope_routes: tuple[str, dict]) -> list[dict]:
    """Schedules of the points (link alias ``pl``) and routes (link alias ``rl``) inside the scope."""
    rows = session.execute(text(
        "SELECT s.id, p.code AS point, r.code AS route, s.team, s.visits_per_day, s.weekdays, s.start_time, "
        f"s.end_time, s.valid_from, s.valid_to {_SCHEDULE_SCOPE} "
        f"WHERE (s.point_id IS NOT NULL AND {scope_points[0]}) OR (s.route_id IS NOT NULL AND {scope_routes[0]}) "
        "ORDER BY s.id"), {**scope_points[1], **scope_routes[1]}).mappings()
    return [_jsonable(r) for r in rows]


def delete_schedule(session: Session, sid: int, actor: str, scope_points, scope_routes) -> None:
    from gisgrid.layers import audit

    found = session.execute(text(
        f"SELECT s.id {_SCHEDULE_SCOPE} WHERE s.id = :i AND ((s.point_id IS NOT NULL AND {scope_points[0]}) "
        f"OR (s.route_id IS NOT NULL AND {scope_routes[0]}))"), {"i": sid, **scope_points[1], **scope_routes[1]}).scalar()
    if found is None:
        raise NotFound(f"no schedule {sid} in your jurisdiction", field="id")
    session.execute(text("DELETE FROM patrol_schedule WHERE id = :i"), {"i": sid})
    audit.record(session, actor, "delete", "patrol_schedule", sid)


# -- check-ins ----------------------------------------------------------------------------------
MAX_CLOCK_SKEW_S = 600          # a check-in may not claim to be from the future (phone clocks drift)
MAX_AGE_DAYS = 30               # an offline queue older than this is refused, not silently dated


def allowed_metres(radius_m: float, accuracy_m: float | None) -> float:
    """How far from a point a check-in is still accepted: the radius plus the GPS accuracy,
    the accuracy counting for at most the radius.

    >>> allowed_metres(50, 20), allowed_metres(50, 500), allowed_metres(50, None)
    (70.0, 100.0, 50.0)
    """
    return float(radius_m) + min(float(accuracy_m or 0.0), float(radius_m))


CHECKIN_FIELDS = {"point", "lon", "lat", "crs", "accuracy_m", "at", "route", "team", "client_uuid"}


def check_in(session: Session, worker: str, scope: tuple[str, dict], *, point, lon, lat, crs="EPSG:4326",
             accuracy_m=None, at=None, route=None, team=None, idempotency_key=None) -> tuple[dict, bool]:
    """Record a check-in attempt at patrol point ``point`` (a code inside ``scope``, link alias ``pl``).

    Accepted or rejected by :func:`allowed_metres` on the spheroidal distance; either way the
    attempt is stored (rejected ones with their distance). Idempotent: a resend with the same
    key returns the first attempt and ``created=False``, whatever its body.

    Parameters
    ----------
    at : str or datetime, optional
        When the worker checked in (ISO 8601 with a time zone); default now. Not more than
        ten minutes ahead of the server's clock, not older than 30 days.
    team : str, optional
        Default: the team of the point's first schedule, else the point's own team.

    Returns
    -------
    (dict, bool)
        The check-in (code of the point, distance_m, allowed_m, accepted, …) and whether it
        was created now.
    """
    import uuid

    from gisgrid.layers import audit
    from gisgrid.spatial.crs import point_to_storage

    key = _text("idempotency_key", idempotency_key, 100)
    if key:
        found = _checkin_by_key(session, key)
        if found:
            return found, False
    code = _text("point", point, 40, required=True)
    acc = _number("accuracy_m", accuracy_m, 0, 100_000)
    when = _when(at)
    pos = point_to_storage(lon, lat, crs)
    pid = point_id(session, code, scope)
    rid = route_id(session, _text("route", route, 40), scope_routes_of(scope)) if route else None
    team = _text("team", team, 100)
    radius, default_team = session.execute(text(
        "SELECT p.radius_m, coalesce((SELECT s.team FROM patrol_schedule s WHERE s.point_id = p.id "
        "AND s.team IS NOT NULL ORDER BY s.id LIMIT 1), p.team) FROM patrol_point p WHERE p.id = :i"),
        {"i": pid}).one()
    allowed = allowed_metres(radius, acc)
    new_id = session.execute(text(
        "INSERT INTO patrol_checkin (key, point_id, route_id, worker, team, at, accuracy_m, distance_m, allowed_m, "
        "accepted, input_crs, geom) "
        "SELECT :key, p.id, :rid, :worker, :team, coalesce(CAST(:at AS timestamptz), now()), :acc, d.m, :allowed, "
        "d.m <= :allowed, :crs, ST_SetSRID(ST_MakePoint(:x, :y), 4326) "
        "FROM patrol_point p, LATERAL (SELECT ST_Distance(p.geom::geography, "
        "ST_SetSRID(ST_MakePoint(:x, :y), 4326)::geography) AS m) d WHERE p.id = :pid "
        "ON CONFLICT (key) DO NOTHING RETURNING id"),
        {"key": key or str(uuid.uuid4()), "pid": pid, "rid": rid, "worker": worker, "team": team or default_team,
         "at": when, "acc": acc, "allowed": allowed, "crs": str(crs), "x": pos.x, "y": pos.y}).scalar()
    if new_id is None:               # a concurrent resend with the same key won the race
        return _checkin_by_key(session, key), False
    out = _checkin(session, "c.id = :i", {"i": new_id})
    audit.record(session, worker, "checkin", "patrol_checkin", new_id,
                 after={"point": code, "accepted": out["accepted"], "distance_m": out["distance_m"],
                        "lon": pos.x, "lat": pos.y})
    return out, True


def scope_routes_of(scope: tuple[str, dict]) -> tuple[str, dict]:
    """The same jurisdiction condition for routes (link alias ``rl``) as ``scope`` is for points (``pl``)."""
    return scope[0].replace("pl.", "rl."), scope[1]


def _when(at) -> datetime | None:
    from datetime import timedelta, timezone

    if at is None or at == "":
        return None
    if isinstance(at, str):
        try:
            at = datetime.fromisoformat(at.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInput(f"at must be an ISO 8601 date-time with a time zone, got {at!r}", field="at") from None
    if not isinstance(at, datetime):
        raise InvalidInput(f"at must be an ISO 8601 date-time, got {at!r}", field="at")
    if at.tzinfo is None:
        raise InvalidInput(f"at must carry a time zone (…Z or +08:00), got {at.isoformat()}", field="at")
    now = datetime.now(timezone.utc)
    if at > now + timedelta(seconds=MAX_CLOCK_SKEW_S):
        raise InvalidInput(f"at {at.isoformat()} is in the future (server time {now.isoformat(timespec='seconds')})",
                           field="at")
    if at < now - timedelta(days=MAX_AGE_DAYS):
        raise InvalidInput(f"at {at.isoformat()} is more than {MAX_AGE_DAYS} days ago", field="at")
    return at


_CHECKIN_SELECT = (
    "SELECT c.id, c.key, p.code AS point, p.name AS point_name, r.code AS route, c.worker, c.team, c.at, "
    "c.received_at, c.accuracy_m, round(c.distance_m::numeric, 2)::float AS distance_m, c.allowed_m, c.accepted, "
    "ST_X(c.geom) AS lon, ST_Y(c.geom) AS lat, pl.grid_code "
    f"FROM {CHECKIN_FROM} LEFT JOIN patrol_route r ON r.id = c.route_id "
)


def _checkin_row(row) -> dict:
    out = _jsonable(row)
    out.pop("id")
    out.pop("key")
    out["status"] = "accepted" if out["accepted"] else "rejected"
    return out


def _checkin(session: Session, where: str, params: dict) -> dict | None:
    row = session.execute(text(_CHECKIN_SELECT + f"WHERE {where}"), params).mappings().first()
    return None if row is None else _checkin_row(row)


def _checkin_by_key(session: Session, key: str) -> dict | None:
    return _checkin(session, "c.key = :k", {"k": key})


def checkins(session: Session, scope: tuple[str, dict], *, worker=None, point=None, accepted=None, since=None,
             until=None, limit=100, offset=0) -> dict:
    """Check-in attempts at points inside ``scope`` (link alias ``pl``), newest first."""
    conds, params = [scope[0]], dict(scope[1])
    for col, val, name in (("c.worker", worker, "worker"), ("p.code", point, "point")):
        if val:
            conds.append(f"{col} = :{name}")
            params[name] = val
    if accepted is not None:
        conds.append("c.accepted = :acc")
        params["acc"] = accepted
    _between(conds, params, "c.at", since, until)
    where = " AND ".join(conds)
    total = session.execute(text(f"SELECT count(*) FROM {CHECKIN_FROM} WHERE {where}"), params).scalar()
    rows = session.execute(text(_CHECKIN_SELECT + f"WHERE {where} ORDER BY c.at DESC, c.id DESC "
                                "LIMIT :limit OFFSET :offset"), {**params, "limit": limit, "offset": offset}).mappings()
    return {"total": total, "items": [_checkin_row(r) for r in rows]}


def _between(conds: list, params: dict, col: str, since, until) -> None:
    if since:
        conds.append(f"{col} >= :since")
        params["since"] = since
    if until:
        conds.append(f"{col} < :until")
        params["until"] = until


def trail(session: Session, scope: tuple[str, dict], worker: str, day: date) -> dict:
    """A worker's check-ins (accepted and rejected) on one local day, in time order, as a
    GeoJSON FeatureCollection: one LineString through them (when there are two or more) and one
    Point per check-in."""
    rows = session.execute(text(
        _CHECKIN_SELECT + f"WHERE c.worker = :w AND (c.at AT TIME ZONE '{LOCAL_TZ}')::date = :d AND {scope[0]} "
        "ORDER BY c.at, c.id"), {"w": worker, "d": day, **scope[1]}).mappings()
    pts = [_checkin_row(r) for r in rows]
    feats = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [p["lon"], p["lat"]]},
              "properties": {k: v for k, v in p.items() if k not in ("lon", "lat")}} for p in pts]
    if len(pts) >= 2:
        feats.insert(0, {"type": "Feature", "properties": {"worker": worker, "day": day.isoformat(),
                                                           "checkins": len(pts)},
                         "geometry": {"type": "LineString", "coordinates": [[p["lon"], p["lat"]] for p in pts]}})
    return {"type": "FeatureCollection", "features": feats}


# -- compliance ----------------------------------------------------------------------------------
#: planned visits per (point, local day, team, route): point schedules, route schedules (every
#: point the route passes), and a point's own ``visits_per_day`` where no schedule names it.
_PLAN = f"""
    days AS (SELECT d::date AS day FROM generate_series(CAST(:d0 AS date), CAST(:d1 AS date) - 1, interval '1 day') d),
    pts AS (SELECT p.id, p.code, p.name, p.kind, p.team, p.visits_per_day, pl.grid_code, pl.community_code,
                   pl.street_code, pl.district_code FROM {POINT_FROM} WHERE {{scope}}),
    sched AS (
        SELECT s.point_id, NULL::int AS route_id, s.team, s.visits_per_day, s.weekdays, s.valid_from, s.valid_to
        FROM patrol_schedule s WHERE s.point_id IS NOT NULL
        UNION ALL
        SELECT rp.point_id, s.route_id, coalesce(s.team, r.team), s.visits_per_day, s.weekdays, s.valid_from,
               s.valid_to
        FROM patrol_schedule s JOIN patrol_route r ON r.id = s.route_id
        JOIN patrol_route_point rp ON rp.route_id = s.route_id),
    plan AS (
        SELECT p.id AS point_id, x.day, coalesce(s.team, p.team) AS team, s.route_id, s.visits_per_day AS planned
        FROM pts p JOIN sched s ON s.point_id = p.id CROSS JOIN days x
        WHERE strpos(s.weekdays, extract(isodow FROM x.day)::int::text) > 0
          AND (s.valid_from IS NULL OR x.day >= s.valid_from) AND (s.valid_to IS NULL OR x.day <= s.valid_to)
        UNION ALL
        SELECT p.id, x.day, p.team, NULL::int, p.visits_per_day
        FROM pts p CROSS JOIN days x
        WHERE p.visits_per_day > 0 AND NOT EXISTS (SELECT 1 FROM sched s WHERE s.point_id = p.id)),
    visits AS (
        SELECT c.point_id, (c.at AT TIME ZONE '{LOCAL_TZ}')::date AS day, count(*) AS actual
        FROM patrol_checkin c JOIN pts p ON p.id = c.point_id
        WHERE c.accepted AND c.at >= (CAST(:d0 AS date) - interval '1 day') AND c.at < (CAST(:d1 AS date) + interval '1 day')
        GROUP BY 1, 2),
    pd AS (   -- one row per point and day: planned, actual, done (actual counted up to the plan)
        SELECT coalesce(pl.point_id, v.point_id) AS point_id, coalesce(pl.day, v.day) AS day,
               coalesce(pl.planned, 0) AS planned, coalesce(v.actual, 0) AS actual,
               least(coalesce(v.actual, 0), coalesce(pl.planned, 0)) AS done
        FROM (SELECT point_id, day, sum(planned) AS planned FROM plan GROUP BY 1, 2) pl
        FULL JOIN (SELECT * FROM visits v WHERE v.day >= :d0 AND v.day < :d1) v
          ON v.point_id = pl.point_id AND v.day = pl.day)
"""
COMPLIANCE_BY = ("point", "route", "team", "day")
COMPLIANCE_COLUMNS = {
    "key": ("对象", "subject"), "name": ("名称", "name"), "day": ("日期", "day"), "planned": ("应巡次数", "planned"),
    "actual": ("实巡次数", "actual"), "done": ("完成次数", "done"), "rate": ("完成率", "compliance rate"),
}


def compliance(session: Session, scope: tuple[str, dict], *, by: str = "point", since: date, until: date,
               per_day: bool = False) -> list[dict]:
    """Planned versus actual visits per ``by`` (point, route, team or day) over the local days
    ``[since, until)`` at points inside ``scope`` (link alias ``pl``).

    * planned: the schedules' visits per day for each day they apply (:data:`_PLAN`);
    * actual: accepted check-ins that day;
    * done: actual counted up to the plan (a point visited 5 times of 2 planned has done 2);
    * rate (完成率) = done / planned, a fraction; None where nothing was planned.
    A route's figures are those of the points it passes, planned by that route's schedules;
    a team's those of the plans naming it (a route's team, else the point's).
    ``per_day`` splits every row by day too.
    """
    if by not in COMPLIANCE_BY:
        raise InvalidInput(f"by must be one of {', '.join(COMPLIANCE_BY)}, got {by!r}", field="by")
    _check_range(since, until)
    day_col = ", pd.day" if per_day and by != "day" else ""
    if by == "point":
        body = (f"SELECT p.code AS key, p.name{day_col}, sum(pd.planned) AS planned, sum(pd.actual) AS actual, "
                f"sum(pd.done) AS done FROM pd JOIN pts p ON p.id = pd.point_id GROUP BY p.code, p.name{day_col}")
    elif by == "day":
        body = ("SELECT to_char(pd.day, 'YYYY-MM-DD') AS key, NULL::text AS name, sum(pd.planned) AS planned, "
                "sum(pd.actual) AS actual, sum(pd.done) AS done FROM pd GROUP BY pd.day")
    else:
        # share each point-day's done visits among its plans in proportion to what they planned
        col = "pl.route_id" if by == "route" else "pl.team"
        join = ("JOIN patrol_route r ON r.id = pl.route_id" if by == "route" else "")
        key, name = ("r.code", "r.name") if by == "route" else ("pl.team", "NULL::text")
        group = f"{key}, r.name" if by == "route" else key
        body = (f"SELECT {key} AS key, {name} AS name{day_col.replace('pd.', 'pl.')}, sum(pl.planned) AS planned, "
                "sum(pd.actual::numeric * pl.planned / nullif(pd.planned, 0)) AS actual, "
                "sum(pd.done::numeric * pl.planned / nullif(pd.planned, 0)) AS done "
                f"FROM plan pl JOIN pd ON pd.point_id = pl.point_id AND pd.day = pl.day {join} "
                f"WHERE {col} IS NOT NULL GROUP BY {group}{day_col.replace('pd.', 'pl.')}")
    sql = "WITH " + _PLAN.format(scope=scope[0]) + f", out AS ({body}) SELECT * FROM out ORDER BY 1" + \
          (", day" if day_col else "")
    rows = session.execute(text(sql), {**scope[1], "d0": since, "d1": until}).mappings()
    out = []
    for r in rows:
        planned, done = float(r["planned"] or 0), float(r["done"] or 0)
        out.append({"key": r["key"], "name": r["name"],
                    "day": (r["day"].isoformat() if "day" in r and r["day"] else (r["key"] if by == "day" else None)),
                    "planned": _num(planned), "actual": _num(float(r["actual"] or 0)), "done": _num(done),
                    "rate": round(done / planned, 4) if planned else None})
    return out


def _num(x: float):
    return int(x) if float(x).is_integer() else round(x, 2)


def _check_range(since: date, until: date, max_days: int = 366) -> None:
    if since is None or until is None:
        raise InvalidInput("since and until (dates) are required", field="since")
    if until <= since:
        raise InvalidInput(f"until ({until}) must be after since ({since})", field="until")
    if (until - since).days > max_days:
        raise InvalidInput(f"at most {max_days} days at once, got {(until - since).days}", field="until")


def overdue(session: Session, scope: tuple[str, dict], *, now: datetime | None = None) -> list[dict]:
    """Points inside ``scope`` (link alias ``pl``) due for a visit: with ``n`` planned visits today,
    a point is overdue when its last accepted check-in is more than ``24/n`` hours ago, or it
    has none. Most overdue first."""
    params = {**scope[1], "now": now}
    rows = session.execute(text(
        "WITH " + _PLAN.format(scope=scope[0]).replace(
            ":d0", "(CAST(coalesce(CAST(:now AS timestamptz), now()) AT TIME ZONE 'Asia/Shanghai' AS date))").replace(
            ":d1", "(CAST(coalesce(CAST(:now AS timestamptz), now()) AT TIME ZONE 'Asia/Shanghai' AS date) + 1)") +
        ", today AS (SELECT point_id, sum(planned) AS n FROM plan GROUP BY 1) "
        "SELECT p.code, p.name, p.team, p.grid_code, t.n AS planned_today, l.last AS last_visit, "
        "round(24.0 / t.n, 2)::float AS interval_hours, "
        "round((extract(epoch FROM coalesce(CAST(:now AS timestamptz), now()) - l.last) / 3600)::numeric, 2)::float "
        "  AS hours_since "
        "FROM today t JOIN pts p ON p.id = t.point_id "
        "LEFT JOIN LATERAL (SELECT max(c.at) AS last FROM patrol_checkin c WHERE c.point_id = p.id AND c.accepted "
        "  AND c.at <= coalesce(CAST(:now AS timestamptz), now())) l ON true "
        "WHERE t.n > 0 AND (l.last IS NULL OR coalesce(CAST(:now AS timestamptz), now()) - l.last "
        "  > make_interval(secs => 86400.0 / t.n)) "
        "ORDER BY l.last NULLS FIRST, p.code"), params).mappings()
    return [_jsonable(r) for r in rows]


# -- statistics ----------------------------------------------------------------------------------
STAT_LEVELS = {"grid": "grid_code", "community": "community_code", "street": "street_code", "district": "district_code"}
STAT_COLUMNS = {
    "code": ("区域编码", "area code"), "name": ("区域名称", "area name"), "points": ("巡逻点", "patrol points"),
    "duty_posts": ("执勤点", "duty posts"), "checkins": ("签到次数", "check-ins"), "accepted": ("有效签到", "accepted"),
    "rejected": ("无效签到", "rejected"), "workers": ("巡逻人员", "workers"), "planned": ("应巡次数", "planned"),
    "done": ("完成次数", "done"), "compliance_rate": ("完成率", "compliance rate"),
    "acceptance_rate": ("签到有效率", "acceptance rate"),
}


def statistics(session: Session, scope: tuple[str, dict], *, level: str = "community", since: date,
               until: date) -> list[dict]:
    """Patrol figures per area of ``level`` over the local days ``[since, until)``: points and
    duty posts, check-in attempts (accepted, rejected), workers, planned and done visits
    (as :func:`compliance`), with the rates as fractions (None where nothing to divide)."""
    if level not in STAT_LEVELS:
        raise InvalidInput(f"level must be one of {', '.join(STAT_LEVELS)}, got {level!r}", field="level")
    _check_range(since, until)
    col = STAT_LEVELS[level]
    names = ("(SELECT name FROM grid WHERE code = a.code AND valid_to IS NULL LIMIT 1)" if level == "grid"
             else "(SELECT name FROM admin_area WHERE code = a.code)")
    sql = "WITH " + _PLAN.format(scope=scope[0]) + f""",
        a AS (
            SELECT p.{col} AS code, count(*) FILTER (WHERE p.kind = 'patrol_point') AS points,
                   count(*) FILTER (WHERE p.kind = 'duty_post') AS duty_posts,
                   sum(c.n) AS checkins, sum(c.ok) AS accepted, sum(x.planned) AS planned, sum(x.done) AS done
            FROM pts p
            LEFT JOIN LATERAL (SELECT count(*) AS n, count(*) FILTER (WHERE accepted) AS ok FROM patrol_checkin c
                               WHERE c.point_id = p.id AND (c.at AT TIME ZONE '{LOCAL_TZ}')::date >= :d0
                               AND (c.at AT TIME ZONE '{LOCAL_TZ}')::date < :d1) c ON true
            LEFT JOIN LATERAL (SELECT sum(planned) AS planned, sum(done) AS done FROM pd WHERE pd.point_id = p.id) x ON true
            WHERE p.{col} IS NOT NULL GROUP BY p.{col}),
        w AS (
            SELECT p.{col} AS code, count(DISTINCT c.worker) AS workers FROM patrol_checkin c JOIN pts p ON p.id = c.point_id
            WHERE (c.at AT TIME ZONE '{LOCAL_TZ}')::date >= :d0 AND (c.at AT TIME ZONE '{LOCAL_TZ}')::date < :d1
            GROUP BY 1)
        SELECT a.*, coalesce(w.workers, 0) AS workers, {names} AS name FROM a LEFT JOIN w ON w.code = a.code
        ORDER BY a.code"""
    out = []
    for r in session.execute(text(sql), {**scope[1], "d0": since, "d1": until}).mappings():
        checkins_n, ok = int(r["checkins"] or 0), int(r["accepted"] or 0)
        planned, done = int(r["planned"] or 0), int(r["done"] or 0)
        out.append({"code": r["code"], "name": r["name"], "points": r["points"], "duty_posts": r["duty_posts"],
                    "checkins": checkins_n, "accepted": ok, "rejected": checkins_n - ok, "workers": r["workers"],
                    "planned": planned, "done": done,
                    "compliance_rate": round(done / planned, 4) if planned else None,
                    "acceptance_rate": round(ok / checkins_n, 4) if checkins_n else None})
    return out
