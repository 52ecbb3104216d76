"""Plans on a real PostGIS: copy, edits with versions, undo, checks, diff, publish, rollback,
and a publish that fails half-way. Geometry of ``conftest`` (G1 | G2), plus::

    G1: building B1 (250 households), staff H1 (head), A1 (assistant)
    G2: building B2 (240 households), staff H2 (head); open incident E2 dispatched to H2
"""
from __future__ import annotations

import threading

import pytest
import shapely
from shapely.geometry import LineString, Point, box, mapping
from sqlalchemy import text

from gisgrid import authz
from gisgrid.errors import Conflict, IllegalTransition, InvalidGeometry, InvalidInput, NotFound
from gisgrid.layers import plans, writes

from conftest import COMMUNITY, STREET

ADMIN = authz.Principal("planner-test", "admin")
G1C, G2C = COMMUNITY + "001", COMMUNITY + "002"


@pytest.fixture
def world(two_grids):
    s = two_grids
    writes.add(s, "building", [{"code": "B1", "households": 250, "geometry": Point(114.005, 30.005)},
                               {"code": "B2", "households": 240, "geometry": Point(114.015, 30.005)}])
    s.execute(text("INSERT INTO staff (code, name) VALUES ('H1', '甲'), ('A1', '乙'), ('H2', '丙')"))
    s.execute(text(
        "INSERT INTO grid_assignment (staff_id, grid_id, role) SELECT s.id, g.id, r.role FROM (VALUES "
        "('H1', :g1, 'head'), ('A1', :g1, 'assistant'), ('H2', :g2, 'head')) r(staff, grid, role) "
        "JOIN staff s ON s.code = r.staff JOIN grid g ON g.code = r.grid AND g.valid_to IS NULL"),
        {"g1": G1C, "g2": G2C})
    writes.add(s, "incident", [{"code": "E2", "category": "noise", "geometry": Point(114.016, 30.006)}])
    s.execute(text("UPDATE incident SET state = 'dispatched', assignee_id = (SELECT id FROM staff WHERE code = 'H2') "
                   "WHERE code = 'E2'"))
    return s


def versions(plan):
    return {f["properties"]["code"]: f["properties"]["version"] for f in plan["cells"]}


def current_grids(s):
    return s.execute(text("SELECT code, ST_AsText(ST_Normalize(geom)) FROM grid WHERE valid_to IS NULL "
                          "ORDER BY code")).all()


def test_a_plan_starts_as_a_copy_of_the_current_grids(world):
    plan = plans.create(world, ADMIN, COMMUNITY, "二合一")
    assert plan["state"] == "draft" and plan["target"] == 250 and plan["allowed"] == ["submit", "discard"]
    assert versions(plan) == {G1C: 0, G2C: 0}
    rep = plans.check(world, ADMIN, plan["id"])
    assert rep["ok"], [f["properties"]["message"] for f in rep["features"]["features"]]
    assert [c["households"] for c in rep["cells"]] == [250, 240]


def test_scope_must_be_a_community_or_street_in_the_jurisdiction(world):
    with pytest.raises(InvalidInput, match="not a district"):
        plans.create(world, ADMIN, "420103000000")
    community_planner = authz.Principal("p", "planner", ("420103001002",))
    with pytest.raises(authz.Forbidden, match="outside your jurisdiction"):
        plans.create(world, community_planner, COMMUNITY)
    with pytest.raises(authz.Forbidden):
        plans.create(world, authz.Principal("v", "viewer", (STREET,)), COMMUNITY)
    plan = plans.create(world, ADMIN, STREET)
    with pytest.raises(NotFound):
        plans.get(world, community_planner, plan["id"])


