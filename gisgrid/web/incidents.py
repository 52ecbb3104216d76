"""Incident API: report (idempotent), read, move through the loop, merge, photos, overdue."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, g, jsonify, request

from gisgrid import authz, workflow
from gisgrid.errors import InvalidInput, NotFound
from gisgrid.layers import incidents, photos, rate_limits
from gisgrid.web import db, openapi, settings
from gisgrid.web.auth import check_pagination, needs, principal

bp = Blueprint("incidents", __name__, url_prefix="/api")
REPORT_FIELDS = {"category", "lon", "lat", "crs", "description", "address", "source", "reporter", "accuracy_m",
                 "client_uuid"}


def _json_body(allowed: set[str]) -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object (Content-Type: application/json)", field="body")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidInput(f"unknown fields {unknown}; allowed: {sorted(allowed)}", field=unknown[0])
    return body


def _report_limit() -> str:
    return current_app.config["GISGRID_REPORT_LIMIT"]


def _caller_key() -> str:
    p = getattr(g, "principal", None)
    return f"user:{p.username}" if p else request.remote_addr or "-"


@bp.get("/categories")
@needs("read")
def category_list():
    """The incident categories (事件类别) with their deadlines per step.
    ---
    get:
      summary: Incident categories
      responses:
        200:
          description: categories
          content:
            application/json:
              schema:
                type: array
                items:
                  type: object
                  required: [code, name, sla_hours]
                  properties:
                    code: {type: string}
                    name: {type: string}
                    name_en: {type: string, nullable: true}
                    sla_hours: {type: object, additionalProperties: {type: integer}}
        401: {$ref: '#/components/responses/Unauthenticated'}
    """
    return jsonify(incidents.categories(db(), _district(request.args.get("district"))))


def _district(asked: str | None) -> str | None:
    """The district whose catalogue the caller means: the one asked for, else the one district
    of the caller's jurisdiction (None: the default catalogue, or a jurisdiction over several)."""
    if asked:
        return asked
    districts = {c[:6] + "000000" for c in principal().jurisdiction}
    return districts.pop() if len(districts) == 1 else None


@bp.put("/categories/<code>")
@needs("dispatch")
def category_set(code):
    """Add or change a category of a district's catalogue (its deadlines per step). The command
    centre edits its own district's catalogue; an administrator also the default one
    (``district: null``) that districts without their own category fall back to.
    ---
    put:
      summary: Set an incident category (设置事件类别与时限)
      parameters:
        - {name: code, in: path, required: true, schema: {type: string, maxLength: 40}}
      requestBody:
        required: true
        content:
          application/json:
            schema:
              type: object
              required: [name, sla_hours]
              additionalProperties: false
              properties:
                district: {type: string, nullable: true, description: "12-digit district code; default the caller's"}
                name: {type: string, maxLength: 100}
                name_en: {type: string, maxLength: 100, nullable: true}
                sla_hours: {type: object, additionalProperties: {type: integer, minimum: 1, maximum: 8760}}
                active: {type: boolean, default: true}
      responses:
        200: {description: the category as stored}
        400: {$ref: '#/components/responses/BadRequest'}
        401: {$ref: '#/components/responses/Unauthenticated'}
        403: {$ref: '#/components/responses/Forbidden'}
        422: {$ref: '#/components/responses/Unprocessable'}
    """
    body = _json_body({"district", "name", "name_en", "sla_hours", "active"})
    missing = [k for k in ("name", "sla_hours") if k not in body]
    if missing:
        raise InvalidInput(f"missing required field(s): {', '.join(missing)}", field=missing[0])
    p = principal()
    district = body["district"] if "district" in body else _district(None)
    if district is not None and not isinstance(district, str):
        raise InvalidInput(f"district must be a 12-digit code or null, got {district!r}", field="district")
    if district is None and not p.everywhere:
        raise authz.Forbidden("only an administrator may edit the default catalogue; name your district")
    if district is not None and not authz.covers(p, {"district_code": district}):
        raise NotFound(f"no district {district!r} in your jurisdiction", field="district")
    s = db()
    out = incidents.set_category(s, p.username, code, district_code=district, name=body["name"],
                                 name_en=body.get("name_en"), sla_hours=body["sla_hours"],
                                 active=body.get("active", True))
    s.commit()
    return jsonify(out)


