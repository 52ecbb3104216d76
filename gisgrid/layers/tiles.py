"""Vector tiles (Mapbox Vector Tile, EPSG:3857) of every layer: one SQL statement per tile.

A tile is ``(z, x, y)`` in the XYZ scheme (:class:`Tile`). Each layer of :data:`LAYERS` builds
one statement around ``ST_TileEnvelope`` → ``ST_AsMVTGeom`` → ``ST_AsMVT`` (the pg_tileserv /
Martin model: the database does the work, the server validates, executes, returns bytes):

* geometries are simplified to a quarter pixel of the zoom (``ST_Simplify`` in metres) and
  quantised to the tile's 4096 grid; properties are a fixed whitelist per layer;
* **where the eye cannot tell single features apart they are aggregated**: below a layer's
  ``points_from`` zoom, points (incidents, buildings, places, patrol points) come as bins of
  1/32 of the tile (8 px on a 256 px tile), one point per bin at the mean position of its members
  with counts (by state for incidents); below zoom 12 the grid layer draws communities with the
  sums of their grids. So no tile carries a million points;
* the caller's jurisdiction (:func:`gisgrid.authz.scope_sql`) is a condition of the statement,
  on the features and on every count inside them;
* the tables a layer reads are versioned (:mod:`gisgrid.layers.changes`); the version is read in
  the same statement as the tile, so a cached tile is never kept under a newer version.

Filters (incidents and the grid counts): ``since``/``until`` (reported time, ``[since, until)``),
``category`` and ``state`` (comma-separated codes).
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session

from gisgrid import authz
from gisgrid.errors import InvalidInput, NotFound
from gisgrid.layers import changes, incidents, linking

EXTENT = 4096           # MVT coordinate units across a tile
BUFFER = 64             # units drawn beyond the edge, so strokes meet across tiles
BINS = 32               # bins across a tile where points are aggregated (8 px on a 256 px tile)
MAX_ZOOM = 22
MAX_FEATURES = 20_000   # per tile, a backstop: the zooms below keep real tiles far under it
HALF = 20037508.342789244   # half the Web Mercator world width, metres


@dataclass(frozen=True)
class Tile:
    """An XYZ tile. ``Tile(12, 3348, 1677).is_valid()``; bounds in EPSG:3857 metres."""
    z: int
    x: int
    y: int

    def is_valid(self) -> bool:
        if not 0 <= self.z <= MAX_ZOOM:
            return False
        n = 1 << self.z
        return 0 <= self.x < n and 0 <= self.y < n

    @property
    def size_m(self) -> float:
        """Width of the tile in Web Mercator metres."""
        return 2 * HALF / (1 << self.z)

    def bounds(self) -> tuple[float, float, float, float]:
        """``(xmin, ymin, xmax, ymax)`` in EPSG:3857 metres."""
        s = self.size_m
        return (-HALF + self.x * s, HALF - (self.y + 1) * s, -HALF + (self.x + 1) * s, HALF - self.y * s)

    def lonlat_bounds(self, margin: float = 0.0) -> tuple[float, float, float, float]:
        """``(west, south, east, north)`` in degrees (EPSG:4326), widened by ``margin`` (a
        fraction of the tile's width) on every side, within the Web Mercator world."""
        x0, y0, x1, y1 = self.bounds()
        m = margin * self.size_m
        x0, y0, x1, y1 = max(x0 - m, -HALF), max(y0 - m, -HALF), min(x1 + m, HALF), min(y1 + m, HALF)
        lon = lambda m: m / HALF * 180  # noqa: E731
        lat = lambda m: math.degrees(math.atan(math.sinh(m / HALF * math.pi)))  # noqa: E731
        return lon(x0), lat(y0), lon(x1), lat(y1)

    @classmethod
    def at(cls, z: int, lon: float, lat: float) -> "Tile":
        """The tile of zoom ``z`` holding a lon/lat point."""
        n = 1 << z
        x = int((lon + 180) / 360 * n)
        r = math.radians(lat)
        y = int((1 - math.asinh(math.tan(r)) / math.pi) / 2 * n)
        return cls(z, min(max(x, 0), n - 1), min(max(y, 0), n - 1))


def parse_tile(z, x, y) -> Tile:
    """A :class:`Tile` from path values, or a 400 naming what is out of range."""
    try:
        t = Tile(int(z), int(x), int(y))
    except (TypeError, ValueError):
        raise InvalidInput(f"z/x/y must be integers, got {z!r}/{x!r}/{y!r}", field="z") from None
    if not 0 <= t.z <= MAX_ZOOM:
        raise InvalidInput(f"zoom must be between 0 and {MAX_ZOOM}, got {t.z}", field="z")
    if not t.is_valid():
        raise InvalidInput(f"x and y must be between 0 and {(1 << t.z) - 1} at zoom {t.z}, got {t.x}/{t.y}",
                           field="x")
    return t


# -- filters ----------------------------------------------------------------------------------
FILTER_KEYS = ("since", "until", "category", "state")
#: which incident figures the grid layer computes: ``all`` (received, open, overdue, resolved) or
#: ``open`` (open and overdue only: the open incidents are a few percent, so much cheaper)
FIGURES = ("all", "open")


@dataclass(frozen=True)
class Filters:
    """Incident filters. ``key()`` is their canonical form (for caches and ETags)."""
    since: datetime | None = None
    until: datetime | None = None
    categories: tuple[str, ...] = ()
    states: tuple[str, ...] = ()
    figures: str = "all"

    def key(self) -> str:
        return "|".join((self.since.isoformat() if self.since else "", self.until.isoformat() if self.until else "",
                         ",".join(self.categories), ",".join(self.states), self.figures))

    def tallied(self) -> bool:
        """No time range, category or state: the figures come from the incident tally
        (:mod:`gisgrid.layers.tallies`) instead of the incidents themselves."""
        return not (self.since or self.until or self.categories or self.states)

    def sql(self, alias: str = "i") -> tuple[str, dict]:
        """The condition on incidents ``alias`` and its parameters."""
        conds, params = ["TRUE"], {}
        if self.since:
            conds.append(f"{alias}.reported_at >= :f_since")
            params["f_since"] = self.since
        if self.until:
            conds.append(f"{alias}.reported_at < :f_until")
            params["f_until"] = self.until
        if self.categories:
            conds.append(f"{alias}.category = ANY(:f_categories)")
            params["f_categories"] = list(self.categories)
        if self.states:
            conds.append(f"{alias}.state = ANY(:f_states)")
            params["f_states"] = list(self.states)
        return " AND ".join(conds), params


def _when(value: str, name: str) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{name} must be an ISO date or date-time, got {value!r}", field=name) from None


def parse_filters(args: dict, known_categories) -> Filters:
    """Filters from query values (``since``, ``until``, ``category``, ``state``).

    Parameters
    ----------
    args : mapping of str to str
        Only the filter keys are read; the caller rejects unknown keys.
    known_categories : iterable of str
        The category codes of the catalogue.

    Raises
    ------
    InvalidInput
        naming the parameter: a date that is not ISO 8601, ``since`` not before ``until``, an
        unknown category or state.
    """
    since = _when(args["since"], "since") if args.get("since") else None
    until = _when(args["until"], "until") if args.get("until") else None
    if since and until and (since.tzinfo is None) == (until.tzinfo is None) and since >= until:
        raise InvalidInput(f"since ({since.isoformat()}) must be before until ({until.isoformat()})", field="since")
    known_categories = set(known_categories)
    cats = tuple(sorted({c for c in (args.get("category") or "").split(",") if c}))
    bad = [c for c in cats if c not in known_categories]
    if bad:
        raise InvalidInput(f"unknown category {bad[0]!r}; categories: {', '.join(sorted(known_categories))}",
                           field="category")
    states = tuple(sorted({s for s in (args.get("state") or "").split(",") if s}))
    bad = [s for s in states if s not in incidents.STATES]
    if bad:
        raise InvalidInput(f"unknown state {bad[0]!r}; states: {', '.join(incidents.STATES)}", field="state")
    figures = args.get("figures") or "all"
    if figures not in FIGURES:
        raise InvalidInput(f"figures must be one of {', '.join(FIGURES)}, got {figures!r}", field="figures")
    return Filters(since, until, cats, states, figures)


# -- layers -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layer:
    """A tile layer: its name (the URL and the MVT layer name), the tables it reads (its
    version), the zoom from which single features are sent, and what its properties mean."""
    name: str
    tables: tuple[str, ...]
    geometry: str                       # Polygon | LineString | Point (what the page draws)
    points_from: int = 0                # below: bins (points layers) or communities (grids)
    fields: dict = field(default_factory=dict)
    filtered: bool = False              # takes the incident filters
    minzoom: int = 0
    params: tuple[str, ...] = ()        # query parameters it takes
    links: tuple[str, ...] = ()         # link tables it reads (gisgrid.layers.linking)



_OPEN = "i.state = ANY(:open)"
_OVERDUE = f"(i.deadline < now() AND {_OPEN})"
_INCIDENT_COUNTS = (f"count(*) AS received, count(*) FILTER (WHERE {_OPEN}) AS open, "
                    f"count(*) FILTER (WHERE {_OVERDUE}) AS overdue, "
                    f"count(*) FILTER (WHERE {incidents.RESOLVED_SQL}) AS resolved")
_OPEN_COUNTS = f"count(*) AS open, count(*) FILTER (WHERE {_OVERDUE}) AS overdue"


def _figures(filters: "Filters") -> tuple[str, str, str]:
    """(aggregates, extra condition, output columns) of the grid layer's incident figures."""
    if filters.figures == "open":
        return _OPEN_COUNTS, f" AND {_OPEN}", "coalesce(c.open, 0) AS open, coalesce(c.overdue, 0) AS overdue"
    return (_INCIDENT_COUNTS, "", "coalesce(c.received, 0) AS received, coalesce(c.open, 0) AS open, "
            "coalesce(c.overdue, 0) AS overdue, coalesce(c.resolved, 0) AS resolved")
_COUNT_FIELDS = {"received": "incidents reported in the filter period (figures=all)", "open": "of them not closed",
                 "overdue": "open and past their deadline", "resolved": "closed as resolved (化解; figures=all)"}

LAYERS: dict[str, Layer] = {l.name: l for l in (
    Layer("admin_areas", ("admin_area",), "Polygon",
          fields={"code": "12-digit division code", "name": "name", "level": "district | street | community"}),
    Layer("grids", ("grid", "admin_area", "building", "incident", "incident_event"), "Polygon", points_from=12,
          links=("building_link", "incident_link"),
          filtered=True, params=FILTER_KEYS + ("figures",),
          fields={"code": "grid code (community code below zoom 12)", "name": "name",
                  "level": "grid, or community below zoom 12", "households": "households in its buildings",
                  **_COUNT_FIELDS}),
    Layer("buildings", ("building",), "Polygon", points_from=14, links=("building_link",),
          fields={"code": "building code", "name": "name", "households": "households", "floors": "floors",
                  "n": "buildings in the bin (below zoom 14)"}),
    Layer("patrol_points", ("patrol_point",), "Point", points_from=12, links=("patrol_point_link",),
          fields={"code": "code", "name": "name", "kind": "patrol_point | duty_post", "team": "team",
                  "n": "points in the bin (below zoom 12)"}),
    Layer("patrol_routes", ("patrol_route",), "LineString", links=("patrol_route_link",), fields={"code": "code", "name": "name", "team": "team"}),
    Layer("places", ("place",), "Point", points_from=14, links=("place_link",),
          fields={"code": "code", "name": "name", "category": "place category", "n": "places in the bin"}),
    Layer("incidents", ("incident",), "Point", points_from=14, filtered=True, params=FILTER_KEYS,
          links=("incident_link",),
          fields={"code": "incident number", "state": "state", "category": "category", "overdue": "past deadline (points)",
                  "reported": "reported at, Unix seconds",
                  "n": "incidents in the bin (below zoom 14)", "open": "open in the bin",
                  **{s: f"{s} in the bin" for s in incidents.STATES}}),
)}


def layer(name: str) -> Layer:
    if name not in LAYERS:
        raise NotFound(f"no tile layer {name!r}; layers: {', '.join(LAYERS)}", field="layer")
    return LAYERS[name]


# The statement's first part: the tile in 3857, and numbers for the bins. The search boxes are
# constants bound from Python (:class:`Tile` bounds; Web Mercator maps lon/lat rectangles to
# rectangles, so they are exact): a constant box lets the planner estimate how many rows a tile
# holds from the column statistics (a box from a CTE is "1 row" to it, and the plans go wrong).
# w/s/e/n: the tile's lon/lat bounds; my0/my1: ln(tan(π/4 + lat/2)) of s and n.
_MERC = "ln(tan(pi() / 4 + radians({}) / 2))"
_ENV = (f"WITH env AS (SELECT ST_TileEnvelope(:z, :x, :y) AS tile, CAST(:w AS float8) AS w, CAST(:e AS float8) AS e, "
        f"CAST(:s AS float8) AS s, CAST(:n AS float8) AS n, {_MERC.format('CAST(:s AS float8)')} AS my0, "
        f"{_MERC.format('CAST(:n AS float8)')} AS my1) ")
_BOX = "ST_MakeEnvelope(:bw, :bs, :be, :bn, 4326)"      # the tile and its buffer
_INNER = "ST_MakeEnvelope(:w, :s, :e, :n, 4326)"        # the tile alone


def _geom(expr: str, kind: str = "polygon") -> str:
    g = f"ST_Transform({expr}, 3857)"
    if kind != "point":
        g = f"ST_Simplify({g}, :tol, true)"
    return f"ST_AsMVTGeom({g}, env.tile, {EXTENT}, {BUFFER}, true)"


def _mvt(name: str, inner: str, fid: bool = True) -> str:
    return (f"SELECT ST_AsMVT(t, '{name}', {EXTENT}, 'geom'{', ' + repr('fid') if fid else ''}) "
            f"FROM ({inner}) t WHERE t.geom IS NOT NULL")


def _bins(name: str, table: str, alias: str, anchor: str, cols: str, counts: str, where: str) -> str:
    """Points of ``table`` strictly inside the tile, grouped into BINS×BINS cells; one point per
    cell at the mean position of its members. ``cols``: the columns ``counts`` aggregate.

    Web Mercator keeps longitude linear and latitude monotonic, so the tile is the lon/lat box
    ``[w, e) × [s, n)`` and a cell is found from lon and from ``ln(tan(π/4 + lat/2))``: no
    reprojection per point, one per bin. (``OFFSET 0`` keeps lon/lat computed once a row.)"""
    inner = (
        f"SELECT {counts}, {_bin_point('avg(lon)', 'avg(lat)')} AS geom "
        f"FROM (SELECT {cols}, ST_X({alias}.{anchor}) AS lon, ST_Y({alias}.{anchor}) AS lat "
        f"FROM {table} {alias} {linking.join_sql(table, alias)} "
        f"WHERE {alias}.{anchor} && {_INNER} AND {where} OFFSET 0) {alias}, env "
        f"WHERE lon >= env.w AND lon < env.e AND lat >= env.s AND lat < env.n GROUP BY {_bin_key('lon', 'lat')}")
    return _mvt(name, inner, fid=False)


def _bin_key(lon: str, lat: str) -> str:
    """The bin (an integer, row-major) of a point strictly inside the tile."""
    return (f"floor(({lon} - env.w) / (env.e - env.w) * {BINS})::int * {BINS} "
            f"+ floor(({_MERC.format(lat)} - env.my0) / (env.my1 - env.my0) * {BINS})::int")


def _bin_point(lon: str, lat: str) -> str:
    """A point strictly inside the tile in tile coordinates (what ``ST_AsMVTGeom`` makes of its
    Web Mercator position): longitude is linear in x, ``ln(tan(π/4 + lat/2))`` in y, so no
    reprojection; snapped to the integer grid (``round`` like ``ST_AsMVTGeom``'s ``rint``)."""
    return (f"ST_MakePoint(round(({lon} - min(env.w)) / (min(env.e) - min(env.w)) * {EXTENT}), "
            f"round((min(env.my1) - {_MERC.format(lat)}) / (min(env.my1) - min(env.my0)) * {EXTENT}))")


def _admin_areas(tile: Tile, principal, filters) -> tuple[str, dict]:
    scope, params = authz.admin_area_sql(principal, "a")
    levels = ["district", "street"] + (["community"] if tile.z >= 11 else [])
    inner = (f"SELECT a.id AS fid, a.code, a.name, a.level, {_geom('a.geom')} AS geom FROM env, admin_area a "
             f"WHERE a.geom && {_BOX} AND a.level = ANY(:levels) AND {scope} ORDER BY a.id LIMIT {MAX_FEATURES}")
    return _mvt("admin_areas", inner), {**params, "levels": levels}


_COMMUNITIES_IN_TILE = f"SELECT k.code FROM admin_area k WHERE k.level = 'community' AND k.geom && {_BOX}"


def _grids(tile: Tile, principal, filters: Filters) -> tuple[str, dict]:
    if filters.tallied():
        return _grids_tallied(tile, principal, filters)
    fsql, fparams = filters.sql("i")
    counts, only, out = _figures(filters)
    fsql += only
    if tile.z >= LAYERS["grids"].points_from:
        scope, sp = authz.scope_sql(principal, "g", grid_col="code")
        inner = (
            f"SELECT g.id AS fid, g.code, g.name, 'grid' AS level, coalesce(b.households, 0) AS households, "
            f"{out}, {_geom('g.geom')} AS geom FROM env, grid g {_HOUSEHOLDS_OF_GRID}"
            f"LEFT JOIN LATERAL (SELECT {counts} FROM incident_link l JOIN incident i ON i.id = l.id "
            f"WHERE l.grid_id = g.id AND {fsql}) c ON true "
            f"WHERE g.valid_to IS NULL AND g.geom && {_BOX} AND {scope} ORDER BY g.id LIMIT {MAX_FEATURES}")
        return _mvt("grids", inner), {**sp, **fparams}
    # Below zoom 12 a grid is a couple of pixels: communities, with the sums of what the caller
    # may see inside them (a field worker's community holds only their grid's figures).
    area, ap = authz.admin_area_sql(principal, "a")
    bscope, bp = authz.scope_sql(principal, "k")
    tscope, tp = authz.scope_sql(principal, "t")
    iscope, ip = authz.scope_sql(principal, "l")
    inner = (
        f"SELECT a.id AS fid, a.code, a.name, 'community' AS level, coalesce(b.households, 0) AS households, "
        f"{out}, {_geom('a.geom')} AS geom FROM env, admin_area a {_households_of_communities(tscope, bscope)}"
        # one grouped pass over the records of the communities in the tile (whole communities,
        # also where they reach beyond it), not a probe per community
        f"LEFT JOIN (SELECT l.community_code, {counts} FROM incident_link l JOIN incident i ON i.id = l.id "
        f"WHERE l.community_code IN ({_COMMUNITIES_IN_TILE}) AND {iscope} AND {fsql} GROUP BY 1) c "
        "ON c.community_code = a.code "
        f"WHERE a.level = 'community' AND a.geom && {_BOX} AND {area} ORDER BY a.id LIMIT {MAX_FEATURES}")
    return _mvt("grids", inner), {**ap, **bp, **tp, **ip, **fparams}


# households from the building tally (gisgrid.layers.tallies): a grid's own rows
_HOUSEHOLDS_OF_GRID = ("LEFT JOIN LATERAL (SELECT sum(t.households)::int AS households FROM building_tally t "
                       "WHERE t.grid_id = g.id) b ON true ")


def _households_of_communities(tscope: str, kscope: str) -> str:
    """Households of the communities in the tile that the caller may see: the tally of their
    grids and the few buildings outside every grid."""
    return ("LEFT JOIN (SELECT community_code, sum(households)::int AS households FROM ("
            "SELECT t.community_code, sum(t.households) AS households FROM building_tally t "
            f"WHERE t.community_code IN ({_COMMUNITIES_IN_TILE}) AND {tscope} GROUP BY 1 "
            "UNION ALL SELECT k.community_code, sum(b.households) FROM building_link k JOIN building b ON b.id = k.id "
            f"WHERE k.grid_id IS NULL AND k.community_code IN ({_COMMUNITIES_IN_TILE}) AND {kscope} GROUP BY 1) h "
            "GROUP BY 1) b ON b.community_code = a.code ")


# -- from the incident tally (gisgrid.layers.tallies): unfiltered views -------------------------
_OPEN_LIST = ", ".join(f"'{s}'" for s in incidents.OPEN_STATES)
#: open incidents whose deadline is still ahead (``ix_incident_open_deadline``), by ``key``
_NOT_DUE = ("SELECT {key}, count(*)::int AS n FROM incident i JOIN incident_link l ON l.id = i.id "
            f"WHERE i.state IN ({_OPEN_LIST}) AND i.deadline >= now() AND {{where}} GROUP BY 1")
#: closed incidents with a rejection (``ix_incident_event_rejected``): closed, not resolved
_REJECTED = ("SELECT {key}, count(DISTINCT i.id)::int AS n FROM incident_event e JOIN incident i ON i.id = e.incident_id "
             "JOIN incident_link l ON l.id = i.id WHERE e.note LIKE '[reject]%' AND i.state = 'closed' "
             "AND i.merged_into_id IS NULL AND {where} GROUP BY 1")
_OPEN_SUM = " + ".join(f"t.{s}" for s in incidents.OPEN_STATES)
#: figures of tally rows ``t`` (received, open, due, closed and not merged)
_TALLY_FIGURES = (f"sum(t.n)::int AS received, sum({_OPEN_SUM})::int AS open, sum(t.due)::int AS due, "
                  "sum(t.closed - t.merged)::int AS closed_unmerged")
#: the same figures of raw incidents ``i`` (those outside every grid)
_RAW_FIGURES = (f"count(*)::int AS received, count(*) FILTER (WHERE {_OPEN})::int AS open, "
                f"count(*) FILTER (WHERE {_OPEN} AND i.deadline IS NOT NULL)::int AS due, "
                "count(*) FILTER (WHERE i.state = 'closed' AND i.merged_into_id IS NULL)::int AS closed_unmerged")


def _tallied_out(filters: Filters) -> str:
    overdue = "coalesce(c.due, 0) - coalesce(d.n, 0) AS overdue"
    if filters.figures == "open":
        return f"coalesce(c.open, 0) AS open, {overdue}"
    return (f"coalesce(c.received, 0) AS received, coalesce(c.open, 0) AS open, {overdue}, "
            "coalesce(c.closed_unmerged, 0) - coalesce(r.n, 0) AS resolved")


def _grids_tallied(tile: Tile, principal, filters: Filters) -> tuple[str, dict]:
    """The grid layer without filters: the figures from the tally, overdue and rejections beside it."""
    out = _tallied_out(filters)
    rejected = filters.figures == "all"
    if tile.z >= LAYERS["grids"].points_from:
        scope, sp = authz.scope_sql(principal, "g", grid_col="code")
        grids_in_tile = f"SELECT g.id FROM grid g WHERE g.valid_to IS NULL AND g.geom && {_BOX} AND {scope}"
        where = f"l.grid_id IN ({grids_in_tile})"
        inner = (
            f"SELECT g.id AS fid, g.code, g.name, 'grid' AS level, coalesce(b.households, 0) AS households, "
            f"{out}, {_geom('g.geom')} AS geom FROM env, grid g {_HOUSEHOLDS_OF_GRID}"
            f"LEFT JOIN LATERAL (SELECT {_TALLY_FIGURES} FROM incident_tally t WHERE t.grid_id = g.id) c ON true "
            f"LEFT JOIN ({_NOT_DUE.format(key='l.grid_id', where=where)}) d ON d.grid_id = g.id "
            + (f"LEFT JOIN ({_REJECTED.format(key='l.grid_id', where=where)}) r ON r.grid_id = g.id " if rejected else "")
            + f"WHERE g.valid_to IS NULL AND g.geom && {_BOX} AND {scope} ORDER BY g.id LIMIT {MAX_FEATURES}")
        return _mvt("grids", inner), sp
    area, ap = authz.admin_area_sql(principal, "a")
    bscope, bp = authz.scope_sql(principal, "k")
    tscope, tp = authz.scope_sql(principal, "t")
    iscope, ip = authz.scope_sql(principal, "l")
    where = f"l.community_code IN ({_COMMUNITIES_IN_TILE}) AND {iscope}"
    inner = (
        f"SELECT a.id AS fid, a.code, a.name, 'community' AS level, coalesce(b.households, 0) AS households, "
        f"{out}, {_geom('a.geom')} AS geom FROM env, admin_area a {_households_of_communities(tscope, bscope)}"
        # the tally of the grids of the communities in the tile, and the few incidents outside every grid
        "LEFT JOIN (SELECT community_code, sum(received)::int AS received, sum(open)::int AS open, sum(due)::int AS due, "
        "sum(closed_unmerged)::int AS closed_unmerged FROM ("
        f"SELECT t.community_code, {_TALLY_FIGURES} FROM incident_tally t "
        f"WHERE t.community_code IN ({_COMMUNITIES_IN_TILE}) AND {tscope} GROUP BY 1 "
        f"UNION ALL SELECT l.community_code, {_RAW_FIGURES} FROM incident_link l JOIN incident i ON i.id = l.id "
        f"WHERE l.grid_id IS NULL AND {where} GROUP BY 1) u GROUP BY 1) c ON c.community_code = a.code "
        f"LEFT JOIN ({_NOT_DUE.format(key='l.community_code', where=where)}) d ON d.community_code = a.code "
        + (f"LEFT JOIN ({_REJECTED.format(key='l.community_code', where=where)}) r ON r.community_code = a.code "
           if rejected else "")
        + f"WHERE a.level = 'community' AND a.geom && {_BOX} AND {area} ORDER BY a.id LIMIT {MAX_FEATURES}")
    return _mvt("grids", inner), {**ap, **bp, **tp, **ip}


def _points_or_bins(name: str, table: str, alias: str, anchor: str, cols: str, bin_cols: str, bin_counts: str,
                    geom_kind: str = "point"):
    def build(tile: Tile, principal, filters: Filters) -> tuple[str, dict]:
        scope, sp = authz.scope_sql(principal, "l")
        if tile.z < LAYERS[name].points_from and table == "building":
            return _tally_bins(name, table, anchor, tile, principal, *_BUILDING_TALLY_BINS), sp
        if tile.z < LAYERS[name].points_from:
            return _bins(name, table, alias, anchor, bin_cols, bin_counts, scope), sp
        inner = (f"SELECT {alias}.id AS fid, {cols}, {_geom(alias + '.geom', geom_kind)} AS geom "
                 f"FROM env, {table} {alias} {linking.join_sql(table, alias)} WHERE {alias}.geom && {_BOX} AND {scope} "
                 f"ORDER BY {alias}.id LIMIT {MAX_FEATURES}")
        return _mvt(name, inner), sp
    return build


def _patrol_routes(tile: Tile, principal, filters) -> tuple[str, dict]:
    scope, sp = authz.scope_sql(principal, "l")
    inner = (f"SELECT r.id AS fid, r.code, r.name, r.team, {_geom('r.geom', 'line')} AS geom FROM env, patrol_route r "
             f"{linking.join_sql('patrol_route', 'r')} WHERE r.geom && {_BOX} AND {scope} ORDER BY r.id LIMIT {MAX_FEATURES}")
    return _mvt("patrol_routes", inner), sp


_STATE_COUNTS = ", ".join(f"count(*) FILTER (WHERE i.state = '{s}')::int AS {s}" for s in incidents.STATES)


def _incidents(tile: Tile, principal, filters: Filters) -> tuple[str, dict]:
    scope, sp = authz.scope_sql(principal, "l")
    fsql, fp = filters.sql("i")
    where = f"{scope} AND {fsql}"
    if tile.z < LAYERS["incidents"].points_from and filters.tallied():
        return _tally_bins("incidents", "incident", "geom", tile, principal, *_INCIDENT_TALLY_BINS), sp
    if tile.z < LAYERS["incidents"].points_from:
        counts = f"count(*)::int AS n, count(*) FILTER (WHERE {_OPEN})::int AS open, {_STATE_COUNTS}"
        return _bins("incidents", "incident", "i", "geom", "i.state, i.deadline", counts, where), {**sp, **fp}
    inner = (f"SELECT i.id AS fid, i.code, i.state, i.category, {_OVERDUE} AS overdue, "
             f"extract(epoch FROM i.reported_at)::bigint AS reported, {_geom('i.geom', 'point')} AS geom "
             f"FROM env, incident i {linking.join_sql('incident', 'i')} WHERE i.geom && {_BOX} AND {where} "
             f"ORDER BY i.id LIMIT {MAX_FEATURES}")
    return _mvt("incidents", inner), {**sp, **fp}


def _tally_bins(name: str, layer: str, anchor: str, tile: Tile, principal, sums: dict[str, str],
                raw: dict[str, str]) -> str:
    """Bins from the tally of ``layer`` (no filters): each tally row (a grid's shard) drawn at
    the mean position of its records (``sx/count``, ``sy/count``; so they fall in one bin, in
    the tile that holds that position, and each record is counted once), the few records
    outside every grid at their own ``anchor``; binned as :func:`_bins` does. ``sums``: column
    → its value in a tally row ``t`` (the first counts the records); ``raw``: column → the same
    of one record ``i``."""
    tscope, _ = authz.scope_sql(principal, "t")
    lscope, _ = authz.scope_sql(principal, "l")
    cols, count = list(sums), next(iter(sums))
    # the grids whose box meets the tile (a grid's mean position lies inside its box); below zoom
    # 12 a tile holds most of a city: the whole tally is read without the grids (the mean
    # positions decide)
    # (probed by grid id from the grid index: a hash join would read every tally row)
    grids = "" if tile.z < 12 else f"t.grid_id = ANY(ARRAY(SELECT g.id FROM grid g WHERE g.geom && {_INNER})) AND "
    rows = (   # each tally row (a grid's shard) at the mean position of its records
        f"SELECT {', '.join(f'{e} AS {c}' for c, e in sums.items())}, t.sx, t.sy "
        f"FROM {layer}_tally t WHERE {grids}{sums[count]} > 0 AND {tscope} "
        f"UNION ALL SELECT {', '.join(raw[c] for c in cols)}, ST_X(i.{anchor}), ST_Y(i.{anchor}) "
        f"FROM {layer}_link l JOIN {layer} i ON i.id = l.id WHERE l.grid_id IS NULL AND i.{anchor} && {_INNER} "
        f"AND {lscope}")
    inner = (
        f"SELECT {', '.join(f'sum(p.{c})::int AS {c}' for c in cols)}, "
        f"{_bin_point(f'sum(p.sx) / sum(p.{count})', f'sum(p.sy) / sum(p.{count})')} AS geom "
        f"FROM (SELECT r.*, r.sx / r.{count} AS lon, r.sy / r.{count} AS lat FROM ({rows}) r OFFSET 0) p, env "
        "WHERE p.lon >= env.w AND p.lon < env.e AND p.lat >= env.s AND p.lat < env.n "
        f"GROUP BY {_bin_key('p.lon', 'p.lat')}")
    return _mvt(name, inner, fid=False)


_INCIDENT_TALLY_BINS = (
    {"n": "t.n", "open": _OPEN_SUM, **{s: f"t.{s}" for s in incidents.STATES}},
    {"n": "1", "open": f"({_OPEN})::int", **{s: f"(i.state = '{s}')::int" for s in incidents.STATES}})
_BUILDING_TALLY_BINS = ({"n": "t.buildings", "households": "t.households"},
                        {"n": "1", "households": "coalesce(i.households, 0)"})


_BUILDERS = {
    "admin_areas": _admin_areas,
    "grids": _grids,
    "buildings": _points_or_bins("buildings", "building", "b", "anchor", "b.code, b.name, b.households, b.floors",
                                 "b.households", "count(*)::int AS n, sum(b.households)::int AS households", "polygon"),
    "patrol_points": _points_or_bins("patrol_points", "patrol_point", "p", "geom", "p.code, p.name, p.kind, p.team",
                                     "p.id", "count(*)::int AS n"),
    "patrol_routes": _patrol_routes,
    "places": _points_or_bins("places", "place", "p", "geom", "p.code, p.name, p.category", "p.id",
                              "count(*)::int AS n"),
    "incidents": _incidents,
}


def tile_sql(name: str, tile: Tile, principal: authz.Principal, filters: Filters = Filters()) -> tuple[str, dict]:
    """The one statement that draws ``tile`` of layer ``name`` for ``principal``, and its
    parameters. It returns one ``bytea`` (the MVT, possibly empty)."""
    sql, params = _select(name, tile, principal, filters)
    return _ENV + sql, params


def _select(name, tile, principal, filters) -> tuple[str, dict]:
    sql, params = _BUILDERS[layer(name).name](tile, principal, filters)
    # simplified to a quarter pixel of a 256 px tile
    w, so, e, n = tile.lonlat_bounds()
    bw, bs, be, bn = tile.lonlat_bounds(BUFFER / EXTENT)
    params.update(z=tile.z, x=tile.x, y=tile.y, tol=tile.size_m / 1024, open=list(incidents.OPEN_STATES),
                  w=w, s=so, e=e, n=n, bw=bw, bs=bs, be=be, bn=bn)
    return sql, params


def draw(conn, name: str, tile: Tile, principal: authz.Principal, filters: Filters = Filters()) -> tuple[bytes, str]:
    """Draw one tile on a psycopg connection that is autocommitted and set to plan every
    statement afresh and never JIT (``plan_cache_mode=force_custom_plan``, ``jit=off``: the web
    app's tile connections, :class:`gisgrid.db.engine.PooledConnections` over the tile engine):
    one round trip, the statement prepared (parsed once per connection and shape of tile; still a
    custom plan each time), no ORM session. Returns the bytes with the version of the layer's
    tables read in the same statement, so the bytes are exactly the data of that version.

    Both settings matter: a tile statement over a whole city is "expensive" to the planner, which
    would JIT-compile it (seconds of LLVM for a statement that runs once), and its boxes are
    parameters, which a generic plan cannot see (how many rows a box holds): custom plans.

    Parameters
    ----------
    conn : psycopg.Connection
        Autocommitted, with the two settings above (this function does not check them).
    name, tile, principal, filters
        The layer (:data:`LAYERS`), the tile, the caller (its jurisdiction bounds the features)
        and the query's filters.

    Returns
    -------
    (bytes, str)
        The MVT (possibly empty) and the layer's version read in the same statement.
    """
    sql, params = _combined(name, tile, principal, filters)
    version_, mvt = conn.execute(driver_sql(sql), params, prepare=True).fetchone()
    return bytes(mvt or b""), version_


def _combined(name, tile, principal, filters) -> tuple[str, dict]:
    sql, params = _select(name, tile, principal, filters)
    params.update(_version_params(name))
    return f"{_ENV}SELECT {_version_sql(name)} AS version, ({sql}) AS mvt", params


@functools.lru_cache(maxsize=256)        # a statement per layer, zoom class and jurisdiction
def driver_sql(sql: str) -> str:
    """A statement with SQLAlchemy's ``:name`` binds as psycopg's ``%(name)s`` (``::type`` casts
    and literal ``%`` kept), to run on the psycopg connection itself."""
    return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", sql.replace("%", "%%"))


#: "overdue" turns true as deadlines pass with no write: layers that carry it (those with the
#: incident figures) add a five-minute clock to their version, so no cache keeps it longer
OVERDUE_SECONDS = 300
_MINUTE = f"',@' || floor(extract(epoch FROM now()) / {OVERDUE_SECONDS})::bigint"


def _version_sql(name: str) -> str:
    return changes.version_sql() + (f" || {_MINUTE}" if LAYERS[name].filtered else "")


def version(session: Session, name: str) -> str:
    """The layer's current version (what :func:`draw` returns with the bytes)."""
    return session.execute(text(f"SELECT {_version_sql(name)}"), _version_params(name)).scalar()


def version_on(conn, name: str) -> str:
    """:func:`version` on a psycopg connection: the web app asks it of every cached tile and
    revalidation, so the statement is prepared and has no parameters (nothing to convert or send
    but its name)."""
    return conn.execute(_version_statement(name), prepare=True).fetchone()[0]


def versions_on(conn, names: tuple[str, ...]) -> dict[str, str]:
    """:func:`version_on` of several layers in one round trip (the one map polls every layer's)."""
    return dict(zip(names, conn.execute(_versions_statement(names), prepare=True).fetchone()))


@functools.lru_cache(maxsize=None)
def _versions_statement(names: tuple[str, ...]) -> str:
    return "SELECT " + ", ".join(f"({_version_statement(n)})" for n in names)


@functools.lru_cache(maxsize=None)
def _version_statement(name: str) -> str:
    """The layer's version statement with its table names written in (constants of
    :data:`LAYERS`, never input)."""
    sql = f"SELECT {_version_sql(name)}"
    for key, names in _version_params(name).items():
        assert all(re.fullmatch(r"[a-z_]+", n) for n in names), names
        sql = sql.replace(f":{key}", "CAST(ARRAY[" + ", ".join(f"'{n}'" for n in names) + "] AS text[])")
    return sql


def _version_params(name: str) -> dict:
    return {"vtables": sorted(LAYERS[name].tables), "vlinks": sorted(LAYERS[name].links)}


def tilejson(name: str, tiles_url: str, version_: str, bounds: tuple[float, float, float, float] | None,
             centre: tuple[float, float] | None, title: str = "") -> dict:
    """The TileJSON 3.0.0 document of one layer."""
    lay = layer(name)
    doc = {
        "tilejson": "3.0.0", "name": name, "description": title, "version": "1.0.0",
        "scheme": "xyz", "tiles": [tiles_url], "minzoom": lay.minzoom, "maxzoom": MAX_ZOOM,
        "vector_layers": [{"id": name, "fields": lay.fields, "minzoom": lay.minzoom, "maxzoom": MAX_ZOOM,
                           "description": title}],
        "gisgrid": {"data_version": version_, "geometry": lay.geometry, "points_from": lay.points_from,
                    "filters": list(lay.params)},
    }
    if bounds:
        doc["bounds"] = list(bounds)
    if centre:
        doc["center"] = [centre[0], centre[1], 12]
    return doc


def extent(session: Session, principal: authz.Principal) -> tuple[tuple[float, float, float, float], tuple] | None:
    """Bounds ``(w, s, e, n)`` and centre of the caller's current grids (or admin areas)."""
    scope, params = authz.scope_sql(principal, "g", grid_col="code")
    row = session.execute(text(
        "SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM (SELECT ST_Extent(geom)::geometry AS e FROM grid g "
        f"WHERE g.valid_to IS NULL AND {scope}) x"), params).one()
    if row[0] is None:
        area, ap = authz.admin_area_sql(principal, "a")
        row = session.execute(text(
            "SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM (SELECT ST_Extent(geom)::geometry AS e "
            f"FROM admin_area a WHERE {area}) x"), ap).one()
    if row[0] is None:
        return None
    b = tuple(round(float(v), 6) for v in row)
    return b, ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