def test_split_merge_replace_reshape_with_versions_and_checks(world):
    plan = plans.create(world, ADMIN, COMMUNITY)
    pid = plan["id"]
    cut = mapping(LineString([(114.005, 29.99), (114.005, 30.02)]))
    out = plans.edit(world, ADMIN, pid, "split", {"code": G1C, "line": cut, "versions": {G1C: 0}})
    assert sorted(versions(out)) == [G1C, G2C, COMMUNITY + "003"] and out["seq"] == 1
    assert versions(out)[G1C] == 1 and versions(out)[G2C] == 0
    assert out["check"]["ok"]                       # still an exact coverage
    # a stale version is a conflict that names the cell
    with pytest.raises(Conflict, match=f"cell {G1C} is at version 1"):
        plans.edit(world, ADMIN, pid, "merge", {"codes": [G1C, COMMUNITY + "003"], "versions": {G1C: 0,
                                                                                               COMMUNITY + "003": 1}})
    out = plans.edit(world, ADMIN, pid, "merge", {"codes": [G1C, COMMUNITY + "003"],
                                                  "versions": {G1C: 1, COMMUNITY + "003": 1}})
    assert sorted(versions(out)) == [G1C, G2C]
    # replace leaves a gap that the check reports with its area
    shrunk = mapping(box(114.00, 30.00, 114.009, 30.01))
    out = plans.edit(world, ADMIN, pid, "replace", {"code": G1C, "geometry": shrunk, "versions": versions(out)})
    gaps = [f for f in out["check"]["features"]["features"] if f["properties"]["check"] == "gap"]
    assert len(gaps) == 1 and gaps[0]["properties"]["area_m2"] == pytest.approx(96.1 * 1108, rel=0.02)
    assert gaps[0]["geometry"]["type"] == "Polygon" and not out["check"]["ok"]
    # reshape: G1 grows into G2, G2 loses what G1 took, the coverage is exact again
    grown = mapping(box(114.00, 30.00, 114.012, 30.01))
    out = plans.edit(world, ADMIN, pid, "reshape", {"code": G1C, "geometry": grown, "versions": versions(out)})
    assert out["check"]["ok"]
    cells = {f["properties"]["code"]: shapely.geometry.shape(f["geometry"]) for f in out["cells"]}
    assert cells[G2C].area == pytest.approx(box(114.012, 30.0, 114.02, 30.01).area, rel=1e-6)
    with pytest.raises(InvalidInput, match="versions must give the version of cell"):
        plans.edit(world, ADMIN, pid, "reshape", {"code": G1C, "geometry": mapping(box(114.00, 30.00, 114.015, 30.01)),
                                                  "versions": {G1C: out["seq"]}})


@pytest.mark.parametrize("op, body, error, match", [
    ("split", {"code": G1C, "line": mapping(LineString([(114.1, 30.1), (114.2, 30.2)]))}, InvalidGeometry,
     "does not cut"),
    ("merge", {"codes": [G1C]}, InvalidInput, "two or more"),
    ("replace", {"code": G1C, "geometry": {"type": "Point", "coordinates": [114, 30]}}, InvalidGeometry, "Polygon"),
    ("replace", {"code": "nope"}, NotFound, "no cell"),
    ("explode", {}, InvalidInput, "op must be"),
])
def test_bad_edits_are_refused_and_change_nothing(world, op, body, error, match):
    plan = plans.create(world, ADMIN, COMMUNITY)
    body.setdefault("versions", {G1C: 0, G2C: 0})
    with pytest.raises(error, match=match):
        plans.edit(world, ADMIN, plan["id"], op, body)
    assert versions(plans.get(world, ADMIN, plan["id"])) == {G1C: 0, G2C: 0}


def test_undo_in_order(world):
    plan = plans.create(world, ADMIN, COMMUNITY)
    pid = plan["id"]
    before = plans.get(world, ADMIN, pid)["cells"]
    out = plans.edit(world, ADMIN, pid, "merge", {"codes": [G1C, G2C], "versions": {G1C: 0, G2C: 0}})
    out = plans.edit(world, ADMIN, pid, "split", {"code": G1C, "versions": versions(out),
                                                  "line": mapping(LineString([(114.01, 29.9), (114.01, 30.1)]))})
    assert len(out["cells"]) == 2
    undone = plans.undo(world, ADMIN, pid)
    assert undone["undone"]["op"] == "split" and len(undone["cells"]) == 1
    undone = plans.undo(world, ADMIN, pid)
    assert undone["undone"]["op"] == "merge"
    after = undone["cells"]
    assert [shapely.geometry.shape(f["geometry"]).equals(shapely.geometry.shape(g["geometry"]))
            for f, g in zip(before, after)] == [True, True]
    assert all(f["properties"]["version"] == undone["seq"] for f in after)   # versions never repeat
    with pytest.raises(Conflict, match="no edit to undo"):
        plans.undo(world, ADMIN, pid)
    assert [e["undone_by"] for e in plans.get(world, ADMIN, pid)["edits"]] == ["planner-test"] * 2


