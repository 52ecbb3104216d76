"""GCJ-02 / BD-09 offsets and CRS names (pure math, no database).

The vectorised formulas in gisgrid.spatial.crs are checked against PyPI ``prcoords`` (the public
domain reference, scalar), and the iterative inverses by a round trip over China.
"""
from __future__ import annotations

import math

import numpy as np
import prcoords
import pytest
from hypothesis import given, settings, strategies as st

from gisgrid.errors import InvalidGeometry, InvalidInput
from gisgrid.spatial import crs

# lon/lat inside mainland China's box (where the offset applies)
china_lon = st.floats(min_value=73.7, max_value=134.7, allow_nan=False)
china_lat = st.floats(min_value=18.2, max_value=53.5, allow_nan=False)


def metres(lon1, lat1, lon2, lat2) -> float:
    k = math.pi / 180
    dx = (lon2 - lon1) * k * 6371008.8 * math.cos(lat1 * k)
    dy = (lat2 - lat1) * k * 6371008.8
    return math.hypot(dx, dy)


@settings(max_examples=300, deadline=None)
@given(china_lon, china_lat)
def test_wgs_gcj_wgs_round_trip_within_half_a_metre(lon, lat):
    glon, glat = crs.wgs84_to_gcj02(lon, lat)
    wlon, wlat = crs.gcj02_to_wgs84(glon, glat)
    assert metres(lon, lat, float(wlon), float(wlat)) < 0.5
    blon, blat = crs.wgs84_to_bd09(lon, lat)
    wlon, wlat = crs.bd09_to_wgs84(blon, blat)
    assert metres(lon, lat, float(wlon), float(wlat)) < 0.5


@settings(max_examples=200, deadline=None)
@given(china_lon, china_lat)
def test_forward_offsets_agree_with_prcoords(lon, lat):
    g = prcoords.wgs_gcj(prcoords.Coords(lat, lon))
    b = prcoords.wgs_bd(prcoords.Coords(lat, lon))
    glon, glat = crs.wgs84_to_gcj02(lon, lat)
    blon, blat = crs.wgs84_to_bd09(lon, lat)
    assert metres(g.lon, g.lat, float(glon), float(glat)) < 1e-3
    assert metres(b.lon, b.lat, float(blon), float(blat)) < 1e-3


@pytest.mark.parametrize("lon, lat", [(114.27, 30.58), (116.397, 39.909), (121.47, 31.23), (87.6, 43.8)])
def test_offsets_are_hundreds_of_metres_and_inverses_match_prcoords(lon, lat):
    glon, glat = crs.wgs84_to_gcj02(lon, lat)
    assert 100 < metres(lon, lat, float(glon), float(glat)) < 800
    ref = prcoords.gcj_wgs_bored(prcoords.Coords(float(glat), float(glon)))
    wlon, wlat = crs.gcj02_to_wgs84(glon, glat)
    assert metres(ref.lon, ref.lat, float(wlon), float(wlat)) < 0.01


def test_arrays_convert_at_once_and_outside_china_nothing_moves():
    lon = np.array([114.27, 2.35, 116.4])
    lat = np.array([30.58, 48.85, 39.9])
    glon, glat = crs.wgs84_to_gcj02(lon, lat)
    assert (glon[1], glat[1]) == (2.35, 48.85)            # Paris: no offset
    assert glon[0] != 114.27 and glon[2] != 116.4
    wlon, wlat = crs.gcj02_to_wgs84(glon, glat)
    assert np.allclose(wlon, lon, atol=1e-8) and np.allclose(wlat, lat, atol=1e-8)


@pytest.mark.parametrize("given_, expected", [("gcj02", "gcj02"), ("GCJ-02", "gcj02"), ("bd09", "bd09"),
                                              ("BD-09", "bd09"), ("EPSG:4490", "EPSG:4490"), (4326, "EPSG:4326"),
                                              ("epsg:4547", "EPSG:4547")])
def test_canonical_names(given_, expected):
    assert crs.canonical(given_) == expected


@pytest.mark.parametrize("bad", ["wgs-something", "EPSG:99999999", ""])
def test_unknown_crs_is_named(bad):
    with pytest.raises(InvalidInput, match="unknown CRS"):
        crs.canonical(bad)


def test_gauss_kruger_zone_point_comes_back_to_lon_lat():
    # CGCS2000 / 3-degree Gauss-Krüger CM 114E: a point in Wuhan in metres
    import pyproj

    x, y = pyproj.Transformer.from_crs("EPSG:4490", "EPSG:4547", always_xy=True).transform(114.27, 30.58)
    p = crs.point_to_storage(x, y, "EPSG:4547")
    assert metres(114.27, 30.58, p.x, p.y) < 0.01


def test_point_to_storage_converts_gcj02_and_bd09():
    glon, glat = (float(v) for v in crs.wgs84_to_gcj02(114.27, 30.58))
    p = crs.point_to_storage(glon, glat, "gcj02")
    assert metres(114.27, 30.58, p.x, p.y) < 0.01
    blon, blat = (float(v) for v in crs.wgs84_to_bd09(114.27, 30.58))
    p = crs.point_to_storage(blon, blat, "bd09")
    assert metres(114.27, 30.58, p.x, p.y) < 0.01
    with pytest.raises(InvalidGeometry, match="latitude"):
        crs.point_to_storage(30.58, 114.27 + 100, "gcj02")


def test_geometries_round_trip_through_export_crs():
    from shapely.geometry import box

    g = box(114.26, 30.57, 114.28, 30.59)
    for target in crs.EXPORT_CHOICES + ("EPSG:4547",):
        back = crs.to_storage(crs.from_storage(g, target), target)
        assert back.equals_exact(g, 1e-8), target
