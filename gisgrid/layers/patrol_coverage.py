"""Patrol coverage: which buildings and households lie within reach of a patrol point.

Per grid or community (or street, district): the patrol points inside, the grids without any,
the buildings and households within ``distance_m`` of at least one patrol point (any point,
also one across the area's edge), and the uncovered parts of each grid as polygons.

Two measures of distance:

* ``straight`` – straight line on the WGS84 spheroid (PostGIS ``geography``), all in one SQL
  statement. Driven by the patrol points: for each point, the building index is probed with a
  lon/lat box that holds the circle (:data:`_BOX`), then ``ST_DWithin`` on ``geography`` decides.
* ``network`` – walking distance along the road layer (:mod:`gisgrid.spatial.network`,
  networkx), in the metric CRS of the settings (``GISGRID_METRIC_CRS``, default the district's
  CGCS2000 Gauss-Krüger zone). Needs roads: without any in the area it is a 409.

A building is measured from its ``anchor`` (the point on its surface it is linked by).
"""
from __future__ import annotations

import json

from sqlalchemy import text
from sqlalchemy.orm import Session

from gisgrid.errors import Conflict, InvalidInput

LEVELS = {"grid": ("grid_code", "g.code"), "community": ("community_code", "g.community_code"),
          "street": ("street_code", "g.street_code"), "district": ("district_code", "g.district_code")}
#: buildings with their links (alias ``bl``): every read of building or patrol point link columns
BUILDINGS = "building b LEFT JOIN building_link bl ON bl.id = b.id"
POINT_LINKS = "patrol_point_link pl"
METHODS = ("straight", "network")
MAX_DISTANCE_M = 5000
#: a lon/lat box around point ``p`` that holds every point within ``:d`` metres of it (a degree
#: of latitude is at least 110.5 km; a degree of longitude at least 111.0 km × cos(latitude) at
#: the box's far edge, hence the extra 0.1° of latitude, ample below 5 km)
_BOX = ("ST_Expand(p.geom, :d / (111000.0 * cos(radians(least(abs(ST_Y(p.geom)) + 0.1, 89.0)))), "
        ":d / 110000.0)")
#: the buildings within ``:d`` metres (straight line) of any patrol point, inside the scope
COVERED_STRAIGHT = (
    f"SELECT DISTINCT b.id FROM patrol_point p JOIN {BUILDINGS} "
    f"ON b.anchor && {_BOX} AND ST_DWithin(b.anchor::geography, p.geom::geography, :d) WHERE {{scope_b}}"
)
COVERED_IDS = "SELECT unnest(CAST(:ids AS integer[])) AS id"
COLUMNS = {
    "code": ("区域编码", "area code"), "name": ("区域名称", "area name"), "grids": ("网格数", "grids"),
    "grids_without_point": ("无巡逻点网格", "grids without a point"), "points": ("巡逻点", "patrol points"),
    "buildings": ("楼栋", "buildings"), "buildings_covered": ("覆盖楼栋", "buildings covered"),
    "households": ("户数", "households"), "households_covered": ("覆盖户数", "households covered"),
    "building_share": ("楼栋覆盖率", "building share"), "household_share": ("户数覆盖率", "household share"),
}


def _check(level: str, distance_m, method: str) -> float:
    if level not in LEVELS:
        raise InvalidInput(f"level must be one of {', '.join(LEVELS)}, got {level!r}", field="level")
    if method not in METHODS:
        raise InvalidInput(f"method must be one of {', '.join(METHODS)}, got {method!r}", field="method")
    try:
        d = float(distance_m)
    except (TypeError, ValueError):
        raise InvalidInput(f"distance must be a number of metres, got {distance_m!r}", field="distance") from None
    if not 0 < d <= MAX_DISTANCE_M:
        raise InvalidInput(f"distance must be more than 0 and at most {MAX_DISTANCE_M} m, got {d:g}",
                           field="distance")
    return d


