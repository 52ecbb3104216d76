"""Checks of a grid plan (pure geometry, metric CRS): does a set of cells cover each community
with no gap and no overlap, and are the cells sane grids?

Every check is a named callable over a :class:`Layout` returning :class:`Problem` s; :func:`check`
runs them all and assembles the report. Coverage rules use GEOS coverage functions
(:func:`shapely.coverage_is_valid`, :func:`shapely.coverage_invalid_edges`) and vectorised
shapely over an STRtree, not pairwise loops in Python.

=====================  ========  ==========================================================
check                  severity  what it finds
=====================  ========  ==========================================================
``gap``                error     parts of a community no cell covers (with area)
``overlap``            error     parts covered by two cells (with area and both codes)
``invalid_edge``       error     edges GEOS says break the coverage (drawn on the map)
``outside``            error     parts of a cell outside its parent community
``fragmented``         error     a cell that is not one contiguous polygon
``empty``              error     a cell with no area
``sliver``             warning   thin parts of a cell, narrower than ``sliver_width``
``households``         warning   households outside ``target × (1 ± tolerance)`` (an
                                 oversized single building is named as such)
``compactness``        warning   Polsby-Popper below ``min_polsby_popper``
``road_crossing``      warning   a major road running through a cell's interior
=====================  ========  ==========================================================
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import shapely

ERRORS = ("gap", "overlap", "invalid_edge", "outside", "fragmented", "empty")


@dataclass
class Layout:
    """What the checks look at, all in one metric CRS.

    Attributes
    ----------
    codes : list of str, one per cell
    communities : list of str, the parent community code of each cell
    cells : ndarray of shapely (Multi)Polygon, one per cell
    areas : dict community code → shapely (Multi)Polygon, the parents
    building_points : ndarray of shapely Point (anchors), may be empty
    households : ndarray of int, one per building
    major_roads : ndarray of lines, may be empty
    target : households per cell; tolerance : fraction (0.10 = ±10 %)
    """
    codes: list[str]
    communities: list[str]
    cells: np.ndarray
    areas: dict
    building_points: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))
    households: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    major_roads: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))
    #: the cells in the CRS they are stored in, where coverage topology is judged (a
    #: reprojection may move shared vertices apart by nanometres); default: ``cells``
    topology_cells: np.ndarray | None = None
    #: reprojects geometries from the storage CRS to the metric one (for edge lengths)
    to_metric: object = None
    target: float = 250
    tolerance: float = 0.10
    min_area: float = 1.0             # m²: smaller gaps/overlaps are rounding noise
    sliver_width: float = 5.0         # m
    min_polsby_popper: float = 0.15
    road_buffer: float = 2.0          # m: a road this close to the edge runs along it, not through
    min_road_length: float = 20.0     # m


@dataclass
class Problem:
    check: str
    cells: list[str]
    message: str
    geom: object = None
    area_m2: float | None = None
    length_m: float | None = None

    @property
    def severity(self) -> str:
        return "error" if self.check in ERRORS else "warning"


def _parts_over(geom, min_area: float) -> list:
    return [p for p in shapely.get_parts(geom) if p.area >= min_area] if geom is not None else []


def gaps(lay: Layout) -> list[Problem]:
    """Area of each community not covered by its cells."""
    out = []
    comms = np.asarray(lay.communities)
    for code, area in sorted(lay.areas.items()):
        mine = lay.cells[comms == code]
        covered = shapely.union_all(mine) if len(mine) else shapely.Polygon()
        for part in _parts_over(shapely.difference(area, covered), lay.min_area):
            out.append(Problem("gap", [], f"gap of {part.area:.1f} m² in community {code}", part, part.area))
    return out


def overlaps(lay: Layout) -> list[Problem]:
    """Area covered by two cells, per pair (an STRtree query, then vectorised intersections)."""
    a, b = shapely.STRtree(lay.cells).query(lay.cells, predicate="intersects")
    keep = a < b
    a, b = a[keep], b[keep]
    inter = shapely.intersection(lay.cells[a], lay.cells[b])
    area = shapely.area(inter)
    out = []
    for i, j, g, ar in zip(a, b, inter, area):
        if ar >= lay.min_area:
            polys = shapely.union_all([p for p in shapely.get_parts(g) if p.area > 0])
            out.append(Problem("overlap", [lay.codes[i], lay.codes[j]],
                               f"cells {lay.codes[i]} and {lay.codes[j]} overlap by {ar:.1f} m²", polys, float(ar)))
    return out


def invalid_edges(lay: Layout) -> list[Problem]:
    """Edges that GEOS finds break the coverage of each community (shapely.coverage_invalid_edges)."""
    out = []
    comms = np.asarray(lay.communities)
    for code in sorted(set(lay.communities)):
        idx = np.flatnonzero(comms == code)
        topo = lay.cells if lay.topology_cells is None else lay.topology_cells
        cells = topo[idx]
        if shapely.coverage_is_valid(cells):
            continue
        edges = shapely.coverage_invalid_edges(cells)
        if lay.to_metric is not None:
            edges = lay.to_metric(edges)
        for i, e in zip(idx, edges):
            if e is not None and not e.is_empty and e.length >= math.sqrt(lay.min_area):
                out.append(Problem("invalid_edge", [lay.codes[i]],
                                   f"cell {lay.codes[i]}: {e.length:.1f} m of edge do not match a neighbour's",
                                   e, length_m=e.length))
    return out


def outside(lay: Layout) -> list[Problem]:
    """Parts of cells outside their parent community."""
    parents = np.asarray([lay.areas.get(c) for c in lay.communities], dtype=object)
    out = []
    for i, g in enumerate(shapely.difference(lay.cells, parents)):
        for part in _parts_over(g, lay.min_area):
            out.append(Problem("outside", [lay.codes[i]], f"cell {lay.codes[i]} has {part.area:.1f} m² outside "
                               f"community {lay.communities[i]}", part, part.area))
    return out


def fragmented(lay: Layout) -> list[Problem]:
    """Cells made of more than one polygon (after dropping parts below ``min_area``)."""
    out = []
    for i, g in enumerate(lay.cells):
        parts = _parts_over(g, lay.min_area)
        if not parts:
            out.append(Problem("empty", [lay.codes[i]], f"cell {lay.codes[i]} has no area", None, 0.0))
        elif len(parts) > 1:
            out.append(Problem("fragmented", [lay.codes[i]],
                               f"cell {lay.codes[i]} is {len(parts)} separate polygons", g, float(g.area)))
    return out


def slivers(lay: Layout) -> list[Problem]:
    """Parts of a cell narrower than ``sliver_width`` (what an opening by that width removes,
    mitred so square corners are kept), each at least ``sliver_width²`` in area."""
    r = lay.sliver_width / 2
    opened = shapely.buffer(shapely.buffer(lay.cells, -r, join_style="mitre"), r, join_style="mitre")
    thin = shapely.difference(lay.cells, opened)
    out = []
    for i, g in enumerate(thin):
        for part in _parts_over(g, lay.sliver_width ** 2):
            out.append(Problem("sliver", [lay.codes[i]], f"cell {lay.codes[i]} has a thin part of {part.area:.1f} m² "
                               f"(narrower than {lay.sliver_width:g} m)", part, part.area))
    return out


def polsby_popper(cells) -> np.ndarray:
    """4πA/P² per polygon (1 for a disc, about 0.785 for a square); metric CRS."""
    perim = shapely.length(cells)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(perim > 0, 4 * np.pi * shapely.area(cells) / perim ** 2, 0.0)


def compactness(lay: Layout) -> list[Problem]:
    pp = polsby_popper(lay.cells)
    return [Problem("compactness", [lay.codes[i]], f"cell {lay.codes[i]} Polsby-Popper {pp[i]:.2f} is below "
                    f"{lay.min_polsby_popper:g}", lay.cells[i]) for i in np.flatnonzero(pp < lay.min_polsby_popper)]


def road_crossings(lay: Layout) -> list[Problem]:
    """Major roads running through a cell's interior (more than ``min_road_length`` inside the
    cell shrunk by ``road_buffer``)."""
    if not len(lay.major_roads):
        return []
    inner = shapely.buffer(lay.cells, -lay.road_buffer)
    ci, ri = shapely.STRtree(lay.major_roads).query(inner, predicate="intersects")
    inside = shapely.intersection(lay.major_roads[ri], inner[ci])
    length = shapely.length(inside)
    out, per_cell = [], {}
    for c, g, ln in zip(ci, inside, length):
        per_cell.setdefault(c, []).append((g, ln))
    for c, items in sorted(per_cell.items()):
        total = sum(ln for _, ln in items)
        if total >= lay.min_road_length:
            out.append(Problem("road_crossing", [lay.codes[c]], f"a major road runs {total:.0f} m through cell "
                               f"{lay.codes[c]}", shapely.union_all([g for g, _ in items]), length_m=total))
    return out


def households_per_cell(lay: Layout) -> tuple[np.ndarray, np.ndarray]:
    """Households and largest building per cell. A building on a shared edge counts for the
    cell with the lowest code (the linking rule)."""
    n = len(lay.cells)
    hh, biggest = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    if not len(lay.building_points):
        return hh, biggest
    bi, ci = shapely.STRtree(lay.cells).query(lay.building_points, predicate="intersects")
    rank = np.argsort(np.argsort(np.asarray(lay.codes, dtype=object)))
    order = np.lexsort((rank[ci], bi))
    bi, ci = bi[order], ci[order]
    first = np.r_[True, bi[1:] != bi[:-1]]
    bi, ci = bi[first], ci[first]
    np.add.at(hh, ci, lay.households[bi])
    np.maximum.at(biggest, ci, lay.households[bi])
    return hh, biggest


def households(lay: Layout, hh=None, biggest=None) -> list[Problem]:
    if hh is None:
        hh, biggest = households_per_cell(lay)
    lo, hi = lay.target * (1 - lay.tolerance), lay.target * (1 + lay.tolerance)
    out = []
    for i in np.flatnonzero((hh < lo) | (hh > hi)):
        dev = hh[i] / lay.target - 1
        why = " (one building alone exceeds the target)" if biggest[i] > hi else ""
        out.append(Problem("households", [lay.codes[i]], f"cell {lay.codes[i]} has {hh[i]} households, "
                           f"{dev:+.0%} from the target {lay.target:g} (±{lay.tolerance:.0%}){why}", lay.cells[i]))
    return out


CHECK_NAMES = ("gap", "overlap", "invalid_edge", "outside", "fragmented", "empty", "sliver", "households",
               "compactness", "road_crossing")
CHECKS = (gaps, overlaps, invalid_edges, outside, fragmented, slivers, households, compactness, road_crossings)


def check(lay: Layout) -> dict:
    """Run every check. Returns the report (plain JSON types; geometries left as shapely in
    ``problems[i]["geom"]`` for the caller to reproject)::

        {"ok": bool, "errors": int, "warnings": int, "counts": {check: n},
         "cells": [{"code", "households", "deviation", "within_tolerance", "oversized_building",
                    "polsby_popper", "area_m2", "parts"}],
         "problems": [{"check", "severity", "cells", "message", "area_m2", "length_m", "geom"}]}

    Examples
    --------
    >>> from shapely import box
    >>> lay = Layout(["A", "B"], ["C", "C"], np.array([box(0, 0, 1, 2), box(1, 0, 2, 2)]), {"C": box(0, 0, 2, 2)},
    ...              target=1, min_area=0.01)
    >>> [p["check"] for p in check(lay)["problems"]]
    ['households', 'households']
    """
    hh, biggest = households_per_cell(lay)
    problems = []
    for fn in CHECKS:
        problems += fn(lay, hh, biggest) if fn is households else fn(lay)
    pp = polsby_popper(lay.cells)
    lo, hi = lay.target * (1 - lay.tolerance), lay.target * (1 + lay.tolerance)
    cells = [{"code": c, "community_code": lay.communities[i], "households": int(hh[i]),
              "deviation": round(float(hh[i] / lay.target - 1), 4), "within_tolerance": bool(lo <= hh[i] <= hi),
              "oversized_building": bool(biggest[i] > hi), "polsby_popper": round(float(pp[i]), 4),
              "area_m2": round(float(shapely.area(lay.cells[i])), 1),
              "parts": len(_parts_over(lay.cells[i], lay.min_area))} for i, c in enumerate(lay.codes)]
    counts = dict.fromkeys(CHECK_NAMES, 0)
    for p in problems:
        counts[p.check] += 1
    errors = sum(p.severity == "error" for p in problems)
    return {"ok": errors == 0, "errors": errors, "warnings": len(problems) - errors, "counts": counts,
            "cells": cells,
            "problems": [{"check": p.check, "severity": p.severity, "cells": p.cells, "message": p.message,
                          "area_m2": None if p.area_m2 is None else round(float(p.area_m2), 2),
                          "length_m": None if p.length_m is None else round(float(p.length_m), 1),
                          "geom": p.geom} for p in problems]}
