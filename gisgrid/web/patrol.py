"""Patrol API: points and routes (CRUD, import, export), schedules, check-ins from the phone
(idempotent), coverage and uncovered areas, compliance, overdue points, a worker's trail,
statistics. Views are thin: access → parse → layer function → serialise; every query is
filtered by the caller's jurisdiction."""
from __future__ import annotations

from datetime import date, timedelta

from flask import Blueprint, jsonify, request
from sqlalchemy import text

from gisgrid import authz
from gisgrid.errors import InvalidInput
from gisgrid.layers import patrol, patrol_coverage
from gisgrid.web import db, openapi, settings
from gisgrid.web.auth import check_pagination, limited, needs, principal
from gisgrid.web.incidents import _caller_key, _json_body, _report_limit, download

bp = Blueprint("patrol", __name__, url_prefix="/api/patrol")


def _scopes():
    p = principal()
    return authz.scope_sql(p, "pl"), authz.scope_sql(p, "rl")


def _format() -> str:
    fmt = request.args.get("format", "json")
    if fmt not in ("json", "csv", "xlsx"):
        raise InvalidInput(f"format must be json, csv or xlsx, got {fmt!r}", field="format")
    if fmt != "json":
        authz.require(principal(), "export")
    return fmt


def _day(name: str, default: date | None = None) -> date | None:
    value = request.args.get(name)
    if not value:
        return default
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{name} must be a date YYYY-MM-DD, got {value!r}", field=name) from None


def _range() -> tuple[date, date]:
    """``since`` (default: 6 days before today) and ``until`` (default: tomorrow), local days."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    today = datetime.now(ZoneInfo(patrol.LOCAL_TZ)).date()
    return _day("since", today - timedelta(days=6)), _day("until", today + timedelta(days=1))


def _features(body) -> list:
    if isinstance(body, dict) and body.get("type") == "FeatureCollection" and isinstance(body.get("features"), list):
        return body["features"]
    if isinstance(body, dict) and body.get("type") == "Feature":
        return [body]
    raise InvalidInput("send a GeoJSON Feature or FeatureCollection (Content-Type: application/json)", field="body")


def _must_be_inside(kind: str, codes: list[str]) -> None:
    """What a planner writes must land in their jurisdiction (checked after linking, before commit)."""
    source, alias = (patrol.POINT_FROM, "p") if kind == "point" else (patrol.ROUTE_FROM, "r")
    where, params = authz.scope_sql(principal(), alias + "l")
    inside = db().execute(text(f"SELECT count(*) FROM {source} WHERE {alias}.code = ANY(:c) AND {where}"),
                          {"c": codes, **params}).scalar()
    if inside != len(codes):
        raise authz.Forbidden(f"{len(codes) - inside} of the {kind}s would lie outside your jurisdiction")


# -- points ---------------------------------------------------------------------------------------
POINT_EXPORT = {"code": ("编码", "code"), "name": ("名称", "name"), "kind": ("类型", "kind"),
                "radius_m": ("签到半径(米)", "radius (m)"), "visits_per_day": ("每日巡查次数", "visits per day"),
                "team": ("巡逻队", "team"), "grid_code": ("网格编码", "grid code"), "lon": ("经度", "lon"),
                "lat": ("纬度", "lat")}


@bp.get("/points")
@needs("read")
def point_list():
    """Patrol points and duty posts of the caller's jurisdiction; ``format=csv|xlsx`` exports.
    ---
    get:
      summary: Patrol points (巡逻点/执勤点) as GeoJSON
      parameters:
        - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 10000, default: 10000}}
        - {name: offset, in: query, schema: {type: integer, minimum: 0, maximum: 10000000, default: 0}}
        - {name: format, in: query, schema: {type: string, enum: [json, csv, xlsx], default: json}}
        - {name: lang, in: query, schema: {type: string, enum: [zh, en], default: zh}}
      responses:
        200:
          description: the points
          content:
            application/json: {schema: {$ref: '#/components/schemas/FeatureCollection'}}
            text/csv: {schema: {type: string}}
            application/vnd.openxmlformats-officedocument.spreadsheetml.sheet: {schema: {type: string, format: binary}}
        400: {$ref: '#/components/responses/BadRequest'}
        401: {$ref: '#/components/responses/Unauthenticated'}
        403: {$ref: '#/components/responses/Forbidden'}
    """
    fmt = _format()
    limit, offset = check_pagination(request.args.get("limit"), request.args.get("offset"), default=10_000, cap=10_000)
    fc = patrol.point_features(db(), _scopes()[0], limit=limit, offset=offset)
    if fmt == "json":
        return jsonify(fc)
    rows = [{**f["properties"], "lon": f["geometry"]["coordinates"][0], "lat": f["geometry"]["coordinates"][1]}
            for f in fc["features"]]
    return download(rows, POINT_EXPORT, "gisgrid-patrol-points", fmt)


@bp.post("/points")
@needs("plan")
def point_import():
    """Add patrol points: a GeoJSON Feature or FeatureCollection of Points (properties code,
    name, kind, radius_m, visits_per_day, team), all or nothing.
    ---
    post:
      summary: Add or import patrol points (新增/导入巡逻点)
    """
    s = db()
    codes = patrol.add_points(s, _features(request.get_json(silent=True)), principal().username,
                              crs=request.args.get("crs", "EPSG:4326"))
    _must_be_inside("point", codes)
    s.commit()
    return jsonify({"codes": codes}), 201


@bp.get("/points/<code>")
@needs("read")
def point_detail(code):
    """One patrol point with its schedules and its last check-ins.
    ---
    get:
      summary: One patrol point (巡逻点详情)
      parameters:
        - {name: code, in: path, required: true, schema: {type: string}}
      responses:
        200: {description: the point, content: {application/json: {schema: {type: object}}}}
        401: {$ref: '#/components/responses/Unauthenticated'}
        404: {$ref: '#/components/responses/NotFound'}
    """
    s, (sp, sr) = db(), _scopes()
    patrol.point_id(s, code, sp)
    feat = patrol.point_features(s, (f"p.code = :one AND {sp[0]}", {**sp[1], "one": code}), limit=1)["features"][0]
    feat["properties"]["schedules"] = [x for x in patrol.schedules(s, sp, sr) if x["point"] == code]
    feat["properties"]["last_checkins"] = patrol.checkins(s, sp, point=code, limit=10)["items"]
    return jsonify(feat)


IMPORT_DOC = """
      requestBody:
        required: true
        content:
          application/json:
            schema: {type: object, required: [type]}
      responses:
        201:
          description: the codes added
          content: {application/json: {schema: {type: object, required: [codes], properties: {codes: {type: array, items: {type: string}}}}}}
        400: {$ref: '#/components/responses/BadRequest'}
        401: {$ref: '#/components/responses/Unauthenticated'}
        403: {$ref: '#/components/responses/Forbidden'}
        409: {$ref: '#/components/responses/Conflict'}
        422: {$ref: '#/components/responses/Unprocessable'}