def coverage(session: Session, scope_b: tuple[str, dict], scope_g: tuple[str, dict], scope_p: tuple[str, dict], *,
             level: str = "grid", distance_m: float = 300, method: str = "straight", metric_crs: str = "") -> list[dict]:
    """Coverage figures per area of ``level`` inside the scope.

    Parameters
    ----------
    scope_b, scope_g, scope_p : (str, dict)
        :func:`gisgrid.authz.scope_sql` for buildings (link alias ``bl``), grids (alias ``g``,
        ``grid_col="code"``) and patrol points (link alias ``pl``).
    level : {"grid", "community", "street", "district"}, default "grid"
    distance_m : float, default 300
        Reach of a patrol point, metres, 0 < d ≤ 5000.
    method : {"straight", "network"}, default "straight"
    metric_crs : str, optional
        CRS for ``network`` (default: the Gauss-Krüger zone of the data's centre).

    Returns
    -------
    list of dict
        One row per area (current grids only): code, name, grids, grids_without_point, points,
        buildings, buildings_covered, households, households_covered, building_share,
        household_share (fractions; None where the area has no building / household).
    """
    d = _check(level, distance_m, method)
    params = {**scope_b[1], **scope_g[1], **scope_p[1], "d": d}
    if method == "straight":
        covered = COVERED_STRAIGHT.format(scope_b=scope_b[0])
    else:
        covered = COVERED_IDS
        params["ids"] = network_covered(session, scope_b, d, metric_crs)
    b_col, g_col = LEVELS[level]
    names = ("g2.name" if level == "grid" else "(SELECT name FROM admin_area WHERE code = gs.code)")
    sql = f"""
        WITH cov AS MATERIALIZED ({covered}),
        bs AS (SELECT bl.{b_col} AS code, count(*) AS buildings, count(c.id) AS buildings_covered,
                      coalesce(sum(b.households), 0) AS households,
                      coalesce(sum(b.households) FILTER (WHERE c.id IS NOT NULL), 0) AS households_covered
               FROM {BUILDINGS} LEFT JOIN cov c ON c.id = b.id WHERE {scope_b[0]} AND bl.{b_col} IS NOT NULL
               GROUP BY 1),
        gs AS (SELECT {g_col} AS code, count(*) AS grids,
                      count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM {POINT_LINKS} WHERE pl.grid_id = g.id))
                          AS grids_without_point
               FROM grid g WHERE g.valid_to IS NULL AND {scope_g[0]} GROUP BY 1),
        ps AS (SELECT pl.{b_col} AS code, count(*) AS points FROM {POINT_LINKS} WHERE {scope_p[0]} GROUP BY 1)
        SELECT gs.code, {names} AS name, gs.grids, gs.grids_without_point, coalesce(ps.points, 0) AS points,
               coalesce(bs.buildings, 0) AS buildings, coalesce(bs.buildings_covered, 0) AS buildings_covered,
               coalesce(bs.households, 0) AS households, coalesce(bs.households_covered, 0) AS households_covered
        FROM gs LEFT JOIN bs ON bs.code = gs.code LEFT JOIN ps ON ps.code = gs.code
        {"LEFT JOIN grid g2 ON g2.code = gs.code AND g2.valid_to IS NULL" if level == "grid" else ""}
        ORDER BY gs.code"""
    out = []
    for r in session.execute(text(sql), params).mappings():
        row = dict(r)
        row["building_share"] = round(row["buildings_covered"] / row["buildings"], 4) if row["buildings"] else None
        row["household_share"] = (round(row["households_covered"] / row["households"], 4)
                                  if row["households"] else None)
        out.append(row)
    return out


def grids_without_point(session: Session, scope_g: tuple[str, dict], limit: int = 1000) -> dict:
    """Current grids inside ``scope_g`` (alias ``g``) holding no patrol point: total and the
    first ``limit`` by code."""
    where = f"g.valid_to IS NULL AND {scope_g[0]} AND NOT EXISTS (SELECT 1 FROM {POINT_LINKS} WHERE pl.grid_id = g.id)"
    total = session.execute(text(f"SELECT count(*) FROM grid g WHERE {where}"), scope_g[1]).scalar()
    rows = session.execute(text(f"SELECT g.code, g.name FROM grid g WHERE {where} ORDER BY g.code LIMIT :n"),
                           {**scope_g[1], "n": limit}).mappings()
    return {"total": total, "items": [dict(r) for r in rows]}


