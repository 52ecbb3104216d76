"""Vector tiles: the pure tile arithmetic, then every layer on the demo district decoded with
mapbox-vector-tile (features and attributes checked against the database), filters, caching
(ETag, 304, data versions), gzip, TileJSON and jurisdiction."""
from __future__ import annotations

import gzip
import json
import uuid

import mapbox_vector_tile
import pytest
from shapely.geometry import shape
from sqlalchemy import text

from gisgrid.layers.tiles import HALF, Tile

from conftest import login_as


# -- pure -------------------------------------------------------------------------------------
@pytest.mark.parametrize("tile, valid", [
    (Tile(0, 0, 0), True), (Tile(1, 1, 1), True), (Tile(1, 2, 0), False), (Tile(3, -1, 0), False),
    (Tile(23, 0, 0), False), (Tile(22, (1 << 22) - 1, 0), True),
])
def test_tile_validity(tile, valid):
    assert tile.is_valid() is valid


def test_tile_cache_keeps_one_drawing_a_tile_newest_in_place_least_recent_out():
    from gisgrid.web.tiles import TileCache

    c = TileCache(10)
    assert c.get("a") is None
    c.put("a", "v1", b"1234")
    c.put("a", "v2", b"123")                  # a newer drawing replaces the old one
    assert c.get("a") == ("v2", b"123") and c.size == 3
    c.put("b", "v1", b"1234")
    c.get("a")                                # b is now the least recently used
    c.put("c", "v1", b"1234")
    assert c.get("b") is None and c.get("a") == ("v2", b"123") and c.get("c") == ("v1", b"1234")
    assert c.size == 7
    c.put("d", "v1", b"x" * 11)               # larger than the whole cache: not kept
    assert c.get("d") is None and c.size == 7


def test_tile_bounds_and_lookup():
    assert Tile(0, 0, 0).bounds() == pytest.approx((-HALF, -HALF, HALF, HALF))
    assert Tile(1, 1, 0).bounds() == pytest.approx((0, 0, HALF, HALF))
    w, s, e, n = Tile(1, 0, 1).lonlat_bounds()
    assert (w, e) == pytest.approx((-180, 0)) and s == pytest.approx(-85.0511, abs=1e-4) and n == pytest.approx(0)
    t = Tile.at(14, 114.27, 30.58)
    w, s, e, n = t.lonlat_bounds()
    assert w <= 114.27 < e and s <= 30.58 < n and t.is_valid()


# -- over HTTP on the demo district -------------------------------------------------------------
def decode(resp) -> dict:
    assert resp.status_code == 200, resp.data[:300]
    assert resp.mimetype == "application/vnd.mapbox-vector-tile"
    data = resp.data
    if resp.headers.get("Content-Encoding") == "gzip":
        data = gzip.decompress(data)
    return mapbox_vector_tile.decode(data) if data else {}


def features(client, layer, tile, query="", **kw) -> list[dict]:
    url = f"/tiles/{layer}/{tile.z}/{tile.x}/{tile.y}.pbf" + (f"?{query}" if query else "")
    return decode(client.get(url, **kw)).get(layer, {}).get("features", [])


@pytest.fixture(scope="module")
def place(app):
    """The first grid: its code, a point inside, its households and incidents, and a building."""
    with app.extensions["gisgrid"]["sessions"]() as s:
        g = s.execute(text("SELECT id, code, community_code, ST_AsGeoJSON(geom) AS gj FROM grid "
                           "WHERE valid_to IS NULL ORDER BY code LIMIT 1")).mappings().one()
        hh = s.execute(text("SELECT sum(households) FROM building JOIN building_link USING (id) WHERE grid_id = :g"), {"g": g["id"]}).scalar()
        b = s.execute(text("SELECT code, households, ST_X(anchor) AS lon, ST_Y(anchor) AS lat FROM building "
                           "JOIN building_link USING (id) WHERE grid_id = :g ORDER BY code LIMIT 1"), {"g": g["id"]}).mappings().one()
        inc = s.execute(text("SELECT code, state, category, ST_X(geom) AS lon, ST_Y(geom) AS lat FROM incident "
                             "JOIN incident_link USING (id) WHERE grid_id = :g ORDER BY code LIMIT 1"), {"g": g["id"]}).mappings().one()
    p = shape(json.loads(g["gj"])).representative_point()
    return {"grid": g["code"], "community": g["community_code"], "lon": p.x, "lat": p.y, "households": int(hh),
            "building": dict(b), "incident": dict(inc)}


