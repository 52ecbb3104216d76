"""Coordinate reference systems used by gisgrid.

Storage is EPSG:4326. Metric work (areas, distances, compactness) uses the CGCS2000 3-degree
Gauss-Krüger zone of the district: EPSG:4534 (central meridian 75°E) … EPSG:4554 (135°E),
"CGCS2000 / 3-degree Gauss-Kruger CM …E" in the EPSG registry.

Input and output may also be in the two offset systems of Chinese consumer maps, which no EPSG
code describes:

* ``gcj02`` (GCJ-02, "Mars coordinates"): Amap/Gaode, Tencent, Apple and Google maps inside
  China. WGS84 plus a published, deterministic offset of 100–700 m (Krasovsky ellipsoid
  constants, a sum of sines of the position).
* ``bd09`` (BD-09): Baidu maps. GCJ-02 with a further rotation and shift.

The forward offsets are closed formulas. Their inverses are not: :func:`gcj02_to_wgs84` and
:func:`bd09_to_wgs84` solve ``forward(w) = g`` by fixed-point iteration
``w ← w − (forward(w) − g)``, starting at ``w = g``. The offset's derivative is below 1e-4 of
the identity, so each step shrinks the error by about 10⁴: three steps reach 1e-9° (0.1 mm);
the loop stops there or after ``max_iter``. The same formulas and the same iteration as PyPI
``prcoords`` (public domain; its ``gcj_wgs_bored``), written over numpy arrays because imports
convert a million points at once; the tests check the two agree.
Outside China's bounding box (lon 72.004–137.8347, lat 0.8293–55.8271, as prcoords) the offset
is zero, as the consumer maps do.
"""
from __future__ import annotations

import functools
import math

import numpy as np

STORAGE = "EPSG:4326"
#: the offset systems, by every spelling accepted → canonical name
OFFSET_NAMES = {"gcj02": "gcj02", "gcj-02": "gcj02", "gcj": "gcj02", "bd09": "bd09", "bd-09": "bd09",
                "bd09ll": "bd09", "bd": "bd09"}
#: what an export may be written in (any EPSG code is accepted too)
EXPORT_CHOICES = ("EPSG:4326", "EPSG:4490", "gcj02", "bd09")
_SAME_AS_STORAGE = (4326, 4490)      # CGCS2000 agrees with WGS84 within centimetres at grid scale