def network_covered(session: Session, scope_b: tuple[str, dict], distance_m: float, metric_crs: str = "") -> list[int]:
    """Ids of the buildings inside ``scope_b`` (link alias ``bl``) within ``distance_m`` walking
    distance of a patrol point along the roads. Roads and points are taken within the
    buildings' extent widened by the distance (a walk never leaves that box)."""
    import numpy as np
    import pyproj
    import shapely

    from gisgrid.spatial import network
    from gisgrid.spatial.crs import gk_zone_for

    b = session.execute(text(f"SELECT b.id, ST_X(b.anchor) AS x, ST_Y(b.anchor) AS y FROM {BUILDINGS} "
                             f"WHERE {scope_b[0]}"), scope_b[1]).all()
    if not b:
        return []
    ids = np.array([r[0] for r in b])
    bxy = np.array([(r[1], r[2]) for r in b], dtype=float)
    x0, y0 = bxy.min(axis=0)
    x1, y1 = bxy.max(axis=0)
    margin = {"x0": x0, "y0": y0, "x1": x1, "y1": y1, "d": distance_m}
    env = ("ST_Expand(ST_MakeEnvelope(:x0, :y0, :x1, :y1, 4326), :d / (111000.0 * cos(radians(least("
           "greatest(abs(:y0), abs(:y1)) + 0.1, 89.0)))), :d / 110000.0)")
    roads = session.execute(text(f"SELECT ST_AsBinary(geom) FROM road WHERE geom && {env}"), margin).scalars().all()
    if not roads:
        raise Conflict("no road layer in this area: method=network walks along roads (load them with "
                       "`gisgrid import-osm` or `gisgrid generate`), or use method=straight", field="method")
    pts = session.execute(text(f"SELECT ST_X(geom), ST_Y(geom) FROM patrol_point WHERE geom && {env}"), margin).all()
    if not pts:
        return []
    crs = metric_crs or gk_zone_for(float(bxy[:, 0].mean()))
    tr = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)

    def project(geoms):
        return shapely.transform(geoms, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))

    road_m = project(shapely.from_wkb(np.array([bytes(r) for r in roads], dtype=object)))
    src = project(shapely.points(np.array(pts, dtype=float)))
    dst = project(shapely.points(bxy))
    dist = network.distances(road_m, src, dst, distance_m)
    return ids[dist <= distance_m].tolist()


def uncovered(session: Session, scope_g: tuple[str, dict], *, distance_m: float = 300, limit: int = 2000) -> dict:
    """The parts of each current grid inside ``scope_g`` (alias ``g``) farther than
    ``distance_m`` (straight line) from every patrol point, as a GeoJSON FeatureCollection of
    (Multi)Polygons with the grid's code and name, the uncovered area (m²) and its share of the
    grid. Grids fully covered are left out. More than ``limit`` grids in scope is refused:
    narrow the scope (``area``)."""
    d = _check("grid", distance_m, "straight")
    n = session.execute(text(f"SELECT count(*) FROM grid g WHERE g.valid_to IS NULL AND {scope_g[0]}"),
                        scope_g[1]).scalar()
    if n > limit:
        raise InvalidInput(f"{n} grids in scope; uncovered areas are drawn for at most {limit}: "
                           "give area= a community or street code", field="area")
    rows = session.execute(text(f"""
        SELECT g.code, g.name, ST_AsGeoJSON(u.geom, 7) AS gj, ST_Area(u.geom::geography) AS uncovered_m2,
               ST_Area(g.geom::geography) AS grid_m2
        FROM grid g CROSS JOIN LATERAL (
            SELECT coalesce(ST_CollectionExtract(ST_Difference(g.geom, ST_Union(
                       ST_Buffer(p.geom::geography, :d, 'quad_segs=16')::geometry)), 3), g.geom) AS geom
            FROM patrol_point p
            WHERE p.geom && ST_Expand(g.geom, :d / (111000.0 * cos(radians(least(abs(ST_YMax(g.geom)) + 0.1, 89.0)))),
                                      :d / 110000.0)
              AND ST_DWithin(p.geom::geography, g.geom::geography, :d)) u
        WHERE g.valid_to IS NULL AND {scope_g[0]} AND NOT ST_IsEmpty(u.geom)
        ORDER BY g.code"""), {**scope_g[1], "d": d}).mappings()
    feats = [{"type": "Feature", "geometry": json.loads(r["gj"]),
              "properties": {"code": r["code"], "name": r["name"], "uncovered_m2": round(r["uncovered_m2"], 1),
                             "share": round(r["uncovered_m2"] / r["grid_m2"], 4) if r["grid_m2"] else None}}
             for r in rows if r["uncovered_m2"] >= 0.5]
    return {"type": "FeatureCollection", "distance_m": d, "features": feats}