def db_count(app, sql, **params):
    with app.extensions["gisgrid"]["sessions"]() as s:
        return s.execute(text(sql), params).scalar()


def test_grid_tile_carries_code_households_and_incident_counts(client, app, place):
    feats = features(client, "grids", Tile.at(14, place["lon"], place["lat"]))
    mine = [f for f in feats if f["properties"]["code"] == place["grid"]]
    assert len(mine) == 1 and mine[0]["geometry"]["type"] in ("Polygon", "MultiPolygon")
    props = mine[0]["properties"]
    assert props["level"] == "grid" and props["name"] and props["households"] == place["households"]
    open_n = db_count(app, "SELECT count(*) FROM incident JOIN incident_link USING (id) WHERE grid_code = :g AND state NOT IN ('evaluated', 'closed')",
                      g=place["grid"])
    received = db_count(app, "SELECT count(*) FROM incident JOIN incident_link USING (id) WHERE grid_code = :g", g=place["grid"])
    assert props["open"] == open_n and props["received"] == received
    assert 0 <= props["resolved"] <= received and 0 <= props["overdue"] <= open_n


def test_grid_figures_open_only(client, place):
    t = Tile.at(14, place["lon"], place["lat"])
    full = {f["properties"]["code"]: f["properties"] for f in features(client, "grids", t)}
    cheap = {f["properties"]["code"]: f["properties"] for f in features(client, "grids", t, "figures=open")}
    assert set(cheap) == set(full)
    for code, p in cheap.items():
        assert "received" not in p and "resolved" not in p
        assert (p["open"], p["overdue"], p["households"]) == (full[code]["open"], full[code]["overdue"],
                                                              full[code]["households"])


def test_grid_layer_draws_communities_below_zoom_12(client, place):
    feats = features(client, "grids", Tile.at(11, place["lon"], place["lat"]))
    assert feats and {f["properties"]["level"] for f in feats} == {"community"}
    assert place["community"] in {f["properties"]["code"] for f in feats}


def test_incidents_are_points_at_high_zoom_and_bins_with_state_counts_below(client, app, place):
    inc = place["incident"]
    pts = features(client, "incidents", Tile.at(16, inc["lon"], inc["lat"]))
    mine = [f for f in pts if f["properties"]["code"] == inc["code"]]
    assert len(mine) == 1 and mine[0]["geometry"]["type"] == "Point"
    assert mine[0]["properties"]["state"] == inc["state"] and mine[0]["properties"]["category"] == inc["category"]
    t = Tile.at(12, inc["lon"], inc["lat"])
    bins = features(client, "incidents", t)
    w, s, e, n = t.lonlat_bounds()
    # below zoom 14 each tally row (a grid's shard, gisgrid.layers.tallies) is drawn at the mean
    # position of its incidents, incidents outside every grid at their own
    inside = db_count(app, "SELECT sum(n) FROM (SELECT n, sx / n AS x, sy / n AS y FROM incident_tally WHERE n > 0 "
                           "UNION ALL SELECT 1, ST_X(i.geom), ST_Y(i.geom) FROM incident i JOIN incident_link l "
                           "USING (id) WHERE l.grid_id IS NULL) g "
                           "WHERE x >= :w AND x < :e AND y >= :s AND y < :n", w=w, e=e, s=s, n=n)
    assert inside > 0 and sum(f["properties"]["n"] for f in bins) == inside
    assert 10 < len(bins) < inside and all("code" not in f["properties"] for f in bins)   # aggregated
    assert max(f["properties"]["n"] for f in bins) > 1
    states = ("reported", "accepted", "dispatched", "handling", "feedback", "evaluated", "closed")
    assert all(sum(f["properties"][s] for s in states) == f["properties"]["n"] for f in bins)