@bp.post("/incidents")
@needs("report")
def report():
    """File a report from the field. Retries with the same ``Idempotency-Key`` header (or
    ``client_uuid``) return the first report, never a duplicate.
    ---
    post:
      summary: Report an incident (上报事件)
      parameters:
        - {name: Idempotency-Key, in: header, required: false, schema: {type: string, maxLength: 100}}
      requestBody:
        required: true
        content:
          application/json:
            schema:
              type: object
              required: [category, lon, lat]
              additionalProperties: false
              properties:
                category: {type: string, description: "a code of GET /api/categories"}
                lon: {type: number, minimum: -180, maximum: 180}
                lat: {type: number, minimum: -90, maximum: 90}
                crs: {type: string, enum: ["EPSG:4326", "EPSG:4490", "gcj02", "bd09"], default: "EPSG:4326",
                      description: "CRS of lon/lat: WGS84, CGCS2000, GCJ-02 (Amap, Tencent), BD-09 (Baidu)"}
                description: {type: string, maxLength: 2000}
                address: {type: string, maxLength: 300}
                source: {type: string, enum: [patrol, resident, hotline, import]}
                reporter: {type: string, maxLength: 100}
                accuracy_m: {type: number, minimum: 0, maximum: 100000}
                client_uuid: {type: string, maxLength: 100}
      responses:
        201: {description: created, content: {application/json: {schema: {$ref: '#/components/schemas/Incident'}}}}
        200: {description: a retry of an earlier report, content: {application/json: {schema: {$ref: '#/components/schemas/Incident'}}}}
        400: {$ref: '#/components/responses/BadRequest'}
        401: {$ref: '#/components/responses/Unauthenticated'}
        403: {$ref: '#/components/responses/Forbidden'}
        422: {$ref: '#/components/responses/Unprocessable'}
        429: {$ref: '#/components/responses/TooMany'}
    """
    body = _json_body(REPORT_FIELDS)
    missing = [k for k in ("category", "lon", "lat") if body.get(k) is None]
    if missing:
        raise InvalidInput(f"missing required field(s): {', '.join(missing)}", field=missing[0])
    key = request.headers.get("Idempotency-Key") or body.get("client_uuid")
    # a report is one statement (incidents.report), its quota hit included, run on a direct
    # connection; the request's session is made only to explain a report that wrote nothing.
    # Not retried on a broken connection: without a key, a report that committed before the
    # connection broke would be filed twice (the client retries, with its key, on the 503)
    quota = rate_limits.Quota.parse(f"report:{principal().username}", current_app.config["GISGRID_REPORT_LIMIT"])
    answer, created = current_app.extensions["gisgrid"]["direct_connections"].run(lambda conn: incidents.report_body(
        lambda: db(autocommit=True), principal().username, category=body["category"], lon=body["lon"], lat=body["lat"],
        crs=body.get("crs", "EPSG:4326"), description=body.get("description", ""), address=body.get("address"),
        source=body.get("source", "patrol"), reporter=body.get("reporter"), accuracy_m=body.get("accuracy_m"),
        idempotency_key=key, duplicate_metres=settings().duplicate_metres,
        duplicate_hours=settings().duplicate_hours, quota=quota, conn=conn))
    # the statement's own JSON text: passed on, not parsed and written again
    return Response(answer, 201 if created else 200, quota.headers(), mimetype="application/json")


@bp.get("/incidents")
@needs("read")
def incident_list():
    """Incidents of the caller's jurisdiction, newest first.
    ---
    get:
      summary: Incidents (事件列表)
      parameters:
        - {name: state, in: query, schema: {type: string}, description: "comma-separated states"}
        - {name: category, in: query, schema: {type: string}}
        - {name: grid, in: query, schema: {type: string}}
        - {name: area, in: query, schema: {type: string}, description: "community, street or district code"}
        - {name: since, in: query, schema: {type: string, format: date-time}}
        - {name: until, in: query, schema: {type: string, format: date-time}}
        - {name: mine, in: query, schema: {type: string, enum: ["1"]}, description: "only those assigned to me"}
        - {name: overdue, in: query, schema: {type: string, enum: ["1"]}}
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
                  items: {type: array, items: {type: object}}
        400: {$ref: '#/components/responses/BadRequest'}
        401: {$ref: '#/components/responses/Unauthenticated'}
    """
    a = request.args
    limit, offset = check_pagination(a.get("limit"), a.get("offset"))
    p = principal()
    return jsonify(incidents.search(
        db(), authz.scope_sql(p, "l"), state=a.get("state"), category=a.get("category"), grid=a.get("grid"),
        area=a.get("area"), since=_when(a.get("since"), "since"), until=_when(a.get("until"), "until"),
        assignee_username=p.username if a.get("mine") == "1" else None, overdue=a.get("overdue") == "1",
        limit=limit, offset=offset))


