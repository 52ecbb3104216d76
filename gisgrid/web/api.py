"""JSON/GeoJSON API. Views are thin: check access → parse → layer function → serialise.
Every view declares its action (``@needs``) and filters with the caller's jurisdiction."""
from __future__ import annotations

from flask import Blueprint, jsonify, request

from gisgrid import authz
from gisgrid.errors import InvalidInput, NotFound
from gisgrid.layers import admin_areas, grids, residents
from gisgrid.spatial import crs as crs_mod
from gisgrid.spatial.geometry import point
from gisgrid.web import db
from gisgrid.web.auth import check_pagination, needs, principal

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.get("/me")
@needs("read")
def me():
    p = principal()
    return jsonify({"username": p.username, "role": p.role, "jurisdiction": list(p.jurisdiction),
                    "actions": sorted(p.actions)})


@bp.get("/locate")
@needs("read")
def locate():
    """Which grid (and community, street, district) contains ``lon``, ``lat`` (in ``crs``,
    default EPSG:4326). A grid outside the caller's jurisdiction is not revealed (404)."""
    args = request.args
    missing = [k for k in ("lon", "lat") if k not in args]
    if missing:
        raise InvalidInput(f"missing query parameter(s): {', '.join(missing)}", field=missing[0])
    p = crs_mod.to_storage(point(args["lon"], args["lat"]), args.get("crs", "EPSG:4326"))
    found = grids.grid_at(db(), p.x, p.y)
    if found is not None and not authz.covers(principal(), {**found, "grid_code": found["code"]}):
        raise NotFound("no grid of your jurisdiction contains this point")
    return jsonify({"lon": p.x, "lat": p.y, "grid": found, "linked": found is not None})


@bp.get("/grids")
@needs("read")
def grid_collection():
    limit, _ = check_pagination(request.args.get("limit"), None, default=1000, cap=5000)
    scope = authz.scope_sql(principal(), "g", grid_col="code")
    return jsonify({"type": "FeatureCollection", "features": grids.summary(db(), limit=limit, scope=scope)})


@bp.get("/admin-areas/<level>")
@needs("read")
def admin_area_collection(level):
    return jsonify({"type": "FeatureCollection",
                    "features": admin_areas.features(db(), level, authz.admin_area_sql(principal()))})


@bp.get("/residents")
@needs("read")
def resident_list():
    limit, offset = check_pagination(request.args.get("limit"), request.args.get("offset"))
    return jsonify(residents.page(db(), authz.scope_sql(principal(), "r"), grid_code=request.args.get("grid"),
                                  limit=limit, offset=offset))


@bp.get("/residents/<code>")
@needs("read")
def resident_detail(code):
    """Masked by default; ``?unmask=1&reason=…`` shows the clear ID number and phone to roles
    holding the PII permission, and writes an audit row."""
    p, s = principal(), db()
    unmask = request.args.get("unmask") in ("1", "true")
    if unmask:
        authz.require(p, "pii")
    out = residents.get(s, authz.scope_sql(p, "r"), code, unmask_for=p.username if unmask else None,
                        reason=request.args.get("reason"))
    s.commit()
    return jsonify(out)
