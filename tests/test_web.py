"""The app through Flask's test client, on the demo database."""
from __future__ import annotations

import re

import pytest


def test_one_map_uses_only_local_assets(client):
    r = client.get("/")
    assert r.status_code == 200
    html = r.get_data(as_text=True)
    assert "网格化管理一张图" in html and "江汉区" in html
    assert not re.findall(r"https?://", html.replace("http://www.w3.org", "")), "external URL in the page"
    assets = set(re.findall(r'(?:src|href)="(/static/[^"]+)"', html))
    assert any("leaflet.js" in a for a in assets)
    for a in assets:
        with client.get(a) as asset:
            assert asset.status_code == 200, a


def test_english_on_request(client):
    assert "one map" in client.get("/?lang=en").get_data(as_text=True)


def test_locate_inside_a_grid(client):
    grids = client.get("/api/grids?limit=5").json["features"]
    assert len(grids) == 5
    from shapely.geometry import shape

    p = shape(grids[2]["geometry"]).representative_point()
    r = client.get(f"/api/locate?lon={p.x}&lat={p.y}")
    assert r.status_code == 200 and r.json["grid"]["code"] == grids[2]["properties"]["code"]
    assert r.json["grid"]["district_code"] == "420103000000"


def test_locate_outside_every_grid(client):
    r = client.get("/api/locate?lon=100&lat=20")
    assert r.status_code == 200 and r.json == {"lon": 100.0, "lat": 20.0, "grid": None, "linked": False}


@pytest.mark.parametrize("query, status, field", [
    ("lon=abc&lat=30", 400, "lon/lat"),
    ("lon=114", 400, "lat"),
    ("lon=200&lat=30", 400, "lon"),
    ("lon=114&lat=30&crs=EPSG:0", 400, "crs"),
])
def test_locate_bad_input(client, query, status, field):
    r = client.get(f"/api/locate?{query}")
    assert r.status_code == status and r.json["field"] == field and r.json["message"]


@pytest.mark.parametrize("url, status", [("/api/grids?limit=x", 400), ("/api/grids?limit=999999", 400),
                                         ("/api/admin-areas/planet", 400), ("/api/nothing", 404)])
def test_api_errors_are_json(client, url, status):
    r = client.get(url)
    assert r.status_code == status and r.is_json and "message" in r.json


def test_admin_areas_and_grids(client):
    assert len(client.get("/api/admin-areas/community").json["features"]) >= 10
    feats = client.get("/api/grids?limit=5000").json["features"]
    assert len(feats) >= 100 and all(f["properties"]["households"] > 0 for f in feats)


@pytest.mark.parametrize("url, field", [
    ("/api/residents?grid=%00", "grid"),
    ("/api/residents?offset=9223372036854775808", "offset"),
    ("/api/incidents?state=closed%00", "state"),
])
def test_values_sql_cannot_hold_are_refused_as_input(client, url, field):
    """Found by schemathesis: NUL characters and out-of-range offsets were 500s."""
    r = client.get(url)
    assert r.status_code == 400 and r.json["field"] == field


def test_nul_in_json_body_is_refused(client):
    import re

    token = re.search(rb'name="csrf_token" value="([^"]+)"', client.get("/login").data).group(1).decode()
    r = client.post("/api/incidents", json={"category": "noise\x00", "lon": 114.25, "lat": 30.6},
                    headers={"X-CSRFToken": token})
    assert r.status_code == 400 and r.json["field"] == "body"