def _when(value, name):
    from datetime import datetime

    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{name} must be an ISO date or date-time, got {value!r}", field=name) from None


@bp.get("/incidents/<code>")
@needs("read")
def incident_detail(code):
    """One incident with its history, photos, team and allowed actions.
    ---
    get:
      summary: Incident detail (事件详情)
      parameters:
        - {name: code, in: path, required: true, schema: {type: string}}
      responses:
        200: {description: the incident, content: {application/json: {schema: {$ref: '#/components/schemas/Incident'}}}}
        401: {$ref: '#/components/responses/Unauthenticated'}
        404: {$ref: '#/components/responses/NotFound'}
    """
    return jsonify(incidents.detail(db(), code, authz.scope_sql(principal(), "l")))


@bp.post("/incidents/<code>/actions/<action>")
@needs("read")            # the action's own permission is checked by gisgrid.workflow
def incident_action(code, action):
    """Move an incident through the loop: accept, reject, dispatch, start, feedback, evaluate,
    redo, close, escalate, return. An action the state does not allow is a 409 naming the
    allowed ones.
    ---
    post:
      summary: Take an action on an incident (流转)
      parameters:
        - {name: code, in: path, required: true, schema: {type: string}}
        - {name: action, in: path, required: true, schema: {type: string, enum: [accept, reject, dispatch, start,
            feedback, evaluate, redo, close, escalate, return]}}
      requestBody:
        required: false
        content:
          application/json:
            schema:
              type: object
              additionalProperties: false
              properties:
                note: {type: string, maxLength: 2000}
                assignee: {type: string, description: "staff code (dispatch; default the grid head)"}
                satisfaction: {type: integer, minimum: 1, maximum: 5}
                comment: {type: string, maxLength: 2000}
      responses:
        200:
          description: the new state
          content:
            application/json:
              schema:
                type: object
                required: [code, state, level, allowed]
                properties:
                  code: {type: string}
                  state: {type: string}
                  level: {type: string}
                  allowed: {type: array, items: {type: string}}
        400: {$ref: '#/components/responses/BadRequest'}
        401: {$ref: '#/components/responses/Unauthenticated'}
        403: {$ref: '#/components/responses/Forbidden'}
        404: {$ref: '#/components/responses/NotFound'}
        409: {$ref: '#/components/responses/Conflict'}
        422: {$ref: '#/components/responses/Unprocessable'}
    """
    body = _json_body({"note", "assignee", "satisfaction", "comment"}) if request.get_data() else {}
    s = db()
    out = workflow.transition(s, principal(), code, action, note=body.get("note"), assignee=body.get("assignee"),
                              satisfaction=body.get("satisfaction"), comment=body.get("comment"))
    s.commit()
    return jsonify(out)


@bp.post("/incidents/<code>/merge")
@needs("dispatch")
def incident_merge(code):
    """Close an incident as a duplicate of another (open) one.
    ---
    post:
      summary: Merge a duplicate (合并重复事件)
      parameters:
        - {name: code, in: path, required: true, schema: {type: string}}
      requestBody:
        required: true
        content:
          application/json:
            schema:
              type: object
              required: [into]
              additionalProperties: false
              properties:
                into: {type: string}
                note: {type: string, maxLength: 2000}
      responses:
        200: {description: merged, content: {application/json: {schema: {type: object}}}}
        400: {$ref: '#/components/responses/BadRequest'}
        401: {$ref: '#/components/responses/Unauthenticated'}
        403: {$ref: '#/components/responses/Forbidden'}
        404: {$ref: '#/components/responses/NotFound'}
        409: {$ref: '#/components/responses/Conflict'}
    """
    body = _json_body({"into", "note"})
    if not isinstance(body.get("into"), str):
        raise InvalidInput("into must name the incident to merge into", field="into")
    s = db()
    out = workflow.merge(s, principal(), code, body["into"], body.get("note"))
    s.commit()
    return jsonify(out)