def test_state_machine(world):
    pid = plans.create(world, ADMIN, COMMUNITY)["id"]
    with pytest.raises(IllegalTransition, match="allowed: submit, discard"):
        plans.publish(world, ADMIN, pid)
    assert plans.transition(world, ADMIN, pid, "submit")["state"] == "review"
    with pytest.raises(IllegalTransition, match="only a draft can be edited"):
        plans.edit(world, ADMIN, pid, "merge", {"codes": [G1C, G2C], "versions": {G1C: 0, G2C: 0}})
    assert plans.transition(world, ADMIN, pid, "reopen")["state"] == "draft"
    assert plans.transition(world, ADMIN, pid, "discard")["state"] == "discarded"
    with pytest.raises(IllegalTransition):
        plans.transition(world, ADMIN, pid, "submit")


def _merged_plan(s):
    pid = plans.create(s, ADMIN, COMMUNITY)["id"]
    plans.edit(s, ADMIN, pid, "merge", {"codes": [G1C, G2C], "versions": {G1C: 0, G2C: 0}})
    plans.transition(s, ADMIN, pid, "submit")
    return pid


def test_diff_names_what_changes_grid(world):
    d = plans.diff(world, ADMIN, _merged_plan(world))
    assert d["layers"]["building"]["count"] == 240 and d["layers"]["building"]["by_old"] == {G2C: 240}
    assert d["layers"]["open_incident"]["records"] == 1 and d["layers"]["open_incident"]["by_new"] == {G1C: 1}
    assert d["staff_assignments"] == {"kept": 2, "ended": 1, "kept_by_grid": [
        {"grid": G1C, "role": "assistant", "n": 1}, {"grid": G1C, "role": "head", "n": 1}],
        "ended_by_grid": [{"grid": G2C, "role": "head", "n": 1}]}
    assert d["grids"]["dropped_codes"] == [G2C]
    assert {f["properties"]["code"] for f in d["changed_areas"]["features"]} == {G1C, G2C}


def test_publish_relinks_carries_staff_and_hands_over_incidents_then_rollback(world):
    s = world
    before = current_grids(s)
    pid = _merged_plan(s)
    out = plans.publish(s, ADMIN, pid)
    assert out["grids"] == 1 and out["retired"] == 2 and out["staff_carried"] == 2 and out["staff_ended"] == 1
    assert out["incidents_handed_over"] == 1
    assert [c for c, _ in current_grids(s)] == [G1C]
    assert s.execute(text("SELECT count(*) FROM grid WHERE valid_to IS NOT NULL")).scalar() == 2  # history kept
    assert s.execute(text("SELECT l.grid_code FROM building b JOIN building_link l ON l.id = b.id WHERE b.code = 'B2'")).scalar() == G1C
    assert s.execute(text("SELECT s.code FROM incident i JOIN staff s ON s.id = i.assignee_id "
                          "WHERE i.code = 'E2'")).scalar() == "H1"
    assert s.execute(text("SELECT note FROM incident_event e JOIN incident i ON i.id = e.incident_id "
                          "WHERE i.code = 'E2' ORDER BY e.id DESC LIMIT 1")).scalar().startswith("[regrid]")
    heads = s.execute(text("SELECT s.code FROM grid_assignment a JOIN staff s ON s.id = a.staff_id JOIN grid g "
                           "ON g.id = a.grid_id WHERE a.valid_to IS NULL AND g.valid_to IS NULL ORDER BY 1")).scalars()
    assert list(heads) == ["A1", "H1"]
    with pytest.raises(IllegalTransition):
        plans.publish(s, ADMIN, pid)
    back = plans.rollback(s, ADMIN, pid)
    assert back["state"] == "rolled_back" and back["grids"] == 2
    assert current_grids(s) == before
    assert s.execute(text("SELECT l.grid_code FROM building b JOIN building_link l ON l.id = b.id WHERE b.code = 'B2'")).scalar() == G2C


def test_publish_refuses_errors_and_stale_bases(world):
    s = world
    pid = plans.create(s, ADMIN, COMMUNITY)["id"]
    plans.edit(s, ADMIN, pid, "replace", {"code": G1C, "geometry": mapping(box(114.0, 30.0, 114.009, 30.01)),
                                          "versions": {G1C: 0}})
    plans.transition(s, ADMIN, pid, "submit")
    with pytest.raises(Conflict, match="fails 1 check.*gap of"):
        plans.publish(s, ADMIN, pid)
    other = _merged_plan(s)
    third = plans.create(s, ADMIN, COMMUNITY)["id"]
    plans.transition(s, ADMIN, third, "submit")
    plans.publish(s, ADMIN, other)
    with pytest.raises(Conflict, match="changed since plan"):
        plans.publish(s, ADMIN, third)