"""
DELETE_DOC = """
      parameters:
        - {name: code, in: path, required: true, schema: {type: string}}
      responses:
        200: {description: deleted, content: {application/json: {schema: {type: object}}}}
        401: {$ref: '#/components/responses/Unauthenticated'}
        403: {$ref: '#/components/responses/Forbidden'}
        404: {$ref: '#/components/responses/NotFound'}
"""
PATCH_DOC = """
      requestBody:
        required: true
        content:
          application/json:
            schema: {type: object}
      responses:
        200: {description: changed, content: {application/json: {schema: {type: object}}}}
        400: {$ref: '#/components/responses/BadRequest'}
        401: {$ref: '#/components/responses/Unauthenticated'}
        403: {$ref: '#/components/responses/Forbidden'}
        404: {$ref: '#/components/responses/NotFound'}
        422: {$ref: '#/components/responses/Unprocessable'}
"""


def _patch(kind: str, code: str):
    s, (sp, sr) = db(), _scopes()
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object of the fields to change", field="body")
    patrol.update(s, kind, code, body, principal().username, sp if kind == "point" else sr, point_scope=sp)
    _must_be_inside(kind, [code])
    s.commit()
    return jsonify({"code": code, "changed": sorted(body)})


def _delete(kind: str, code: str):
    s, (sp, sr) = db(), _scopes()
    patrol.delete(s, kind, code, principal().username, sp if kind == "point" else sr)
    s.commit()
    return jsonify({"code": code, "deleted": True})


@bp.patch("/points/<code>")
@needs("plan")
def point_update(code):
    """Change a patrol point (name, kind, radius_m, visits_per_day, team, geometry); a moved
    point is re-linked.
    ---
    patch:
      summary: Change a patrol point (修改巡逻点)
      parameters:
        - {name: code, in: path, required: true, schema: {type: string}}
    """
    return _patch("point", code)


@bp.delete("/points/<code>")
@needs("plan")
def point_delete(code):
    """Delete a patrol point; its schedules and check-ins go with it.
    ---
    delete:
      summary: Delete a patrol point (删除巡逻点)
    """
    return _delete("point", code)


# -- routes ---------------------------------------------------------------------------------------
@bp.get("/routes")
@needs("read")
def route_list():
    """Patrol routes of the caller's jurisdiction with the points they pass.
    ---
    get:
      summary: Patrol routes (巡逻路线) as GeoJSON
      parameters:
        - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 1000, default: 1000}}
        - {name: offset, in: query, schema: {type: integer, minimum: 0, maximum: 10000000, default: 0}}
      responses:
        200: {description: the routes, content: {application/json: {schema: {$ref: '#/components/schemas/FeatureCollection'}}}}
        400: {$ref: '#/components/responses/BadRequest'}
        401: {$ref: '#/components/responses/Unauthenticated'}
    """
    limit, offset = check_pagination(request.args.get("limit"), request.args.get("offset"), default=1000, cap=1000)
    return jsonify(patrol.route_features(db(), _scopes()[1], limit=limit, offset=offset))


@bp.post("/routes")
@needs("plan")
def route_import():
    """Add patrol routes: a GeoJSON Feature or FeatureCollection of (Multi)LineStrings
    (properties code, name, team, points = the codes of the points passed, in order).
    ---
    post:
      summary: Add or import patrol routes (新增/导入巡逻路线)
    """
    s = db()
    codes = patrol.add_routes(s, _features(request.get_json(silent=True)), principal().username, _scopes()[0],
                              crs=request.args.get("crs", "EPSG:4326"))
    _must_be_inside("route", codes)
    s.commit()
    return jsonify({"codes": codes}), 201


@bp.patch("/routes/<code>")
@needs("plan")
def route_update(code):
    """Change a patrol route (name, team, geometry, points).
    ---
    patch:
      summary: Change a patrol route (修改巡逻路线)
      parameters:
        - {name: code, in: path, required: true, schema: {type: string}}
    """
    return _patch("route", code)


@bp.delete("/routes/<code>")
@needs("plan")
def route_delete(code):
    """Delete a patrol route and its schedules.
    ---
    delete:
      summary: Delete a patrol route (删除巡逻路线)
    """
    return _delete("route", code)


point_import.__doc__ += IMPORT_DOC
route_import.__doc__ += IMPORT_DOC
point_delete.__doc__ += DELETE_DOC
route_delete.__doc__ += DELETE_DOC
point_update.__doc__ += PATCH_DOC
route_update.__doc__ += PATCH_DOC


# -- schedules ------------------------------------------------------------------------------------
@bp.get("/schedules")
@needs("read")
def schedule_list():
    """Visit plans of the points and routes of the caller's jurisdiction.
    ---
    get:
      summary: Patrol schedules (巡逻计划)
      responses:
        200: {description: the schedules, content: {application/json: {schema: {type: array, items: {type: object}}}}}
        401: {$ref: '#/components/responses/Unauthenticated'}
    """
    return jsonify(patrol.schedules(db(), *_scopes()))


@bp.post("/schedules")
@needs("plan")
def schedule_add():
    """Plan visits of a point or of every point of a route.
    ---
    post:
      summary: Add a schedule (新增巡逻计划)
      requestBody:
        required: true
        content:
          application/json:
            schema:
              type: object
              required: [visits_per_day]
              additionalProperties: false
              properties:
                point: {type: string}
                route: {type: string}
                team: {type: string, maxLength: 100}
                visits_per_day: {type: integer, minimum: 1, maximum: 96}
                weekdays: {type: string, pattern: "^[1-7]{1,7}$", description: "ISO weekdays, 1 = Monday"}
                start_time: {type: string, example: "08:00"}
                end_time: {type: string, example: "20:00"}
                valid_from: {type: string, format: date}
                valid_to: {type: string, format: date}
      responses:
        201: {description: the schedule, content: {application/json: {schema: {type: object}}}}
        400: {$ref: '#/components/responses/BadRequest'}
        401: {$ref: '#/components/responses/Unauthenticated'}
        403: {$ref: '#/components/responses/Forbidden'}
        404: {$ref: '#/components/responses/NotFound'}
    """
    s = db()
    out = patrol.add_schedule(s, principal().username, *_scopes(), **_json_body(patrol.SCHEDULE_FIELDS))
    s.commit()
    return jsonify(out), 201


@bp.delete("/schedules/<int:sid>")
@needs("plan")
def schedule_delete(sid):
    """Delete a schedule.
    ---
    delete:
      summary: Delete a schedule (删除巡逻计划)
      parameters:
        - {name: sid, in: path, required: true, schema: {type: integer}}
      responses:
        200: {description: deleted, content: {application/json: {schema: {type: object}}}}
        401: {$ref: '#/components/responses/Unauthenticated'}
        403: {$ref: '#/components/responses/Forbidden'}
        404: {$ref: '#/components/responses/NotFound'}
    """
    s = db()
    patrol.delete_schedule(s, sid, principal().username, *_scopes())
    s.commit()
    return jsonify({"id": sid, "deleted": True})


# -- check-ins ------------------------------------------------------------------------------------
@bp.post("/checkins")
@needs("report")
@limited(_report_limit, key=_caller_key)
def checkin():
    """Check in at a patrol point from the phone. Accepted when the distance to the point is at
    most its radius plus the GPS accuracy (the accuracy counting for at most the radius);
    otherwise stored as a rejected attempt with its distance. Resends with the same
    ``Idempotency-Key`` (or ``client_uuid``) return the first attempt (200), never a second.
    ---
    post:
      summary: Check in at a patrol point (巡逻签到)
      parameters:
        - {name: Idempotency-Key, in: header, required: false, schema: {type: string, maxLength: 100}}
      requestBody:
        required: true
        content:
          application/json:
            schema:
              type: object
              required: [point, lon, lat]
              additionalProperties: false
              properties:
                point: {type: string, description: "patrol point code"}
                lon: {type: number, minimum: -180, maximum: 180}
                lat: {type: number, minimum: -90, maximum: 90}
                crs: {type: string, enum: ["EPSG:4326", "EPSG:4490"], default: "EPSG:4326"}
                accuracy_m: {type: number, minimum: 0, maximum: 100000}
                at: {type: string, format: date-time, description: "when checked in (offline queue), default now"}
                route: {type: string}
                team: {type: string, maxLength: 100}
                client_uuid: {type: string, maxLength: 100}
      responses:
        201: {description: recorded (see accepted), content: {application/json: {schema: {$ref: '#/components/schemas/Checkin'}}}}
        200: {description: a resend of an earlier check-in, content: {application/json: {schema: {$ref: '#/components/schemas/Checkin'}}}}
        400: {$ref: '#/components/responses/BadRequest'}
        401: {$ref: '#/components/responses/Unauthenticated'}
        403: {$ref: '#/components/responses/Forbidden'}
        404: {$ref: '#/components/responses/NotFound'}
        429: {$ref: '#/components/responses/TooMany'}
    """
    body = _json_body(patrol.CHECKIN_FIELDS)
    missing = [k for k in ("point", "lon", "lat") if body.get(k) is None]
    if missing:
        raise InvalidInput(f"missing required field(s): {', '.join(missing)}", field=missing[0])
    s = db()
    out, created = patrol.check_in(
        s, principal().username, _scopes()[0], point=body["point"], lon=body["lon"], lat=body["lat"],
        crs=body.get("crs", "EPSG:4326"), accuracy_m=body.get("accuracy_m"), at=body.get("at"),
        route=body.get("route"), team=body.get("team"),
        idempotency_key=request.headers.get("Idempotency-Key") or body.get("client_uuid"))
    s.commit()
    return jsonify(out), (201 if created else 200)


def _bool_arg(name: str):
    v = request.args.get(name)
    if v in (None, ""):
        return None
    if v not in ("0", "1"):
        raise InvalidInput(f"{name} must be 0 or 1, got {v!r}", field=name)
    return v == "1"


@bp.get("/checkins")
@needs("read")
def checkin_list():
    """Check-in attempts at the points of the caller's jurisdiction, newest first.
    ---
    get:
      summary: Check-ins (签到记录)
      parameters:
        - {name: worker, in: query, schema: {type: string}}
        - {name: point, in: query, schema: {type: string}}
        - {name: accepted, in: query, schema: {type: string, enum: ["0", "1"]}}
        - {name: since, in: query, schema: {type: string, format: date}}
        - {name: until, in: query, schema: {type: string, format: date}}
        - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 1000, default: 100}}
        - {name: offset, in: query, schema: {type: integer, minimum: 0, maximum: 10000000, default: 0}}
      responses:
        200:
          description: one page
          content:
            application/json:
              schema:
                type: object
                required: [total, items]
                properties:
                  total: {type: integer}
                  items: {type: array, items: {$ref: '#/components/schemas/Checkin'}}
        400: {$ref: '#/components/responses/BadRequest'}
        401: {$ref: '#/components/responses/Unauthenticated'}
    """
    a = request.args
    limit, offset = check_pagination(a.get("limit"), a.get("offset"))
    return jsonify(patrol.checkins(db(), _scopes()[0], worker=a.get("worker"), point=a.get("point"),
                                   accepted=_bool_arg("accepted"), since=_day("since"), until=_day("until"),
                                   limit=limit, offset=offset))


@bp.get("/trail")
@needs("read")
def trail():
    """A worker's check-ins of one day in time order, with the line through them.
    ---
    get:
      summary: Patrol trail (巡逻轨迹)
      parameters:
        - {name: worker, in: query, required: true, schema: {type: string}}
        - {name: day, in: query, required: true, schema: {type: string, format: date}}
      responses:
        200: {description: the trail, content: {application/json: {schema: {$ref: '#/components/schemas/FeatureCollection'}}}}
        400: {$ref: '#/components/responses/BadRequest'}
        401: {$ref: '#/components/responses/Unauthenticated'}
    """
    worker, day = request.args.get("worker"), _day("day")
    if not worker or day is None:
        raise InvalidInput("worker and day (YYYY-MM-DD) are required", field="worker" if not worker else "day")
    return jsonify(patrol.trail(db(), _scopes()[0], worker, day))


# -- coverage -------------------------------------------------------------------------------------
def _area_scope(scope: tuple[str, dict], alias: str, grid_col: str = "grid_code") -> tuple[str, dict]:
    """Narrow ``scope`` to ``area=`` (a grid, community, street or district code) if given."""
    area = request.args.get("area")
    if not area:
        return scope
    col = {15: grid_col}.get(len(area)) or ("district_code" if area.endswith("000000") else
                                            "street_code" if area.endswith("000") else "community_code")
    if len(area) not in (12, 15) or not area.isdigit():
        raise InvalidInput(f"area must be a 12-digit admin code or a 15-digit grid code, got {area!r}", field="area")
    return f"({scope[0]} AND {alias}.{col} = :area)", {**scope[1], "area": area}


@bp.get("/coverage")
@needs("read")
def coverage():
    """Per grid or area: patrol points inside, grids without one, buildings and households
    within ``distance`` metres of a point (straight line, or along the roads with
    ``method=network``), and the grids without a point.
    ---
    get:
      summary: Patrol coverage (巡逻覆盖)
      parameters:
        - {name: level, in: query, schema: {type: string, enum: [grid, community, street, district], default: grid}}
        - {name: distance, in: query, schema: {type: number, minimum: 1, maximum: 5000, default: 300}}
        - {name: method, in: query, schema: {type: string, enum: [straight, network], default: straight}}
        - {name: area, in: query, schema: {type: string}, description: "a grid, community, street or district code"}
        - {name: format, in: query, schema: {type: string, enum: [json, csv, xlsx], default: json}}
        - {name: lang, in: query, schema: {type: string, enum: [zh, en], default: zh}}
      responses:
        200:
          description: figures per area
          content:
            application/json:
              schema:
                type: object
                required: [areas, grids_without_point]
                properties:
                  areas: {type: array, items: {type: object}}
                  grids_without_point: {type: object}
            text/csv: {schema: {type: string}}
            application/vnd.openxmlformats-officedocument.spreadsheetml.sheet: {schema: {type: string, format: binary}}
        400: {$ref: '#/components/responses/BadRequest'}
        401: {$ref: '#/components/responses/Unauthenticated'}
        403: {$ref: '#/components/responses/Forbidden'}
        409: {$ref: '#/components/responses/Conflict'}
    """
    fmt, a, p = _format(), request.args, principal()
    sb = _area_scope(authz.scope_sql(p, "bl"), "bl")
    sg = _area_scope(authz.scope_sql(p, "g", grid_col="code"), "g", "code")
    sp = _area_scope(authz.scope_sql(p, "pl"), "pl")
    s = db()
    rows = patrol_coverage.coverage(s, sb, sg, sp, level=a.get("level", "grid"), distance_m=a.get("distance", 300),
                                    method=a.get("method", "straight"), metric_crs=settings().metric_crs)
    if fmt != "json":
        return download(rows, patrol_coverage.COLUMNS, f"gisgrid-patrol-coverage-{a.get('level', 'grid')}", fmt)
    return jsonify({"level": a.get("level", "grid"), "method": a.get("method", "straight"),
                    "distance_m": float(a.get("distance", 300)), "areas": rows,
                    "grids_without_point": patrol_coverage.grids_without_point(s, sg)})


@bp.get("/uncovered")
@needs("read")
def uncovered():
    """The parts of each grid farther than ``distance`` metres (straight line) from every
    patrol point, as polygons.
    ---
    get:
      summary: Uncovered areas (巡逻盲区)
      parameters:
        - {name: distance, in: query, schema: {type: number, minimum: 1, maximum: 5000, default: 300}}
        - {name: area, in: query, schema: {type: string}, description: "a grid, community, street or district code"}
      responses:
        200: {description: polygons, content: {application/json: {schema: {$ref: '#/components/schemas/FeatureCollection'}}}}
        400: {$ref: '#/components/responses/BadRequest'}
        401: {$ref: '#/components/responses/Unauthenticated'}
    """
    sg = _area_scope(authz.scope_sql(principal(), "g", grid_col="code"), "g", "code")
    return jsonify(patrol_coverage.uncovered(db(), sg, distance_m=request.args.get("distance", 300)))


# -- compliance, overdue, statistics --------------------------------------------------------------
@bp.get("/compliance")
@needs("read")
def compliance():
    """Planned versus actual visits per point, route, team or day over local days
    ``[since, until)`` (default the last 7 days); ``per_day=1`` splits by day.
    ---
    get:
      summary: Patrol compliance (巡逻完成情况)
      parameters:
        - {name: by, in: query, schema: {type: string, enum: [point, route, team, day], default: point}}
        - {name: since, in: query, schema: {type: string, format: date}}
        - {name: until, in: query, schema: {type: string, format: date}}
        - {name: per_day, in: query, schema: {type: string, enum: ["0", "1"]}}
    """
    fmt = _format()
    since, until = _range()
    by = request.args.get("by", "point")
    rows = patrol.compliance(db(), _scopes()[0], by=by, since=since, until=until, per_day=_bool_arg("per_day") or False)
    if fmt != "json":
        return download(rows, patrol.COMPLIANCE_COLUMNS, f"gisgrid-patrol-compliance-{by}", fmt)
    return jsonify(rows)


@bp.get("/overdue")
@needs("read")
def overdue():
    """Points due for a visit: last accepted check-in longer ago than 24 h / visits planned
    today, or none.
    ---
    get:
      summary: Overdue patrol points (超期未巡)
      responses:
        200: {description: the points, most overdue first, content: {application/json: {schema: {type: array, items: {type: object}}}}}
        401: {$ref: '#/components/responses/Unauthenticated'}
    """
    return jsonify(patrol.overdue(db(), _scopes()[0]))


@bp.get("/stats")
@needs("read")
def stats():
    """Patrol statistics per area over local days ``[since, until)`` (default the last 7 days).
    ---
    get:
      summary: Patrol statistics (巡逻统计)
      parameters:
        - {name: level, in: query, schema: {type: string, enum: [grid, community, street, district], default: community}}
        - {name: since, in: query, schema: {type: string, format: date}}
        - {name: until, in: query, schema: {type: string, format: date}}
    """
    fmt = _format()
    since, until = _range()
    level = request.args.get("level", "community")
    rows = patrol.statistics(db(), _scopes()[0], level=level, since=since, until=until)
    if fmt != "json":
        return download(rows, patrol.STAT_COLUMNS, f"gisgrid-patrol-stats-{level}", fmt)
    return jsonify(rows)


compliance.__doc__ += openapi.TABLE_GET
stats.__doc__ += openapi.TABLE_GET