@pytest.mark.parametrize("layer, z, props", [
    ("buildings", 17, {"code", "households", "floors"}), ("buildings", 12, {"n", "households"}),
    ("places", 12, {"n"}), ("patrol_points", 10, {"n"}),
])
def test_point_layers_by_zoom(client, place, layer, z, props):
    b = place["building"]
    feats = features(client, layer, Tile.at(z, b["lon"], b["lat"]))
    if layer != "buildings":      # places and patrol points are sparse: look over the whole district
        feats = features(client, layer, Tile.at(z, place["lon"], place["lat"]))
    assert feats and props <= set(feats[0]["properties"])
    if layer == "buildings" and z == 17:
        mine = [f for f in feats if f["properties"]["code"] == b["code"]]
        assert mine and mine[0]["properties"]["households"] == b["households"]
        assert mine[0]["geometry"]["type"] in ("Polygon", "MultiPolygon")


def test_places_patrol_points_and_routes_as_features(client, app):
    for layer, table in (("places", "place"), ("patrol_points", "patrol_point"), ("patrol_routes", "patrol_route")):
        with app.extensions["gisgrid"]["sessions"]() as s:
            code, lon, lat = s.execute(text(f"SELECT code, ST_X(ST_PointOnSurface(geom)), ST_Y(ST_PointOnSurface(geom)) "
                                            f"FROM {table} ORDER BY code LIMIT 1")).one()
        feats = features(client, layer, Tile.at(16, lon, lat))
        assert code in {f["properties"]["code"] for f in feats}, layer


def test_admin_areas_by_zoom(client, place):
    low = {f["properties"]["level"] for f in features(client, "admin_areas", Tile.at(10, place["lon"], place["lat"]))}
    high = features(client, "admin_areas", Tile.at(13, place["lon"], place["lat"]))
    assert low == {"district", "street"}
    assert place["community"] in {f["properties"]["code"] for f in high if f["properties"]["level"] == "community"}


def test_filters_narrow_incidents_and_grid_counts(client, app, place):
    inc = place["incident"]
    t = Tile.at(15, inc["lon"], inc["lat"])
    cat = inc["category"]
    only = features(client, "incidents", t, f"category={cat}")
    assert only and {f["properties"]["category"] for f in only} == {cat}
    assert len(only) < len(features(client, "incidents", t))
    g = [f for f in features(client, "grids", Tile.at(14, place["lon"], place["lat"]), f"category={cat}&state=closed")
         if f["properties"]["code"] == place["grid"]][0]["properties"]
    assert g["received"] == db_count(app, "SELECT count(*) FROM incident JOIN incident_link USING (id) WHERE grid_code = :g AND category = :c "
                                          "AND state = 'closed'", g=place["grid"], c=cat)
    future = features(client, "incidents", t, "since=2100-01-01")
    assert future == []


@pytest.mark.parametrize("url, status, field", [
    ("/tiles/nosuch/1/0/0.pbf", 404, "layer"), ("/tiles/grids/23/0/0.pbf", 400, "z"),
    ("/tiles/grids/2/4/0.pbf", 400, "x"), ("/tiles/grids/2/0/0.pbf?colour=red", 400, "colour"),
    ("/tiles/grids/2/0/0.pbf?category=unicorns", 400, "category"), ("/tiles/grids/2/0/0.pbf?state=lost", 400, "state"),
    ("/tiles/grids/2/0/0.pbf?since=yesterday", 400, "since"),
    ("/tiles/grids/2/0/0.pbf?since=2026-02-01&until=2026-01-01", 400, "since"),
    ("/tiles/buildings/2/0/0.pbf?category=fire", 400, "category"),
    ("/tiles/grids/2/0/0.pbf?figures=some", 400, "figures"), ("/tiles/incidents/2/0/0.pbf?figures=open", 400, "figures"),
])
def test_bad_requests_name_what_is_wrong(client, url, status, field):
    r = client.get(url)
    assert r.status_code == status and r.json["field"] == field and r.json["message"]


