"""Checks and conversions of single geometries before they are stored.

Everything here works in EPSG:4326 lon/lat (the storage CRS) unless a function says otherwise.
"""
from __future__ import annotations

import math

import shapely
from shapely.geometry import MultiLineString, MultiPolygon, Point, shape
from shapely.geometry.base import BaseGeometry

from gisgrid.errors import InvalidGeometry

_MULTI = {"Polygon": MultiPolygon, "LineString": MultiLineString}


def from_geojson(obj, *, record: str | None = None, field: str = "geometry") -> BaseGeometry:
    """A shapely geometry from a GeoJSON geometry dict; a clear error for anything else."""
    if not isinstance(obj, dict) or "type" not in obj:
        raise InvalidGeometry(f"expected a GeoJSON geometry object with a 'type', got {type(obj).__name__}",
                              record=record, field=field)
    try:
        return shape(obj)
    except Exception as e:  # shapely raises several types for malformed input
        raise InvalidGeometry(f"malformed GeoJSON {obj.get('type')!r}: {e}", record=record, field=field) from e


def point(lon, lat, *, record: str | None = None) -> Point:
    """A lon/lat point, refusing non-numbers, NaN and out-of-range values (a swapped lat/lon
    pair in China is caught by the latitude range only when lon > 90; extents catch the rest)."""
    return Point(*lonlat(lon, lat, record=record))


def lonlat(lon, lat, *, record: str | None = None) -> tuple[float, float]:
    """:func:`point`'s checks, answering the two floats (no geometry object made)."""
    try:
        x, y = float(lon), float(lat)
    except (TypeError, ValueError):
        raise InvalidGeometry(f"lon/lat must be numbers, got {lon!r}, {lat!r}", record=record, field="lon/lat") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise InvalidGeometry(f"lon/lat must be finite, got {lon!r}, {lat!r}", record=record, field="lon/lat")
    if not -180 <= x <= 180:
        raise InvalidGeometry(f"longitude {x} outside [-180, 180]", record=record, field="lon")
    if not -90 <= y <= 90:
        raise InvalidGeometry(f"latitude {y} outside [-90, 90]", record=record, field="lat")
    return x, y


def check(geom, allowed: tuple[str, ...], *, record: str | None = None, field: str = "geometry") -> BaseGeometry:
    """Validate one geometry for storage and return it, Polygon promoted to MultiPolygon
    (LineString to MultiLineString) when only the multi type is allowed.

    Parameters
    ----------
    geom : shapely geometry
        In EPSG:4326 lon/lat.
    allowed : tuple of str
        Geometry type names accepted, e.g. ``("MultiPolygon",)`` or ``("Point", "Polygon", "MultiPolygon")``.
    record, field : str, optional
        Named in the error message.

    Raises
    ------
    InvalidGeometry
        Missing, empty, wrong type, coordinates outside lon/lat range, NaN, or invalid
        (the GEOS reason, e.g. ``Self-intersection[114.27 30.58]``, is in the message).
    """
    if geom is None:
        raise InvalidGeometry("geometry is missing", record=record, field=field)
    if not isinstance(geom, BaseGeometry):
        raise InvalidGeometry(f"expected a geometry, got {type(geom).__name__}", record=record, field=field)
    if geom.is_empty:
        raise InvalidGeometry("geometry is empty", record=record, field=field)
    gtype = geom.geom_type
    if gtype not in allowed:
        multi = _MULTI.get(gtype)
        if multi is not None and multi.__name__ in allowed:
            geom = multi([geom])
        else:
            raise InvalidGeometry(f"geometry type {gtype} not allowed here; allowed: {', '.join(allowed)}",
                                  record=record, field=field)
    coords = shapely.get_coordinates(geom)
    if not (coords.size and math.isfinite(coords.sum())):
        raise InvalidGeometry("coordinates contain NaN or infinity", record=record, field=field)
    xmin, ymin = coords.min(axis=0)
    xmax, ymax = coords.max(axis=0)
    if xmin < -180 or xmax > 180 or ymin < -90 or ymax > 90:
        raise InvalidGeometry(
            f"coordinates outside lon/lat range (x {xmin:.6g}..{xmax:.6g}, y {ymin:.6g}..{ymax:.6g}); "
            "the layer stores EPSG:4326 lon/lat: were the coordinates projected, or lat/lon swapped?",
            record=record, field=field)
    if not geom.is_valid:
        raise InvalidGeometry(f"invalid geometry: {shapely.is_valid_reason(geom)}", record=record, field=field)
    return geom
