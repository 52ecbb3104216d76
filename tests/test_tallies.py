"""The incident tally (gisgrid.layers.tallies) equals a fresh count after every kind of write:
reports (the one-statement report path), state changes through the workflow, a merge, evaluations
(satisfaction), a move
and re-link of one incident, a bulk import, deletes, a bulk re-link (its triggers move with the
new link table) and a truncate; and the tiles drawn from it equal the incidents themselves."""
from __future__ import annotations

import pytest
from shapely.geometry import box
from sqlalchemy import text

from gisgrid import authz, workflow
from gisgrid.layers import incidents, linking, tallies, writes
from gisgrid.layers import tiles as tl

from conftest import COMMUNITY

ADMIN = authz.Principal("admin", "admin")


def assert_tally_fresh(session) -> None:
    for layer in tallies.COUNTS:
        got, want = tallies.by_grid(session, layer), tallies.fresh(session, layer)
        assert set(got) == set(want), layer
        for grid, w in want.items():
            keys = tallies.COUNTS[layer] + tallies.CODES
            assert {c: got[grid][c] for c in keys} == {c: w[c] for c in keys}, grid
            assert got[grid]["codings"] == 1, grid         # one set of codes per grid
            for c in tallies.FLOATS[layer]:
                assert got[grid][c] == pytest.approx(w[c], abs=1e-6)


def report(session, lon, lat, category="noise"):
    return incidents.report(session, "admin", category=category, lon=lon, lat=lat)[0]