_A = 6378245.0                       # Krasovsky 1940 semi-major axis, as the GCJ-02 formulas use
_EE = 0.00669342162296594323         # its first eccentricity squared
_X_PI = math.pi * 3000.0 / 180.0


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
    naming the value otherwise. The offset systems (``gcj02``, ``bd09``) have no pyproj CRS:
    use :func:`canonical` first."""
    import pyproj

    from gisgrid.errors import InvalidInput

    try:
        return pyproj.CRS.from_user_input(crs)
    except (pyproj.exceptions.CRSError, TypeError) as e:
        raise InvalidInput(f"unknown CRS {crs!r}: give an EPSG code such as EPSG:4326 or EPSG:4490, "
                           "or gcj02 / bd09", field="crs") from e


def canonical(crs) -> str:
    """The one spelling gisgrid stores and compares: ``"gcj02"``, ``"bd09"`` or ``"EPSG:n"``.

    Parameters
    ----------
    crs : str, int or pyproj.CRS
        ``"gcj02"``/``"GCJ-02"``, ``"bd09"``/``"BD-09"``, ``4490``, ``"EPSG:4547"``, a WKT or a
        PROJ string with an EPSG equivalent.

    Raises
    ------
    InvalidInput
        Unknown, or a CRS with no EPSG code (field ``crs``).

    >>> canonical("GCJ-02"), canonical(4490)
    ('gcj02', 'EPSG:4490')
    """
    if isinstance(crs, (str, int)):
        return _canonical_name(crs)     # every report names its CRS: pyproj's lookup once per spelling
    return _canonical(crs)


@functools.lru_cache(maxsize=256)
def _canonical_name(crs: str | int) -> str:
    return _canonical(crs)


def _canonical(crs) -> str:
    from gisgrid.errors import InvalidInput

    if isinstance(crs, str) and crs.strip().lower() in OFFSET_NAMES:
        return OFFSET_NAMES[crs.strip().lower()]
    code = parse(crs).to_epsg()
    if code is None:
        raise InvalidInput(f"CRS {str(crs)[:80]!r} has no EPSG code; give one such as EPSG:4490 or EPSG:4547",
                           field="crs")
    return f"EPSG:{code}"


# -- GCJ-02 / BD-09 ---------------------------------------------------------------------------
def in_china(lon, lat):
    """Whether each point lies in the box where GCJ-02 applies an offset (prcoords' box)."""
    lon, lat = np.asarray(lon, dtype=float), np.asarray(lat, dtype=float)
    return (lon >= 72.004) & (lon <= 137.8347) & (lat >= 0.8293) & (lat <= 55.8271)


def _offset(lon, lat):
    x, y = lon - 105.0, lat - 35.0
    common = (20.0 * np.sin(6.0 * x * np.pi) + 20.0 * np.sin(2.0 * x * np.pi)) * 2.0 / 3.0
    dlat = (-100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * np.sqrt(np.abs(x)) + common
            + (20.0 * np.sin(y * np.pi) + 40.0 * np.sin(y / 3.0 * np.pi)) * 2.0 / 3.0
            + (160.0 * np.sin(y / 12.0 * np.pi) + 320 * np.sin(y * np.pi / 30.0)) * 2.0 / 3.0)
    dlon = (300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * np.sqrt(np.abs(x)) + common
            + (20.0 * np.sin(x * np.pi) + 40.0 * np.sin(x / 3.0 * np.pi)) * 2.0 / 3.0
            + (150.0 * np.sin(x / 12.0 * np.pi) + 300.0 * np.sin(x / 30.0 * np.pi)) * 2.0 / 3.0)
    radlat = lat / 180.0 * np.pi
    magic = 1 - _EE * np.sin(radlat) ** 2
    sqrtmagic = np.sqrt(magic)
    dlat = (dlat * 180.0) / ((_A * (1 - _EE)) / (magic * sqrtmagic) * np.pi)
    dlon = (dlon * 180.0) / (_A / sqrtmagic * np.cos(radlat) * np.pi)
    inside = in_china(lon, lat)
    return np.where(inside, dlon, 0.0), np.where(inside, dlat, 0.0)


def wgs84_to_gcj02(lon, lat):
    """GCJ-02 lon/lat arrays from WGS84 ones (no change outside China)."""
    lon, lat = np.asarray(lon, dtype=float), np.asarray(lat, dtype=float)
    dlon, dlat = _offset(lon, lat)
    return lon + dlon, lat + dlat


def gcj02_to_bd09(lon, lat):
    lon, lat = np.asarray(lon, dtype=float), np.asarray(lat, dtype=float)
    z = np.hypot(lon, lat) + 0.00002 * np.sin(lat * _X_PI)
    theta = np.arctan2(lat, lon) + 0.000003 * np.cos(lon * _X_PI)
    return z * np.cos(theta) + 0.0065, z * np.sin(theta) + 0.006


def wgs84_to_bd09(lon, lat):
    return gcj02_to_bd09(*wgs84_to_gcj02(lon, lat))


def _invert(forward, lon, lat, tol: float, max_iter: int):
    lon, lat = np.asarray(lon, dtype=float), np.asarray(lat, dtype=float)
    wlon, wlat = lon.copy(), lat.copy()
    for _ in range(max_iter):
        flon, flat = forward(wlon, wlat)
        elon, elat = flon - lon, flat - lat
        wlon, wlat = wlon - elon, wlat - elat
        if not elon.size or max(np.nanmax(np.abs(elon)), np.nanmax(np.abs(elat))) < tol:
            break
    return wlon, wlat


def gcj02_to_wgs84(lon, lat, *, tol: float = 1e-10, max_iter: int = 20):
    """WGS84 lon/lat arrays from GCJ-02 ones by fixed-point iteration (see the module doc):
    ``forward(result)`` is within ``tol`` degrees of the input."""
    return _invert(wgs84_to_gcj02, lon, lat, tol, max_iter)


def bd09_to_wgs84(lon, lat, *, tol: float = 1e-10, max_iter: int = 20):
    """WGS84 lon/lat arrays from BD-09 ones by the same fixed-point iteration."""
    return _invert(wgs84_to_bd09, lon, lat, tol, max_iter)


_TO_WGS = {"gcj02": gcj02_to_wgs84, "bd09": bd09_to_wgs84}
_FROM_WGS = {"gcj02": wgs84_to_gcj02, "bd09": wgs84_to_bd09}


# -- arrays and geometries --------------------------------------------------------------------
def _xy(x, y, crs, *, inward: bool):
    name = canonical(crs)
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    offsets = _TO_WGS if inward else _FROM_WGS
    if name in offsets:
        return offsets[name](x, y)
    if int(name[5:]) in _SAME_AS_STORAGE:
        return x, y
    import pyproj

    src, dst = (name, STORAGE) if inward else (STORAGE, name)
    return pyproj.Transformer.from_crs(src, dst, always_xy=True).transform(x, y)


def xy_to_storage(x, y, crs):
    """Arrays of EPSG:4326 lon/lat from coordinates ``x, y`` in ``crs`` (any EPSG code, gcj02,
    bd09). Geographic CRSs on the CGCS2000/WGS84 datums come back unchanged."""
    return _xy(x, y, crs, inward=True)


def xy_from_storage(lon, lat, crs):
    """The inverse of :func:`xy_to_storage`: EPSG:4326 lon/lat to ``crs``."""
    return _xy(lon, lat, crs, inward=False)


def _apply(geoms, fn):
    import shapely

    return shapely.transform(geoms, lambda xy: np.column_stack(fn(xy[:, 0], xy[:, 1])))


def to_storage(geoms, crs):
    """Reproject shapely geometries (scalar or array) from ``crs`` (any EPSG code, ``gcj02``,
    ``bd09``) to EPSG:4326 lon/lat.

    Geographic CRSs on the CGCS2000/WGS84 datums (EPSG:4326, 4490) are returned unchanged: they
    agree within centimetres at grid scale.
    """
    name = canonical(crs)
    if name.startswith("EPSG:") and int(name[5:]) in _SAME_AS_STORAGE:
        return geoms
    return _apply(geoms, lambda x, y: xy_to_storage(x, y, name))


def from_storage(geoms, crs):
    """Shapely geometries in EPSG:4326 reprojected to ``crs`` (for exports)."""
    name = canonical(crs)
    if name.startswith("EPSG:") and int(name[5:]) in _SAME_AS_STORAGE:
        return geoms
    return _apply(geoms, lambda x, y: xy_from_storage(x, y, name))


def point_to_storage(x, y, crs="EPSG:4326"):
    """A lon/lat point in EPSG:4326 from coordinates ``x, y`` given in ``crs`` (metres for a
    projected CRS; ``gcj02`` and ``bd09`` in degrees). Numbers are checked before, ranges after
    the transformation.

    Raises InvalidGeometry (not numbers, not finite, outside lon/lat after transformation) or
    InvalidInput (unknown CRS).
    """
    from shapely.geometry import Point

    return Point(*lonlat_to_storage(x, y, crs))


def lonlat_to_storage(x, y, crs="EPSG:4326") -> tuple[float, float]:
    """:func:`point_to_storage` as the two floats (lon, lat), with the same checks."""
    from gisgrid.errors import InvalidGeometry
    from gisgrid.spatial.geometry import lonlat

    name = canonical(crs)
    if name.startswith("EPSG:") and int(name[5:]) in _SAME_AS_STORAGE:
        return lonlat(x, y)
    try:
        fx, fy = float(x), float(y)
    except (TypeError, ValueError):
        raise InvalidGeometry(f"lon/lat must be numbers, got {x!r}, {y!r}", field="lon/lat") from None
    if not (math.isfinite(fx) and math.isfinite(fy)):
        raise InvalidGeometry(f"lon/lat must be finite, got {x!r}, {y!r}", field="lon/lat")
    if name in _TO_WGS:
        lonlat(fx, fy)         # degrees: range-check before the offset
    tx, ty = (float(v) for v in xy_to_storage(fx, fy, name))
    if not (math.isfinite(tx) and math.isfinite(ty)):
        raise InvalidGeometry(f"({fx}, {fy}) in {crs} has no position in lon/lat", field="lon/lat")
    return lonlat(tx, ty)
