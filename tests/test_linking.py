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
                                          f"FROM {table} NATURAL LEFT JOIN {table}_link ORDER BY code"))}


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
    session.execute(text("DELETE FROM incident_link"))
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


def test_deleting_a_record_deletes_its_link(two_grids):
    session = two_grids
    writes.add(session, "incident", [{"code": "E1", "category": "noise", "geometry": Point(114.005, 30.005)},
                                     {"code": "E2", "category": "noise", "geometry": Point(114.015, 30.005)}])
    session.execute(text("DELETE FROM incident WHERE code = 'E1'"))
    assert session.execute(text("SELECT count(*) FROM incident_link")).scalar() == 1
    assert links(session, "incident") == {"E2": (G2, COMMUNITY, STREET, DISTRICT)}


@pytest.fixture
def linked_db(db_url, request):
    """A database of its own with the two grids committed (for tests that need two connections)."""
    from sqlalchemy.orm import Session

    from conftest import G1 as G1_GEOM, G2 as G2_GEOM, create_database
    from gisgrid.db import migrate
    from gisgrid.db.engine import make_engine

    eng = make_engine(create_database(db_url, f"gisgrid_{request.node.name[:40]}"))
    try:
        migrate.upgrade(eng)
        community = box(114.00, 30.00, 114.02, 30.01)
        with Session(eng) as s, s.begin():
            for code, name, geom in ((DISTRICT, "测试区", box(113.99, 29.99, 114.03, 30.02)),
                                     (STREET, "测试街道", community), (COMMUNITY, "测试社区", community)):
                writes.add(s, "admin_area", [{"code": code, "name": name, "geometry": geom}])
            writes.add(s, "grid", [{"code": G1, "name": "一网格", "geometry": G1_GEOM},
                                   {"code": G2, "name": "二网格", "geometry": G2_GEOM}])
            writes.add(s, "incident", [{"code": f"E{i}", "category": "noise",
                                        "geometry": Point(114.0005 + i * 0.0013, 30.005)} for i in range(15)])
        yield eng
    finally:
        eng.dispose()


def test_a_rebuilt_link_table_is_the_migrated_one(linked_db):
    """The swap keeps the table's name, primary key and index names: no drift after a re-link."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy.orm import Session

    from gisgrid.db.base import Base
    from gisgrid.db.migrations_support import include_object

    with linked_db.connect() as c:
        before = c.execute(text("SELECT indexname FROM pg_indexes WHERE tablename = 'incident_link' ORDER BY 1")).scalars().all()
    with Session(linked_db) as s, s.begin():
        s.execute(text("UPDATE incident_link SET grid_code = NULL WHERE id % 2 = 0"))
        assert linking.relink(s)["incident"] == 7
    with linked_db.connect() as c:
        after = c.execute(text("SELECT indexname FROM pg_indexes WHERE tablename = 'incident_link' ORDER BY 1")).scalars().all()
        assert after == before == ["ix_incident_link_area", "ix_incident_link_unlinked", "pk_incident_link"]
        assert c.execute(text("SELECT count(*) FROM pg_tables WHERE tablename LIKE '%link_new'")).scalar() == 0
        ctx = MigrationContext.configure(c, opts={"include_object": include_object, "compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []
        assert c.execute(text("SELECT count(*) FROM incident_link WHERE grid_code IS NULL")).scalar() == 0


def test_a_record_written_during_a_rebuild_is_linked_in_the_new_table(linked_db):
    """``link_ids`` waits while ``relink`` rebuilds its layer, then writes into the rebuilt table:
    nothing written meanwhile is lost."""
    import threading

    from sqlalchemy.orm import Session

    done = threading.Event()
    errors = []

    from gisgrid.layers import incidents

    field_report = {}
    done2 = threading.Event()

    def add():
        try:
            with Session(linked_db) as s, s.begin():
                writes.add(s, "incident", [{"code": "LATE", "category": "noise", "geometry": Point(114.015, 30.006)}])
        except Exception as e:     # pragma: no cover - surfaced by the assertion below
            errors.append(e)
        finally:
            done.set()

    def report():                  # the field report path: one statement writes incident and link
        try:
            with Session(linked_db) as s, s.begin():
                field_report.update(incidents.report(s, "t", category="noise", lon=114.005, lat=30.006)[0])
        except Exception as e:     # pragma: no cover - surfaced by the assertion below
            errors.append(e)
        finally:
            done2.set()

    rebuild = Session(linked_db)
    rebuild.begin()
    linking.relink(rebuild, ("incident",))      # swapped inside this open transaction, not committed
    writers = [threading.Thread(target=add), threading.Thread(target=report)]
    for w in writers:
        w.start()
    assert not done.wait(1.5) and not done2.is_set(), "the writers did not wait for the rebuild"
    rebuild.commit()
    rebuild.close()
    assert done.wait(30) and done2.wait(30) and not errors, errors
    for w in writers:
        w.join()
    with linked_db.connect() as c:
        row = c.execute(text("SELECT grid_code FROM incident NATURAL LEFT JOIN incident_link WHERE code = 'LATE'")).one()
        assert row.grid_code == G2
        assert field_report["grid_code"] == G1
        assert c.execute(text("SELECT count(*) FROM incident NATURAL JOIN incident_link")).scalar() == 17