def steady_clock(app, needed_s: int = 30) -> None:
    """The incident layers' versions carry a five-minute clock (overdue): start a test that
    compares versions early enough in a period that it does not roll over midway."""
    import time

    from gisgrid.layers.tiles import OVERDUE_SECONDS

    left = db_count(app, f"SELECT {OVERDUE_SECONDS} - extract(epoch FROM now())::bigint % {OVERDUE_SECONDS}")
    if left < needed_s:
        time.sleep(left + 1)


def test_etag_304_gzip_and_a_new_incident_changes_the_version(client, app, place):
    steady_clock(app)
    t = Tile.at(16, place["lon"], place["lat"])
    url = f"/tiles/incidents/{t.z}/{t.x}/{t.y}.pbf"
    first = client.get(url, headers={"Accept-Encoding": "gzip"})
    assert first.headers["Content-Encoding"] == "gzip" and "private" in first.headers["Cache-Control"]
    etag = first.headers["ETag"]
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    plain = client.get(url, headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers and decode(plain) == decode(first)
    v = first.headers["X-Data-Version"]
    assert "max-age" in client.get(url + f"?v={v}").headers["Cache-Control"]
    # a report through the API: new version, new ETag, the point is in the tile
    from gisgrid.layers import users
    with app.extensions["gisgrid"]["sessions"]() as s:
        token, _ = users.create_token(s, users.get(s, "admin"), "tiles-test", ["read", "report"], 1)
        s.commit()
    r = app.test_client().post("/api/incidents", json={"category": "noise", "lon": place["lon"], "lat": place["lat"]},
                               headers={"Authorization": f"Bearer {token}", "Idempotency-Key": str(uuid.uuid4())})
    assert r.status_code == 201
    again = client.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 200 and again.headers["ETag"] != etag and again.headers["X-Data-Version"] != v
    assert r.json["code"] in {f["properties"]["code"] for f in decode(again)["incidents"]["features"]}
    index = client.get("/tiles/index.json").json
    assert index["incidents"]["data_version"] == again.headers["X-Data-Version"]


def test_a_write_made_elsewhere_shows_in_the_next_tile_through_the_cache(client, app, place):
    """The cache and the 304s never outlive a committed write, whoever made it: here a plain
    session of its own, as another worker process or the CLI writes (no request of this app
    that could tell the tile view). The version is read on every tile request."""
    steady_clock(app)
    t = Tile.at(16, place["lon"], place["lat"])
    url = f"/tiles/incidents/{t.z}/{t.x}/{t.y}.pbf"
    first = client.get(url)
    etag = first.headers["ETag"]
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    drawn = {f["properties"]["code"]: f["properties"]["category"] for f in decode(first)["incidents"]["features"]}
    assert decode(client.get(url))["incidents"]["features"] == decode(first)["incidents"]["features"]   # cached
    code, old = sorted(drawn.items())[0]
    new = "tiles-test-elsewhere"
    Session = app.extensions["gisgrid"]["sessions"]
    with Session.begin() as s:
        s.execute(text("UPDATE incident SET category = :c WHERE code = :code"), {"c": new, "code": code})
    try:
        again = client.get(url, headers={"If-None-Match": etag})       # at once: no time to live to wait out
        assert again.status_code == 200 and again.headers["ETag"] != etag
        now = {f["properties"]["code"]: f["properties"]["category"] for f in decode(again)["incidents"]["features"]}
        assert now == {**drawn, code: new}
        assert decode(client.get(url))["incidents"]["features"] == decode(again)["incidents"]["features"]
    finally:
        with Session.begin() as s:
            s.execute(text("UPDATE incident SET category = :c WHERE code = :code"), {"c": old, "code": code})
    back = client.get(url, headers={"If-None-Match": again.headers["ETag"]})
    assert back.status_code == 200 and {f["properties"]["code"]: f["properties"]["category"]
                                        for f in decode(back)["incidents"]["features"]} == drawn


def test_tilejson(client, place):
    doc = client.get("/tiles/grids.json").json
    assert doc["tilejson"] == "3.0.0" and doc["tiles"][0].endswith("/tiles/grids/{z}/{x}/{y}.pbf")
    assert {"code", "households", "open", "overdue", "resolved"} <= set(doc["vector_layers"][0]["fields"])
    w, s, e, n = doc["bounds"]
    assert w <= place["lon"] <= e and s <= place["lat"] <= n
    assert doc["gisgrid"]["filters"] == ["since", "until", "category", "state", "figures"]
    assert set(client.get("/tiles/index.json").json) == {"admin_areas", "grids", "buildings", "patrol_points",
                                                         "patrol_routes", "places", "incidents"}


def test_jurisdiction_is_part_of_every_tile(app, place):
    worker = login_as(app, "gridworker")
    with app.extensions["gisgrid"]["sessions"]() as s:
        jur = s.execute(text("SELECT jurisdiction FROM app_user WHERE username = 'gridworker'")).scalar()
    t = Tile.at(13, place["lon"], place["lat"])
    codes = {f["properties"]["code"] for f in features(worker, "grids", t)}
    assert codes == set(jur)
    t16 = Tile.at(16, place["lon"], place["lat"])
    seen = {f["properties"]["code"] for f in features(worker, "incidents", t16)}
    everyone = {f["properties"]["code"] for f in features(login_as(app, "admin"), "incidents", t16)}
    with app.extensions["gisgrid"]["sessions"]() as s:
        theirs = {r[0] for r in s.execute(text("SELECT code FROM incident JOIN incident_link USING (id) WHERE grid_code = ANY(:j)"), {"j": jur})}
    assert seen and seen == everyone & theirs and everyone - theirs
    areas = {(f["properties"]["level"], f["properties"]["code"]) for f in features(worker, "admin_areas", t)}
    assert ("community", place["community"]) in areas and len({c for lv, c in areas if lv == "community"}) == 1
    w = features(worker, "incidents", Tile.at(12, place["lon"], place["lat"]))
    admin = features(login_as(app, "admin"), "incidents", Tile.at(12, place["lon"], place["lat"]))
    assert sum(f["properties"]["n"] for f in w) < sum(f["properties"]["n"] for f in admin)
    assert login_as(app, "admin").get("/tiles/grids/13/0/0.pbf").status_code == 200
    assert app.test_client().get(f"/tiles/grids/{t.z}/{t.x}/{t.y}.pbf").status_code == 401


def test_layer_version_follows_committed_writes_only(app):
    from gisgrid.layers import tiles

    Session = app.extensions["gisgrid"]["sessions"]
    with Session() as s:
        before, places = tiles.version(s, "patrol_routes"), tiles.version(s, "places")
    with Session() as s:                       # a write that is rolled back changes nothing
        s.execute(text("UPDATE patrol_route SET team = team"))
        assert tiles.version(s, "patrol_routes") != before      # the writer sees its own change
        s.rollback()
    with Session() as s:
        assert tiles.version(s, "patrol_routes") == before
        s.execute(text("UPDATE patrol_route SET team = team"))
        s.commit()
    with Session() as s:
        after = tiles.version(s, "patrol_routes")
        assert after != before
        assert tiles.version(s, "places") == places          # other layers' versions do not move
    # the same on the web app's tile connection (a prepared statement, no session)
    conns = app.extensions["gisgrid"]["tile_connections"]
    assert conns.run(lambda conn: tiles.version_on(conn, "patrol_routes")) == after
    assert conns.run(lambda conn: tiles.version_on(conn, "places")) == places
    # every layer's in one statement (what /tiles/index.json polls), each as read alone
    names = tuple(tiles.LAYERS)
    together = conns.run(lambda conn: tiles.versions_on(conn, names))
    with Session() as s:
        assert together == {n: tiles.version(s, n) for n in names}
    assert together["patrol_routes"] == after and together["places"] == places
