"""Pure geometry, no database: table-driven."""
from __future__ import annotations

import numpy as np
import pytest
import shapely
from shapely.geometry import LineString, MultiPolygon, Point, Polygon, box

from gisgrid.errors import InvalidGeometry, InvalidInput
from gisgrid.generate import id_numbers
from gisgrid.spatial import crs, synth
from gisgrid.spatial.geometry import check, from_geojson, point

BOWTIE = Polygon([(114.0, 30.0), (114.01, 30.01), (114.01, 30.0), (114.0, 30.01)])


@pytest.mark.parametrize("geom, allowed, match", [
    (None, ("Point",), "missing"),
    (Point(), ("Point",), "empty"),
    (BOWTIE, ("MultiPolygon",), "Self-intersection"),
    (Point(114, 30), ("MultiPolygon",), "type Point not allowed"),
    (box(500000, 3300000, 500100, 3300100), ("MultiPolygon",), "outside lon/lat range"),
    (Point(float("nan"), 30), ("Point",), "NaN"),
    ("POINT (1 2)", ("Point",), "expected a geometry"),
])
def test_check_refuses_with_reason(geom, allowed, match):
    with pytest.raises(InvalidGeometry, match=match):
        check(geom, allowed, record="grid #1 X")


def test_check_promotes_single_to_multi():
    g = check(box(114, 30, 114.01, 30.01), ("MultiPolygon",))
    assert isinstance(g, MultiPolygon)
    assert check(LineString([(114, 30), (114.1, 30.1)]), ("MultiLineString",)).geom_type == "MultiLineString"


def test_error_names_record_and_field():
    with pytest.raises(InvalidGeometry) as e:
        check(BOWTIE, ("MultiPolygon",), record="grid #3 420103001001003")
    assert str(e.value).startswith("[grid #3 420103001001003] geometry: invalid geometry: Self-intersection")


@pytest.mark.parametrize("lon, lat, match", [
    ("x", 30, "must be numbers"), (None, 30, "must be numbers"), (181, 30, "longitude"),
    (114, -91, "latitude"), (float("inf"), 30, "finite"),
])
def test_point_refuses(lon, lat, match):
    with pytest.raises(InvalidGeometry, match=match):
        point(lon, lat)


@pytest.mark.parametrize("obj, match", [
    ([1, 2], "expected a GeoJSON geometry"),
    ({"type": "Polygon", "coordinates": [[1, 2]]}, "malformed GeoJSON"),
    ({"type": "Blob", "coordinates": []}, "malformed GeoJSON"),
])
def test_from_geojson_refuses(obj, match):
    with pytest.raises(InvalidGeometry, match=match):
        from_geojson(obj)


@pytest.mark.parametrize("lon, epsg", [(114.27, "EPSG:4547"), (75.0, "EPSG:4534"), (121.5, "EPSG:4549"),
                                       (135.0, "EPSG:4554"), (60.0, "EPSG:4534")])
def test_gk_zone(lon, epsg):
    assert crs.gk_zone_for(lon) == epsg


def test_unknown_crs_is_named():
    with pytest.raises(InvalidInput, match="unknown CRS 'EPSG:99999'"):
        crs.parse("EPSG:99999")


def test_to_storage_reprojects_web_mercator():
    # 114.27°E on the Web Mercator equator: x = lon × 20037508.3428 / 180; y for 30.6°N from the
    # spherical formula R·ln(tan(π/4 + φ/2))
    import math
    x = 114.27 * 20037508.342789244 / 180
    y = 6378137 * math.log(math.tan(math.pi / 4 + math.radians(30.6) / 2))
    g = crs.to_storage(Point(x, y), "EPSG:3857")
    assert g.x == pytest.approx(114.27, abs=1e-9) and g.y == pytest.approx(30.6, abs=1e-9)


def test_lattice_cells_form_an_exact_coverage():
    rng = np.random.default_rng(1)
    vx, vy = synth.jittered_lattice(0, 0, 6, 5, 200, 0.2, rng)
    ii, jj = np.divmod(np.arange(30), 6)
    cells = synth.cell_polygons(vx, vy, ii, jj)
    assert shapely.coverage_is_valid(cells)
    assert shapely.area(shapely.coverage_union_all(cells)) == pytest.approx(shapely.area(cells).sum())


@pytest.mark.parametrize("sizes", [[10, 10, 10], [1, 29], [5] * 6])
def test_kd_partition_gives_exact_sizes_and_contiguous_parts(sizes):
    ii, jj = np.divmod(np.arange(30), 6)
    rng = np.random.default_rng(2)
    vx, vy = synth.jittered_lattice(0, 0, 6, 5, 200, 0.1, rng)
    cells = synth.cell_polygons(vx, vy, ii, jj)
    labels = synth.kd_partition(np.column_stack([jj, ii]).astype(float), sizes)
    assert np.bincount(labels).tolist() == sizes
    for k in range(len(sizes)):
        assert shapely.coverage_union_all(cells[labels == k]).geom_type == "Polygon"


def test_kd_partition_refuses_wrong_total():
    with pytest.raises(ValueError, match="sum to 5 but there are 4"):
        synth.kd_partition(np.zeros((4, 2)), [2, 3])


def test_inner_rectangle_stays_inside():
    inside = np.zeros((10, 10), dtype=bool)
    inside[2:8, 1:9] = True
    r, c, h, w = synth.inner_rectangle(inside, 20, (5, 5))
    assert h * w >= 20 and inside[r:r + h, c:c + w].all()
    with pytest.raises(ValueError, match="no rectangle of 80 blocks"):
        synth.inner_rectangle(inside, 80, (5, 5))


def test_id_numbers_have_valid_check_digits():
    # 11010519491231002X is the standard's worked example
    got = id_numbers("110105", np.array(["1949-12-31"], dtype="datetime64[D]"), np.array([2]))
    assert got[0] == "11010519491231002X"


def test_projected_point_is_range_checked_after_transformation():
    from pyproj import Transformer

    x, y = Transformer.from_crs(4326, 4547, always_xy=True).transform(114.27, 30.6)
    p = crs.point_to_storage(x, y, "EPSG:4547")            # metres, far outside ±180: fine
    assert p.x == pytest.approx(114.27, abs=1e-9) and p.y == pytest.approx(30.6, abs=1e-9)
    with pytest.raises(InvalidGeometry, match="must be finite"):
        crs.point_to_storage("inf", 1, "EPSG:4547")
    with pytest.raises(InvalidGeometry, match="latitude"):
        crs.point_to_storage(114, 95, "EPSG:4490")
