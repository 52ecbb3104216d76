"""JSON/GeoJSON API. Views are thin: check access → parse → layer function → serialise.
Every view declares its action (``@needs``) and filters with the caller's jurisdiction."""
from __future__ import annotations

from flask import Blueprint, jsonify, request

from gisgrid import authz
from gisgrid.errors import InvalidInput, NotFound
from gisgrid.layers import admin_areas, grids, residents
from gisgrid.spatial import crs as crs_mod
from gisgrid.web import db
from gisgrid.web.auth import check_pagination, needs, principal, public

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.get("/me")
@needs("read")
def me():
    """The caller: username, role, jurisdiction and the actions it may perform.
    ---
    get:
      summary: The caller (当前用户)
      responses:
        200:
          description: the caller
          content:
            application/json:
              schema:
                type: object
                required: [username, role, jurisdiction, actions]
                properties:
                  username: {type: string}
                  role: {type: string, enum: [admin, commander, planner, field, viewer]}
                  jurisdiction: {type: array, items: {type: string}}
                  actions: {type: array, items: {type: string}}
        401: {$ref: '#/components/responses/Unauthenticated'}
    """
    p = principal()
    return jsonify({"username": p.username, "role": p.role, "jurisdiction": list(p.jurisdiction),
                    "actions": sorted(p.actions)})


@bp.get("/locate")
@needs("read")
def locate():
    """Which grid (and community, street, district) contains ``lon``, ``lat`` (in ``crs``,
    default EPSG:4326). A grid outside the caller's jurisdiction is not revealed (404).
    ---
    get:
      summary: The grid containing a point (坐标定位网格)
      parameters:
        - {name: lon, in: query, required: true, schema: {type: number, minimum: -180, maximum: 180}}
        - {name: lat, in: query, required: true, schema: {type: number, minimum: -90, maximum: 90}}
        - {name: crs, in: query, required: false, schema: {type: string, default: "EPSG:4326",
           enum: ["EPSG:4326", "EPSG:4490"]},
           description: "CRS of lon/lat. Other EPSG codes (projected ones in metres) are accepted too and
             answered with 400 when unknown or out of range."}
      responses:
        200:
          description: the grid, or null outside every grid
          content:
            application/json:
              schema:
                type: object
                required: [lon, lat, grid, linked]
                properties:
                  lon: {type: number}
                  lat: {type: number}
                  grid: {$ref: '#/components/schemas/GridRef'}
                  linked: {type: boolean}
        400: {$ref: '#/components/responses/BadRequest'}
        401: {$ref: '#/components/responses/Unauthenticated'}
        404: {$ref: '#/components/responses/NotFound'}
    """
    args = request.args
    missing = [k for k in ("lon", "lat") if k not in args]
    if missing:
        raise InvalidInput(f"missing query parameter(s): {', '.join(missing)}", field=missing[0])
    p = crs_mod.point_to_storage(args["lon"], args["lat"], args.get("crs", "EPSG:4326"))
    found = grids.grid_at(db(), p.x, p.y)
    if found is not None and not authz.covers(principal(), {**found, "grid_code": found["code"]}):
        raise NotFound("no grid of your jurisdiction contains this point")
    return jsonify({"lon": p.x, "lat": p.y, "grid": found, "linked": found is not None})


@bp.get("/grids")
@needs("read")
def grid_collection():
    """Current grids of the caller's jurisdiction with households and open incidents.
    ---
    get:
      summary: Grids as GeoJSON (网格)
      parameters:
        - {name: limit, in: query, required: false, schema: {type: integer, minimum: 1, maximum: 5000, default: 1000}}
      responses:
        200:
          description: grids
          content: {application/geo+json: {schema: {$ref: '#/components/schemas/FeatureCollection'}},
                    application/json: {schema: {$ref: '#/components/schemas/FeatureCollection'}}}
        400: {$ref: '#/components/responses/BadRequest'}
        401: {$ref: '#/components/responses/Unauthenticated'}
    """
    limit, _ = check_pagination(request.args.get("limit"), None, default=1000, cap=5000)
    scope = authz.scope_sql(principal(), "g", grid_col="code")
    return jsonify({"type": "FeatureCollection", "features": grids.summary(db(), limit=limit, scope=scope)})