def test_a_publish_that_fails_half_way_changes_nothing(world):
    """The database refuses the staff carry-over (a trigger), after the grids were retired and
    the new ones inserted: the transaction rolls back whole."""
    s = world
    pid = _merged_plan(s)
    grids_before = current_grids(s)
    links_before = s.execute(text("SELECT b.code, l.grid_id FROM building b LEFT JOIN building_link l ON l.id = b.id ORDER BY b.code")).all()
    s.execute(text("CREATE FUNCTION pg_temp.refuse() RETURNS trigger LANGUAGE plpgsql AS "
                   "$$ BEGIN RAISE EXCEPTION 'disk full (test)'; END $$"))
    s.execute(text("CREATE TRIGGER refuse BEFORE INSERT ON grid_assignment FOR EACH ROW "
                   "EXECUTE FUNCTION pg_temp.refuse()"))
    from sqlalchemy.exc import DBAPIError
    with pytest.raises(DBAPIError, match="disk full"):
        with s.begin_nested():
            plans.publish(s, ADMIN, pid)
    assert current_grids(s) == grids_before
    assert s.execute(text("SELECT b.code, l.grid_id FROM building b LEFT JOIN building_link l ON l.id = b.id ORDER BY b.code")).all() == links_before
    assert s.execute(text("SELECT state FROM grid_plan WHERE id = :p"), {"p": pid}).scalar() == "review"


def test_propose_in_the_plan_keeps_codes_and_names_exceptions(world):
    s = world
    writes.add(s, "building", [{"code": "B3", "households": 900, "geometry": Point(114.018, 30.008)}])
    pid = plans.create(s, ADMIN, COMMUNITY)["id"]
    out = plans.propose(s, ADMIN, pid, keep_current=True)
    prop = out["proposal"]
    assert prop["parts"] == 3 and prop["households"] == 1390
    assert [e["reason"] for e in prop["exceptions"]] == ["oversized_building"]
    assert {G1C, G2C} <= set(versions(out))
    assert out["check"]["counts"]["gap"] == 0 and out["check"]["counts"]["overlap"] == 0
    # the estate stays in G2 (it lies there today), B2's 240 households get a new grid
    assert prop["households_moved"] == 240 and prop["exceptions"][0]["code"] == G2C
    assert plans.undo(s, ADMIN, pid)["undone"]["op"] == "propose"


def test_concurrent_edits_one_wins_the_other_gets_409(demo_url):
    """Two planners edit the same cell from version 0 at the same time, in two connections:
    the second waits for the first's lock, then sees the new version and is refused."""
    from gisgrid.db.engine import make_engine, make_sessionmaker

    eng = make_engine(demo_url)
    Session = make_sessionmaker(eng)
    with Session.begin() as s:
        comm = s.execute(text("SELECT community_code FROM grid WHERE valid_to IS NULL ORDER BY code LIMIT 1")).scalar()
        plan = plans.create(s, ADMIN, comm, "concurrency")
    pid = plan["id"]
    code = plan["cells"][0]["properties"]["code"]
    geom = shapely.geometry.shape(plan["cells"][0]["geometry"])
    body = {"code": code, "geometry": mapping(geom.buffer(-0.00001)), "versions": {code: 0}}
    results = {}
    first_holds_lock = threading.Event()

    def first():
        with Session.begin() as s:
            results["first"] = plans.edit(s, ADMIN, pid, "replace", dict(body))["seq"]
            first_holds_lock.set()
            threading.Event().wait(0.5)         # the second planner arrives meanwhile

    def second():
        first_holds_lock.wait()
        try:
            with Session.begin() as s:
                plans.edit(s, ADMIN, pid, "replace", dict(body))
        except Conflict as e:
            results["second"] = str(e)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert results["first"] == 1
        assert "is at version 1, the edit was made on version 0" in results["second"]
    finally:
        with Session.begin() as s:
            s.execute(text("DELETE FROM grid_plan WHERE id = :p"), {"p": pid})
        eng.dispose()
