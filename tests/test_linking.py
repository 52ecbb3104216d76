"""Linking on the 2-cell fixture: interior points, shared edges, outside points, residents."""
from __future__ import annotations

import pytest
from shapely.geometry import Point, box
from sqlalchemy import text

from gisgrid.layers import grids, linking, writes

from conftest import COMMUNITY, DISTRICT, STREET

G1, G2 = COMMUNITY + "001", COMMUNITY + "002"


def links(session, table):
    return {r.code: (r.grid_code, r.community_code, r.street_code, r.district_code)
            for r in session.execute(text(f"SELECT code, grid_code, community_code, street_code, district_code "
                                          f"FROM {table} ORDER BY code"))}


@pytest.mark.parametrize("lon, lat, expected", [
    (114.005, 30.005, G1),      # inside G1
    (114.015, 30.005, G2),      # inside G2
    (114.010, 30.005, G1),      # on the shared edge: lowest code wins
    (114.010, 30.000, G1),      # shared corner on the outer boundary
    (114.020, 30.005, G2),      # on G2's outer edge only
    (114.025, 30.005, None),    # outside every grid, inside the district
])
def test_point_lookup_and_link_agree(two_grids, lon, lat, expected):
    session = two_grids
    found = grids.grid_at(session, lon, lat)
    assert (found["code"] if found else None) == expected
    writes.add(session, "incident", [{"code": "E1", "category": "noise", "geometry": Point(lon, lat)}])
    assert links(session, "incident")["E1"][0] == expected
    # the bulk path applies the same rule
    session.execute(text("UPDATE incident SET grid_id = NULL, grid_code = NULL"))
    linking.relink(session, ("incident",))
    assert links(session, "incident")["E1"][0] == expected


def test_unlinked_point_is_kept_with_admin_codes(two_grids):
    session = two_grids
    writes.add(session, "incident", [{"code": "OUT", "category": "noise", "geometry": Point(114.025, 30.005)},
                                     {"code": "FAR", "category": "noise", "geometry": Point(100.0, 20.0)}])
    got = links(session, "incident")
    assert got["OUT"] == (None, None, None, DISTRICT)   # routed to the district centre
    assert got["FAR"] == (None, None, None, None)       # kept, nothing contains it


def test_building_links_by_point_on_surface(two_grids):
    session = two_grids
    # A footprint straddling the shared edge, mostly in G2: its point on surface decides.
    fp = box(114.0095, 30.004, 114.0130, 30.006)
    writes.add(session, "building", [{"code": "B1", "households": 12, "geometry": fp}])
    assert links(session, "building")["B1"] == (G2, COMMUNITY, STREET, DISTRICT)


def test_residents_follow_their_building_or_point(two_grids):
    session = two_grids
    writes.add(session, "building", [{"code": "B1", "households": 12, "geometry": box(114.001, 30.001, 114.002, 30.002)}])
    writes.add(session, "resident", [
        {"code": "R1", "name": "张三", "building_code": "B1"},
        {"code": "R2", "name": "李四", "geometry": Point(114.015, 30.005)},
    ])
    got = links(session, "resident")
    assert got["R1"][0] == G1 and got["R2"][0] == G2


def test_relink_after_boundary_change_moves_records_and_reports_changes(two_grids):
    session = two_grids
    writes.add(session, "building", [{"code": "B1", "households": 5, "geometry": Point(114.009, 30.005)}])
    writes.add(session, "resident", [{"code": "R1", "name": "王五", "building_code": "B1"}])
    writes.add(session, "incident", [{"code": "E1", "category": "noise", "geometry": Point(114.009, 30.005)}])
    assert linking.relink(session) == {t: 0 for t in linking.ORDER}   # nothing changed: nothing written
    # Move the shared edge west: the point now lies in G2.
    session.execute(text("UPDATE grid SET geom = ST_Multi(ST_MakeEnvelope(114.00, 30.00, 114.008, 30.01, 4326)) "
                         "WHERE code = :c"), {"c": G1})
    session.execute(text("UPDATE grid SET geom = ST_Multi(ST_MakeEnvelope(114.008, 30.00, 114.02, 30.01, 4326)) "
                         "WHERE code = :c"), {"c": G2})
    changed = linking.relink(session)
    assert changed["building"] == 1 and changed["resident"] == 1 and changed["incident"] == 1
    assert links(session, "resident")["R1"][0] == G2


def test_relink_rejects_unknown_layer(session):
    with pytest.raises(ValueError, match="not a linked layer"):
        linking.relink(session, ("grid",))