def test_tally_follows_every_write(two_grids):
    s = two_grids
    assert tallies.by_grid(s, "incident") == {}
    made = [report(s, 114.001 + 0.0015 * k, 30.005) for k in range(12)]       # G1 and G2
    report(s, 114.025, 30.015)                                                  # in the district, no grid
    assert_tally_fresh(s)
    g1 = s.execute(text("SELECT id FROM grid WHERE code = :c"), {"c": COMMUNITY + "001"}).scalar()
    assert tallies.by_grid(s, "incident")[g1]["n"] == 7 and tallies.by_grid(s, "incident")[g1]["reported"] == 7   # 114.010: the edge, G1

    # the workflow: accept, dispatch, … close; a merge (closed, merged: not resolved)
    for inc in made[:3]:
        for action in ("accept",):
            workflow.transition(s, ADMIN, inc["code"], action)
    s.execute(text("UPDATE incident SET state = 'closed', closed_at = now() WHERE code = ANY(:c)"),
              {"c": [i["code"] for i in made[3:6]]})
    workflow.merge(s, ADMIN, made[6]["code"], made[7]["code"])
    s.execute(text("UPDATE incident SET deadline = now() - interval '1 hour' WHERE code = :c"), {"c": made[8]["code"]})
    s.execute(text("UPDATE incident SET description = 'no figure changes'"))
    assert_tally_fresh(s)
    # evaluations: a satisfaction given (rated), 4 or 5 (satisfied), changed, taken back
    s.execute(text("UPDATE incident SET satisfaction = 5 WHERE code = ANY(:c)"), {"c": [i["code"] for i in made[3:5]]})
    s.execute(text("UPDATE incident SET satisfaction = 2 WHERE code = :c"), {"c": made[5]["code"]})
    assert_tally_fresh(s)
    assert sum(r["rated"] for r in tallies.by_grid(s, "incident").values()) == 3
    assert sum(r["satisfied"] for r in tallies.by_grid(s, "incident").values()) == 2
    s.execute(text("UPDATE incident SET satisfaction = CASE WHEN satisfaction = 5 THEN 3 ELSE NULL END "
                   "WHERE code = ANY(:c)"), {"c": [i["code"] for i in made[3:6]]})
    assert_tally_fresh(s)
    assert sum(r["satisfied"] for r in tallies.by_grid(s, "incident").values()) == 0

    # a move across the shared edge, re-linked as a writer does
    s.execute(text("UPDATE incident SET geom = ST_SetSRID(ST_MakePoint(114.015, 30.005), 4326) WHERE code = :c"),
              {"c": made[0]["code"]})
    linking.link_ids(s, "incident", [s.execute(text("SELECT id FROM incident WHERE code = :c"),
                                               {"c": made[0]["code"]}).scalar()])
    assert_tally_fresh(s)

    # buildings: added (linked by writes.add), households changed, moved, deleted
    writes.add(s, "building", [{"code": f"B{k}", "name": f"楼{k}", "households": 10 + k,
                                "geometry": box(114.001 + 0.004 * k, 30.001, 114.002 + 0.004 * k, 30.002)}
                               for k in range(5)])
    s.execute(text("UPDATE building SET households = households * 2 WHERE code IN ('B0', 'B3')"))
    s.execute(text("UPDATE building SET geom = ST_Translate(geom, 0.008, 0) WHERE code = 'B1'"))
    linking.link_ids(s, "building", s.execute(text("SELECT id FROM building WHERE code = 'B1'")).scalars().all())
    s.execute(text("DELETE FROM building WHERE code = 'B2'"))
    assert_tally_fresh(s)
    assert sum(r["households"] for r in tallies.by_grid(s, "building").values()) == 20 + 11 + 13 * 2 + 14

    # a bulk import (COPY, staged links) beside the reports
    import pandas as pd
    from shapely.geometry import Point
    frame = pd.DataFrame({"code": [f"IMP-{k}" for k in range(5)], "category": ["noise"] * 5,
                          "state": ["reported", "closed", "closed", "handling", "accepted"],
                          "geom": [Point(114.002, 30.002), Point(114.004, 30.004), Point(114.012, 30.006),
                                   Point(114.018, 30.008), Point(114.025, 30.015)]})
    writes.add_frame(s, "incident", frame, actor="admin")
    assert_tally_fresh(s)

    # deletes: the tally trigger runs before the links go
    s.execute(text("DELETE FROM incident WHERE code = ANY(:c)"), {"c": [made[1]["code"], "IMP-2"]})
    assert_tally_fresh(s)

    # a bulk re-link swaps in a new link table: the triggers move with it, the tally is counted afresh
    s.execute(text("UPDATE incident_link SET grid_id = NULL, grid_code = NULL"))   # (wrong on purpose)
    assert_tally_fresh(s)
    s.execute(text("UPDATE building_link SET grid_id = NULL, grid_code = NULL"))
    linking.relink(s, ("building", "incident"))
    assert {r[0] for r in s.execute(text(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = 'incident_link'::regclass AND NOT tgisinternal"))} \
        == {"tally_insert", "tally_update", "tally_delete", "tally_truncate"}
    assert_tally_fresh(s)
    report(s, 114.003, 30.003)                         # the moved triggers count the next report
    assert_tally_fresh(s)
    assert sum(r["n"] for r in tallies.by_grid(s, "incident").values()) == s.execute(text(
        "SELECT count(*) FROM incident_link WHERE grid_id IS NOT NULL")).scalar()

    s.execute(text("TRUNCATE incident, building CASCADE"))
    assert tallies.by_grid(s, "incident") == {} and tallies.by_grid(s, "building") == {}


def test_concurrent_reporters_write_their_own_shards(two_grids):
    """Two sessions report into one grid without waiting on each other's tally row."""
    s = two_grids
    report(s, 114.005, 30.005)
    shards = s.execute(text("SELECT shard FROM incident_tally")).scalars().all()
    pid = s.execute(text("SELECT pg_backend_pid()")).scalar()
    assert shards == [pid % tallies.SHARDS]


# -- tiles from the tally equal the incidents themselves (demo district) ---------------------------
def _props(client, layer, t, query=""):
    import gzip

    import mapbox_vector_tile

    r = client.get(f"/tiles/{layer}/{t.z}/{t.x}/{t.y}.pbf" + (f"?{query}" if query else ""))
    assert r.status_code == 200
    data = gzip.decompress(r.data) if r.headers.get("Content-Encoding") == "gzip" else r.data
    return [f["properties"] for f in mapbox_vector_tile.decode(data).get(layer, {}).get("features", [])] if data else []


@pytest.fixture(scope="module")
def demo_grid(app):
    with app.extensions["gisgrid"]["sessions"]() as s:
        return s.execute(text(
            "SELECT g.id, g.code, g.community_code, ST_X(ST_PointOnSurface(g.geom)) AS lon, "
            "ST_Y(ST_PointOnSurface(g.geom)) AS lat FROM grid g JOIN incident_link l ON l.grid_id = g.id "
            "JOIN incident i ON i.id = l.id WHERE g.valid_to IS NULL GROUP BY g.id "
            "ORDER BY count(*) FILTER (WHERE i.state <> ALL(:done)) DESC, g.id LIMIT 1"),
            {"done": ["evaluated", "closed"]}).mappings().one()


def test_grid_figures_from_the_tally_equal_the_incidents(app, client, demo_grid):
    with app.extensions["gisgrid"]["sessions"]() as s:
        open_ids = s.execute(text(
            "SELECT i.id FROM incident i JOIN incident_link l ON l.id = i.id WHERE l.grid_id = :g "
            "AND i.state = ANY(:open) ORDER BY i.id LIMIT 4"), {"g": demo_grid["id"], "open": list(incidents.OPEN_STATES)}).scalars().all()
        assert len(open_ids) == 4
        s.execute(text("UPDATE incident SET deadline = now() + interval '3 days' WHERE id = ANY(:i)"), {"i": open_ids[:2]})
        s.execute(text("UPDATE incident SET deadline = now() - interval '3 days' WHERE id = ANY(:i)"), {"i": open_ids[2:]})
        s.commit()
        want = s.execute(text(
            f"SELECT count(*) AS received, count(*) FILTER (WHERE i.state = ANY(:open)) AS open, "
            f"count(*) FILTER (WHERE i.state = ANY(:open) AND i.deadline < now()) AS overdue, "
            f"count(*) FILTER (WHERE {incidents.RESOLVED_SQL}) AS resolved FROM incident i "
            "JOIN incident_link l ON l.id = i.id WHERE l.grid_id = :g"),
            {"g": demo_grid["id"], "open": list(incidents.OPEN_STATES)}).mappings().one()
        community = s.execute(text(
            f"SELECT count(*) AS received, count(*) FILTER (WHERE i.state = ANY(:open) AND i.deadline < now()) AS overdue, "
            f"count(*) FILTER (WHERE {incidents.RESOLVED_SQL}) AS resolved FROM incident i "
            "JOIN incident_link l ON l.id = i.id WHERE l.community_code = :c"),
            {"c": demo_grid["community_code"], "open": list(incidents.OPEN_STATES)}).mappings().one()
    assert want["overdue"] > 0 and want["open"] > want["overdue"]
    lon, lat = demo_grid["lon"], demo_grid["lat"]
    grid = [p for p in _props(client, "grids", tl.Tile.at(14, lon, lat)) if p["code"] == demo_grid["code"]][0]
    assert {k: grid[k] for k in want} == dict(want)
    comm = [p for p in _props(client, "grids", tl.Tile.at(11, lon, lat)) if p["code"] == demo_grid["community_code"]][0]
    assert {k: comm[k] for k in community} == dict(community)
    # the same figures through the filtered path (from the incidents themselves) for a state filter of every state
    every = ",".join(incidents.STATES)
    raw = [p for p in _props(client, "grids", tl.Tile.at(14, lon, lat), f"state={every}") if p["code"] == demo_grid["code"]][0]
    assert {k: raw[k] for k in want} == dict(want)


@pytest.mark.parametrize("layer, table, anchor", [("incidents", "incident", "geom"), ("buildings", "building", "anchor")])
def test_bins_from_the_tally_count_every_record_once(app, client, layer, table, anchor):
    """Below zoom 14 a grid's incidents (buildings) are drawn at their mean position: over the
    tiles that cover the district every record is counted exactly once, with its state (households)."""
    with app.extensions["gisgrid"]["sessions"]() as s:
        w, so, e, n = s.execute(text(f"SELECT ST_XMin(x), ST_YMin(x), ST_XMax(x), ST_YMax(x) FROM "
                                     f"(SELECT ST_Extent({anchor})::geometry AS x FROM {table}) q")).one()
        total = s.execute(text(f"SELECT count(*) FROM {table}")).scalar()
        if table == "incident":
            want = dict(s.execute(text("SELECT state, count(*) FROM incident GROUP BY 1")).all())
            want = {st: want.get(st, 0) for st in incidents.STATES}
        else:
            want = {"households": s.execute(text("SELECT sum(households) FROM building")).scalar()}
    z = 12
    a, b = tl.Tile.at(z, w, n), tl.Tile.at(z, e, so)
    bins = [p for x in range(a.x, b.x + 1) for y in range(a.y, b.y + 1) for p in _props(client, layer, tl.Tile(z, x, y))]
    assert sum(p["n"] for p in bins) == total and max(p["n"] for p in bins) > 1
    assert {k: sum(p[k] for p in bins) for k in want} == want


def test_cached_tiles_still_ask_who_is_calling(app, demo_grid):
    """The cached fast path: a tile an admin drew is not served to an anonymous caller, and a
    field worker gets their own tile (their jurisdiction is part of the cache key)."""
    from conftest import login_as

    t = tl.Tile.at(13, demo_grid["lon"], demo_grid["lat"])
    url = f"/tiles/grids/{t.z}/{t.x}/{t.y}.pbf"
    admin = login_as(app, "admin")
    assert admin.get(url).status_code == 200 and admin.get(url).status_code == 200      # drawn, then cached
    etag = admin.get(url).headers["ETag"]
    assert app.test_client().get(url).status_code == 401
    assert app.test_client().get(url, headers={"If-None-Match": etag}).status_code == 401
    worker = login_as(app, "gridworker")
    mine = {p["code"] for p in _props(worker, "grids", t)}
    everyone = {p["code"] for p in _props(admin, "grids", t)}
    assert mine and mine < everyone
    assert worker.get(url, headers={"If-None-Match": etag}).status_code == 200        # not the admin's ETag