@bp.get("/admin-areas/<level>")
@needs("read")
def admin_area_collection(level):
    """Admin areas of one level that the caller may see (its own and those containing it).
    ---
    get:
      summary: Districts, streets or communities as GeoJSON (行政区划)
      parameters:
        - {name: level, in: path, required: true, schema: {type: string, enum: [district, street, community]}}
      responses:
        200:
          description: areas
          content: {application/json: {schema: {$ref: '#/components/schemas/FeatureCollection'}}}
        400: {$ref: '#/components/responses/BadRequest'}
        401: {$ref: '#/components/responses/Unauthenticated'}
    """
    return jsonify({"type": "FeatureCollection",
                    "features": admin_areas.features(db(), level, authz.admin_area_sql(principal()))})


@bp.get("/residents")
@needs("read")
def resident_list():
    """Residents of the caller's jurisdiction, ID numbers and phones masked.
    ---
    get:
      summary: Residents, masked (居民)
      parameters:
        - {name: grid, in: query, required: false, schema: {type: string}}
        - {name: limit, in: query, required: false, schema: {type: integer, minimum: 1, maximum: 1000, default: 100}}
        - {name: offset, in: query, required: false, schema: {type: integer, minimum: 0, maximum: 10000000, default: 0}}
      responses:
        200:
          description: one page of residents
          content:
            application/json:
              schema:
                type: object
                required: [total, items]
                properties:
                  total: {type: integer}
                  items: {type: array, items: {$ref: '#/components/schemas/Resident'}}
        400: {$ref: '#/components/responses/BadRequest'}
        401: {$ref: '#/components/responses/Unauthenticated'}
    """
    limit, offset = check_pagination(request.args.get("limit"), request.args.get("offset"))
    return jsonify(residents.page(db(), authz.scope_sql(principal(), "l"), grid_code=request.args.get("grid"),
                                  limit=limit, offset=offset))


@bp.get("/residents/<code>")
@needs("read")
def resident_detail(code):
    """Masked by default; ``?unmask=1&reason=…`` shows the clear ID number and phone to roles
    holding the PII permission, and writes an audit row.
    ---
    get:
      summary: One resident (居民详情); unmasking is audited
      parameters:
        - {name: code, in: path, required: true, schema: {type: string}}
        - {name: unmask, in: query, required: false, schema: {type: string, enum: ["0", "1", "true", "false"]}}
        - {name: reason, in: query, required: false, schema: {type: string, maxLength: 500}}
      responses:
        200:
          description: the resident
          content: {application/json: {schema: {$ref: '#/components/schemas/Resident'}}}
        400: {$ref: '#/components/responses/BadRequest'}
        401: {$ref: '#/components/responses/Unauthenticated'}
        403: {$ref: '#/components/responses/Forbidden'}
        404: {$ref: '#/components/responses/NotFound'}
    """
    p, s = principal(), db()
    unmask = request.args.get("unmask") in ("1", "true")
    if unmask:
        authz.require(p, "pii")
    out = residents.get(s, authz.scope_sql(p, "l"), code, unmask_for=p.username if unmask else None,
                        reason=request.args.get("reason"))
    s.commit()
    return jsonify(out)


@bp.get("/openapi.json")
@public
def openapi_document():
    from flask import current_app

    from gisgrid.web import openapi

    doc = current_app.extensions["gisgrid"].get("openapi")
    if doc is None:
        doc = current_app.extensions["gisgrid"]["openapi"] = openapi.build(current_app)
    return jsonify(doc)
