"""Coordinate reference systems used by gisgrid.

Storage is EPSG:4326. Metric work (areas, distances, compactness) uses the CGCS2000 3-degree
Gauss-Krüger zone of the district: EPSG:4534 (central meridian 75°E) … EPSG:4554 (135°E),
"CGCS2000 / 3-degree Gauss-Kruger CM …E" in the EPSG registry.
"""
from __future__ import annotations

STORAGE = "EPSG:4326"


def gk_zone_for(lon: float) -> str:
    """The CGCS2000 3-degree Gauss-Krüger CRS (with no false-easting zone prefix) whose central
    meridian is nearest to ``lon``.

    >>> gk_zone_for(114.27)   # Wuhan
    'EPSG:4547'
    """
    cm = 3 * round(lon / 3)
    cm = min(max(cm, 75), 135)
    return f"EPSG:{4534 + (cm - 75) // 3}"


def parse(crs):
    """A ``pyproj.CRS`` from ``"EPSG:4490"``, ``4490`` or any string pyproj accepts; a clear error
    naming the value otherwise."""
    import pyproj

    from gisgrid.errors import InvalidInput

    try:
        return pyproj.CRS.from_user_input(crs)
    except (pyproj.exceptions.CRSError, TypeError) as e:
        raise InvalidInput(f"unknown CRS {crs!r}: give an EPSG code such as EPSG:4326 or EPSG:4490",
                           field="crs") from e


def to_storage(geoms, crs):
    """Reproject shapely geometries (scalar or array) from ``crs`` to EPSG:4326 lon/lat.

    Geographic CRSs on the CGCS2000/WGS84 datums (EPSG:4326, 4490) are returned unchanged: they
    agree within centimetres at grid scale.
    """
    import numpy as np
    import pyproj
    import shapely

    src = parse(crs)
    if src.to_epsg() in (4326, 4490):
        return geoms
    tr = pyproj.Transformer.from_crs(src, STORAGE, always_xy=True)
    return shapely.transform(geoms, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


def point_to_storage(x, y, crs="EPSG:4326"):
    """A lon/lat point in EPSG:4326 from coordinates ``x, y`` given in ``crs`` (metres for a
    projected CRS). Numbers are checked before, ranges after the transformation.

    Raises InvalidGeometry (not numbers, not finite, outside lon/lat after transformation) or
    InvalidInput (unknown CRS).
    """
    import math

    from gisgrid.errors import InvalidGeometry
    from gisgrid.spatial.geometry import point

    src = parse(crs)
    if src.to_epsg() in (4326, 4490):
        return point(x, y)
    try:
        fx, fy = float(x), float(y)
    except (TypeError, ValueError):
        raise InvalidGeometry(f"lon/lat must be numbers, got {x!r}, {y!r}", field="lon/lat") from None
    if not (math.isfinite(fx) and math.isfinite(fy)):
        raise InvalidGeometry(f"lon/lat must be finite, got {x!r}, {y!r}", field="lon/lat")
    import pyproj

    tx, ty = pyproj.Transformer.from_crs(src, STORAGE, always_xy=True).transform(fx, fy)
    if not (math.isfinite(tx) and math.isfinite(ty)):
        raise InvalidGeometry(f"({fx}, {fy}) in {crs} has no position in lon/lat", field="lon/lat")
    return point(tx, ty)