@bp.post("/incidents/<code>/photos")
@needs("report")
def incident_photo_upload(code):
    """Attach a JPEG or PNG (multipart field ``photo``); metadata is stripped before storing.
    ---
    post:
      summary: Add a photo (上传照片)
      parameters:
        - {name: code, in: path, required: true, schema: {type: string}}
      requestBody:
        required: true
        content:
          multipart/form-data:
            schema:
              type: object
              required: [photo]
              properties:
                photo: {type: string, format: binary}
      responses:
        201: {description: stored, content: {application/json: {schema: {type: object, properties: {sha256: {type: string}}}}}}
        400: {$ref: '#/components/responses/BadRequest'}
        401: {$ref: '#/components/responses/Unauthenticated'}
        403: {$ref: '#/components/responses/Forbidden'}
        404: {$ref: '#/components/responses/NotFound'}
        413: {$ref: '#/components/responses/TooLarge'}
    """
    f = request.files.get("photo")
    if f is None:
        raise InvalidInput("send the image as multipart form field 'photo'", field="photo")
    s, p = db(), principal()
    iid = incidents.scoped_id(s, code, authz.scope_sql(p, "l"))
    digest = photos.add(s, iid, f.read(photos.MAX_BYTES + 1), p.username)
    s.commit()
    return jsonify({"sha256": digest, "url": f"/api/photos/{digest}"}), 201


@bp.get("/photos/<sha256>")
@needs("read")
def photo(sha256):
    """A stored photo (metadata already stripped), if one of its incidents is in the caller's
    jurisdiction.
    ---
    get:
      summary: A photo
      parameters:
        - {name: sha256, in: path, required: true, schema: {type: string}}
      responses:
        200: {description: the image, content: {image/jpeg: {schema: {type: string, format: binary}},
                                                image/png: {schema: {type: string, format: binary}}}}
        401: {$ref: '#/components/responses/Unauthenticated'}
        404: {$ref: '#/components/responses/NotFound'}
    """
    from sqlalchemy import text

    s = db()
    scope = authz.scope_sql(principal(), "l")
    ok = s.execute(text(f"SELECT 1 FROM incident_photo ip JOIN incident i ON i.id = ip.incident_id {incidents.LINK} "
                        f"WHERE ip.photo_sha256 = :h AND {scope[0]} LIMIT 1"), {"h": sha256, **scope[1]}).scalar()
    ph = photos.get(s, sha256) if ok else None
    if ph is None:
        raise NotFound("no such photo in your jurisdiction", field="sha256")
    resp = Response(ph.data, mimetype=ph.mime)
    resp.headers["Cache-Control"] = "private, max-age=86400, immutable"
    return resp


@bp.get("/stats")
@needs("read")
def stats():
    """Incident statistics per area (and category) for a time range; ``format=csv|xlsx`` gives
    the spreadsheet (needs the export permission).
    ---
    get:
      summary: Statistics (统计)：受理、未办结、超期、化解率、办结时长、满意率
      parameters:
        - {name: level, in: query, schema: {type: string, enum: [grid, community, street, district], default: community}}
        - {name: since, in: query, schema: {type: string, format: date}}
        - {name: until, in: query, schema: {type: string, format: date}}
        - {name: by_category, in: query, schema: {type: string, enum: ["0", "1"]}}
    """
    a = request.args
    fmt = a.get("format", "json")
    if fmt not in ("json", "csv", "xlsx"):
        raise InvalidInput(f"format must be json, csv or xlsx, got {fmt!r}", field="format")
    p = principal()
    rows = incidents.statistics(db(), authz.scope_sql(p, "l"), level=a.get("level", "community"),
                                since=_when(a.get("since"), "since"), until=_when(a.get("until"), "until"),
                                by_category=a.get("by_category") == "1")
    if fmt == "json":
        return jsonify(rows)
    authz.require(p, "export")
    return download(rows, incidents.STAT_COLUMNS, f"gisgrid-stats-{a.get('level', 'community')}", fmt)


stats.__doc__ += openapi.TABLE_GET


def download(rows: list[dict], columns: dict, name: str, fmt: str) -> Response:
    """``rows`` as a CSV or XLSX attachment, headers in the request's ``lang`` (zh, or en)."""
    from gisgrid import tables

    content, mime = tables.spreadsheet(rows, columns, fmt, "en" if request.args.get("lang") == "en" else "zh")
    resp = Response(content, mimetype=mime)
    resp.headers["Content-Disposition"] = f'attachment; filename="{name}.{fmt}"'
    return resp
