"""Plan checks on hand-made geometry with known answers (metric CRS, metres; no database).

Community C is the 200 × 100 m rectangle; the good layout is two 100 × 100 m cells::

      0         100        200
  100 +----------+----------+
      |    A     |    B     |       buildings: a (50, 50) 240 households, b (150, 50) 260
    0 +----------+----------+
"""
from __future__ import annotations

import numpy as np
import pytest
import shapely
from shapely import box, LineString, Polygon, MultiPolygon

from gisgrid.spatial import coverage
from gisgrid.spatial.coverage import Layout

C = box(0, 0, 200, 100)
A, B = box(0, 0, 100, 100), box(100, 0, 200, 100)


def layout(cells, *, hh=(240, 260), roads=(), codes=None, **kw):
    codes = codes or [f"G{i + 1}" for i in range(len(cells))]
    return Layout(codes=codes, communities=["C"] * len(cells), cells=np.asarray(cells, dtype=object), areas={"C": C},
                  building_points=shapely.points([[50, 50], [150, 50]][:len(hh)]),
                  households=np.asarray(hh, dtype=np.int64), major_roads=np.asarray(roads, dtype=object),
                  target=250, tolerance=0.10, **kw)


def problems(report, name):
    return [p for p in report["problems"] if p["check"] == name]


def test_exact_coverage_passes_every_check():
    rep = coverage.check(layout([A, B]))
    assert rep["ok"] and rep["errors"] == 0 and rep["warnings"] == 0
    assert [c["households"] for c in rep["cells"]] == [240, 260]
    assert rep["cells"][0]["polsby_popper"] == pytest.approx(np.pi / 4, abs=1e-4)


def test_gap_with_its_area():
    rep = coverage.check(layout([box(0, 0, 90, 100), B]))
    (gap,) = problems(rep, "gap")
    assert gap["area_m2"] == pytest.approx(1000) and gap["severity"] == "error" and not rep["ok"]
    assert gap["geom"].equals(box(90, 0, 100, 100))


def test_overlap_with_its_area_and_both_cells():
    rep = coverage.check(layout([box(0, 0, 120, 100), B]))
    (ov,) = problems(rep, "overlap")
    assert ov["area_m2"] == pytest.approx(2000) and ov["cells"] == ["G1", "G2"]
    assert rep["counts"]["invalid_edge"] >= 1        # GEOS sees the broken coverage too


def test_outside_the_parent_community():
    rep = coverage.check(layout([box(0, 0, 100, 130), B]))
    (out,) = problems(rep, "outside")
    assert out["area_m2"] == pytest.approx(3000) and out["cells"] == ["G1"]


def test_fragmented_cell():
    two = MultiPolygon([box(0, 0, 50, 100), box(150, 0, 200, 100)])
    rep = coverage.check(layout([two, box(50, 0, 150, 100)]))
    (frag,) = problems(rep, "fragmented")
    assert frag["cells"] == ["G1"] and "2 separate polygons" in frag["message"]


def test_sliver_is_the_thin_part():
    # A with a 2 m wide, 60 m long tongue into B
    tongue = box(100, 40, 160, 42)
    rep = coverage.check(layout([shapely.union(A, tongue), B.difference(tongue)]))
    slivers = problems(rep, "sliver")
    assert [s["cells"] for s in slivers] == [["G1"]]
    assert slivers[0]["area_m2"] == pytest.approx(120, rel=0.05)


@pytest.mark.parametrize("hh, flagged, oversized", [
    ((240, 260), [], False), ((200, 260), ["G1"], False), ((240, 300), ["G2"], True), ((0, 500), ["G1", "G2"], True)])
def test_households_against_target_and_tolerance(hh, flagged, oversized):
    rep = coverage.check(layout([A, B], hh=hh))
    assert sorted(c for p in problems(rep, "households") for c in p["cells"]) == flagged
    assert any(c["oversized_building"] for c in rep["cells"]) is oversized


def test_building_on_shared_edge_counts_for_lowest_code():
    lay = layout([A, B], hh=(100,))
    lay.building_points = shapely.points([[100, 50]])
    hh, _ = coverage.households_per_cell(lay)
    assert hh.tolist() == [100, 0]


def test_polsby_popper_and_low_compactness():
    assert coverage.polsby_popper(np.array([box(0, 0, 1, 1)]))[0] == pytest.approx(np.pi / 4)
    long = [box(0, 0, 200, 5), box(0, 5, 200, 100)]
    rep = coverage.check(layout(long, hh=(240, 260)))
    assert [p["cells"] for p in problems(rep, "compactness")] == [["G1"]]


def test_major_road_through_a_cell_not_along_its_edge():
    through = LineString([(50, -10), (50, 110)])
    along = LineString([(100, -10), (100, 110)])
    rep = coverage.check(layout([A, B], roads=[through, along]))
    (cross,) = problems(rep, "road_crossing")
    assert cross["cells"] == ["G1"] and cross["length_m"] == pytest.approx(96)


def test_empty_cell():
    rep = coverage.check(layout([shapely.union(A, B), Polygon()], hh=(240,)))
    assert [p["cells"] for p in problems(rep, "empty")] == [["G2"]]
