"""JSON/GeoJSON API. Views are thin: parse → layer function → serialise."""
from __future__ import annotations

from flask import Blueprint, jsonify, request

from gisgrid.errors import InvalidInput
from gisgrid.layers import admin_areas, grids
from gisgrid.spatial import crs as crs_mod
from gisgrid.spatial.geometry import point
from gisgrid.web import db

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.get("/locate")
def locate():
    """Which grid (and community, street, district) contains ``lon``, ``lat`` (in ``crs``,
    default EPSG:4326)."""
    args = request.args
    missing = [k for k in ("lon", "lat") if k not in args]
    if missing:
        raise InvalidInput(f"missing query parameter(s): {', '.join(missing)}", field=missing[0])
    p = crs_mod.to_storage(point(args["lon"], args["lat"]), args.get("crs", "EPSG:4326"))
    found = grids.grid_at(db(), p.x, p.y)
    return jsonify({"lon": p.x, "lat": p.y, "grid": found, "linked": found is not None})


@bp.get("/grids")
def grid_collection():
    return jsonify({"type": "FeatureCollection", "features": grids.summary(db(), limit=_limit())})


@bp.get("/admin-areas/<level>")
def admin_area_collection(level):
    return jsonify({"type": "FeatureCollection", "features": admin_areas.features(db(), level)})


def _limit(default: int = 1000, cap: int = 5000) -> int:
    raw = request.args.get("limit", str(default))
    try:
        n = int(raw)
    except ValueError:
        raise InvalidInput(f"limit must be an integer, got {raw!r}", field="limit") from None
    if not 1 <= n <= cap:
        raise InvalidInput(f"limit must be between 1 and {cap}, got {n}", field="limit")
    return n
