"""Open311 GeoReport v2 at /open311/v2/: services, requests in JSON and XML, posting with a
token, filters, the status mapping, jurisdiction, errors in the GeoReport format."""
from __future__ import annotations

import io
import json
import re
import uuid
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta

import pytest
from PIL import Image
from shapely.geometry import shape
from sqlalchemy import text

from gisgrid.layers import users
from gisgrid.web.open311 import CHINA

from conftest import login_as

BASE = "/open311/v2"
SERVICE_FIELDS = ["service_code", "service_name", "description", "metadata", "type", "keywords", "group"]
REQUEST_FIELDS = ["service_request_id", "status", "status_notes", "service_name", "service_code", "description",
                  "agency_responsible", "service_notice", "requested_datetime", "updated_datetime",
                  "expected_datetime", "address", "address_id", "zipcode", "lat", "long", "media_url"]
CATEGORIES = {"noise": "噪声扰民", "sanitation": "环境卫生", "fire": "消防安全"}


@pytest.fixture(scope="module")
def g(app):
    """Grid G (the gridworker's), a point inside it, and an outsider account (a grid elsewhere)."""
    with app.extensions["gisgrid"]["sessions"]() as s:
        row = s.execute(text("SELECT code, street_code, ST_AsGeoJSON(geom) AS gj FROM grid WHERE valid_to IS NULL "
                             "ORDER BY code LIMIT 1")).mappings().one()
        far = s.execute(text("SELECT code FROM grid WHERE street_code <> :s ORDER BY code DESC LIMIT 1"),
                        {"s": row["street_code"]}).scalar()
        if s.execute(text("SELECT 1 FROM app_user WHERE username = 'outsider'")).scalar() is None:
            users.add(s, "outsider", "field", [far], "outsider-password")
            s.commit()
    p = shape(json.loads(row["gj"])).representative_point()
    return {"code": row["code"], "lon": p.x, "lat": p.y}


@pytest.fixture(scope="module")
def tokens(app, g):
    """Plain tokens: gridworker (read+report), gridworker read-only, outsider (read+report)."""
    out = {}
    with app.extensions["gisgrid"]["sessions"]() as s:
        for name, username, scopes in (("worker", "gridworker", ["read", "report"]),
                                       ("reader", "gridworker", ["read"]),
                                       ("outsider", "outsider", ["read", "report"])):
            out[name], _ = users.create_token(s, users.get(s, username), f"open311-{name}", scopes, 1)
        s.commit()
    return out


def bearer(token: str, **extra) -> dict:
    return {"Authorization": f"Bearer {token}", **extra}


def file(anonymous, token, g, fmt="json", key=None, **fields):
    form = {"service_code": "sanitation", "lat": str(g["lat"]), "long": str(g["lon"]), "description": "垃圾未清运",
            **fields}
    headers = bearer(token, **({"Idempotency-Key": key} if key else {}))
    return anonymous.post(f"{BASE}/requests.{fmt}", data=form, headers=headers)


def xml(r) -> ET.Element:
    assert r.headers["Content-Type"] == "text/xml; charset=utf-8"
    return ET.fromstring(r.data)


def xml_requests(r) -> list[dict]:
    root = xml(r)
    assert root.tag == "service_requests" and all(c.tag == "request" for c in root)
    return [{c.tag: c.text for c in req} | {"_order": [c.tag for c in req]} for req in root]


def assert_error(r, status, fmt="json", says=None):
    assert r.status_code == status, r.data
    if fmt == "json":
        assert r.is_json and len(r.json) == 1 and r.json[0]["code"] == status, r.json
        description = r.json[0]["description"]
    else:
        root = xml(r)
        assert root.tag == "errors" and [e.tag for e in root] == ["error"]
        assert [c.tag for c in root[0]] == ["code", "description"] and root[0].findtext("code") == str(status)
        description = root[0].findtext("description")
    assert description
    if says:
        assert re.search(says, description), description
    return description


def count(app, where="TRUE", **params):
    with app.extensions["gisgrid"]["sessions"]() as s:
        return s.execute(text(f"SELECT count(*) FROM incident WHERE {where}"), params).scalar()


# -- services ---------------------------------------------------------------------------------
def test_services_json(anonymous, tokens):
    r = anonymous.get(f"{BASE}/services.json", headers=bearer(tokens["reader"]))
    assert r.status_code == 200 and isinstance(r.json, list) and r.json
    assert all(set(s) == set(SERVICE_FIELDS) for s in r.json)     # JSON keys are sorted
    by_code = {s["service_code"]: s for s in r.json}
    assert by_code["noise"] == {"service_code": "noise", "service_name": "噪声扰民", "description": "Noise",
                                "metadata": False, "type": "realtime", "keywords": "", "group": "网格事件"}
    assert {c: by_code[c]["service_name"] for c in CATEGORIES} == CATEGORIES


def test_services_xml(anonymous, tokens):
    r = anonymous.get(f"{BASE}/services.xml", headers=bearer(tokens["reader"]))
    root = xml(r)
    assert r.status_code == 200 and root.tag == "services" and len(root) > 0
    assert all(s.tag == "service" and [c.tag for c in s] == SERVICE_FIELDS for s in root)
    noise = next(s for s in root if s.findtext("service_code") == "noise")
    assert noise.findtext("service_name") == "噪声扰民" and noise.findtext("description") == "Noise"
    assert noise.findtext("metadata") == "false" and noise.findtext("type") == "realtime"
    assert noise.findtext("keywords") in ("", None) and noise.findtext("group") == "网格事件"


def test_service_definition(anonymous, tokens):
    h = bearer(tokens["reader"])
    assert anonymous.get(f"{BASE}/services/noise.json", headers=h).json == {"service_code": "noise", "attributes": []}
    root = xml(anonymous.get(f"{BASE}/services/noise.xml", headers=h))
    assert root.tag == "service_definition" and [c.tag for c in root] == ["service_code", "attributes"]
    assert root.findtext("service_code") == "noise" and len(root.find("attributes")) == 0
    for fmt in ("json", "xml"):
        assert_error(anonymous.get(f"{BASE}/services/aliens.{fmt}", headers=h), 404, fmt, "aliens")


# -- posting and reading ------------------------------------------------------------------------
def test_post_then_read_in_both_formats(app, anonymous, tokens, g):
    r = file(anonymous, tokens["worker"], g, key=str(uuid.uuid4()), first_name="三", last_name="张",
             email="z@example.org", phone="13800000000", device_id="d-1", account_id="a-1",
             address_string="幸福路 1 号", **{"attribute[size]": "big"})
    assert r.status_code == 201, r.json
    [created] = r.json
    assert set(created) == {"service_request_id", "service_notice", "account_id"} and created["account_id"] is None
    sid = created["service_request_id"]
    assert re.fullmatch(r"SJ\d{15}", sid) and sid in created["service_notice"]

    h = bearer(tokens["reader"])
    [one] = anonymous.get(f"{BASE}/requests/{sid}.json", headers=h).json
    assert set(one) == set(REQUEST_FIELDS)
    assert one["service_request_id"] == sid and one["status"] == "open" and one["status_notes"] == "待受理 (reported)"
    assert one["service_code"] == "sanitation" and one["service_name"] == "环境卫生"
    assert one["description"] == "垃圾未清运" and one["address"] == "幸福路 1 号" and one["service_notice"] == ""
    assert one["agency_responsible"] == f"grid {g['code']}"
    assert one["address_id"] is None and one["zipcode"] is None and one["media_url"] is None
    assert one["lat"] == pytest.approx(g["lat"]) and one["long"] == pytest.approx(g["lon"])
    for k in ("requested_datetime", "updated_datetime", "expected_datetime"):
        assert datetime.fromisoformat(one[k]).tzinfo is not None, k
    assert one["expected_datetime"] > one["requested_datetime"]
    with app.extensions["gisgrid"]["sessions"]() as s:
        row = s.execute(text("SELECT source, reporter FROM incident WHERE code = :c"), {"c": sid}).one()
    assert tuple(row) == ("resident", "张三")

    rx = anonymous.get(f"{BASE}/requests/{sid}.xml", headers=h)
    [x] = xml_requests(rx)
    assert x.pop("_order") == REQUEST_FIELDS
    assert x["service_request_id"] == sid and x["status"] == "open" and x["status_notes"] == "待受理 (reported)"
    assert x["agency_responsible"] == f"grid {g['code']}" and x["media_url"] is None and x["zipcode"] is None
    assert float(x["lat"]) == pytest.approx(g["lat"]) and float(x["long"]) == pytest.approx(g["lon"])

    # the POST answer in XML has the same shape
    rx = file(anonymous, tokens["worker"], g, fmt="xml")
    [made] = xml_requests(rx)
    assert rx.status_code == 201 and made["_order"] == ["service_request_id", "service_notice", "account_id"]
    assert made["account_id"] is None and made["service_request_id"].startswith("SJ")


def test_retry_with_same_idempotency_key_returns_the_same_id(app, anonymous, tokens, g):
    key = str(uuid.uuid4())
    first, again = (file(anonymous, tokens["worker"], g, key=key) for _ in range(2))
    assert first.status_code == 201 and again.status_code == 200
    assert again.json[0]["service_request_id"] == first.json[0]["service_request_id"]
    assert count(app, "idempotency_key = :k", k=key) == 1
    # without the header there is no dedupe
    before = count(app)
    file(anonymous, tokens["worker"], g)
    file(anonymous, tokens["worker"], g)
    assert count(app) == before + 2


def test_media_url_is_the_first_photo(app, anonymous, tokens, g):
    from gisgrid.layers import photos

    sid = file(anonymous, tokens["worker"], g).json[0]["service_request_id"]
    buf = io.BytesIO()
    Image.new("RGB", (3, 3), (9, 8, 7)).save(buf, "PNG")
    with app.extensions["gisgrid"]["sessions"]() as s:
        iid = s.execute(text("SELECT id FROM incident WHERE code = :c"), {"c": sid}).scalar()
        sha = photos.add(s, iid, buf.getvalue(), "test")
        s.commit()
    h = bearer(tokens["reader"])
    [one] = anonymous.get(f"{BASE}/requests/{sid}.json", headers=h).json
    assert one["media_url"] == f"/api/photos/{sha}"
    assert anonymous.get(one["media_url"], headers=h).status_code == 200


def ids(r) -> list[str]:
    assert r.status_code == 200, r.data
    return [x["service_request_id"] for x in r.json]


def test_filters(anonymous, tokens, g):
    a = file(anonymous, tokens["worker"], g, service_code="noise").json[0]["service_request_id"]
    b = file(anonymous, tokens["worker"], g, service_code="fire").json[0]["service_request_id"]
    h = bearer(tokens["reader"])

    def get(query):
        return ids(anonymous.get(f"{BASE}/requests.json?{query}", headers=h))

    everything = get("")
    assert a in everything and b in everything and everything.index(b) < everything.index(a)   # newest first
    assert len(everything) <= 1000
    assert a in get("service_code=noise") and b not in get("service_code=noise")
    assert set(get("service_code=noise,fire")) >= {a, b}
    assert a in get("status=open") and a not in get("status=closed") and a in get("status=open,closed")
    # dates as the service reads them: in China (UTC+8), whose day starts 8 hours before UTC's
    today = datetime.now(CHINA).date()
    tomorrow, yesterday = today + timedelta(days=1), today - timedelta(days=1)
    assert a in get(f"start_date={yesterday}&end_date={tomorrow}")
    assert a in get(f"start_date={yesterday}T00:00:00%2B08:00")
    assert a in get(f"start_date={yesterday}T00:00:00+08:00")        # '+' not encoded: a space, read as '+'
    assert a not in get(f"start_date={tomorrow}T00:00:00+08:00")
    assert a not in get(f"start_date={tomorrow}") and a not in get(f"end_date={yesterday}")
    assert a in get(f"end_date={today}")                              # a date as end_date is the whole day
    assert get(f"service_request_id={b},{a},SJ000000000000000") == [b, a]       # unknown ids are left out
    # service_request_id overrides the other filters (the spec)
    assert get(f"service_request_id={a}&service_code=fire&status=closed") == [a]
    [xa] = xml_requests(anonymous.get(f"{BASE}/requests.xml?service_request_id={a}", headers=h))
    assert xa["service_request_id"] == a and xa["service_code"] == "noise"


@pytest.mark.parametrize("query, says", [
    ("status=pending", "status"), ("service_code=aliens", "service_code"), ("start_date=yesterday", "start_date"),
    ("start_date=2024-05-02&end_date=2024-05-01", "end_date"),
])
@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_bad_filters_are_400(anonymous, tokens, query, says, fmt):
    assert_error(anonymous.get(f"{BASE}/requests.{fmt}?{query}", headers=bearer(tokens["reader"])), 400, fmt, says)


# -- bad input, credentials, jurisdiction --------------------------------------------------------
@pytest.mark.parametrize("change, says", [
    ({"service_code": None}, "service_code is required"),
    ({"service_code": "aliens"}, "unknown service_code 'aliens'"),
    ({"lat": None, "long": None}, "lat and long are required"),
    ({"lat": None, "long": None, "address_string": "幸福路 1 号"}, "needs a location.*address_string"),
    ({"long": None}, "missing: long"),
    ({"lat": "91"}, "lat must be between -90 and 90"),
    ({"lat": "nan"}, "lat must be between"),
    ({"long": "east"}, "long must be a number"),
    ({"long": "181"}, "long must be between -180 and 180"),
    ({"description": "长" * 2001}, "description"),
    ({"colour": "red"}, "unknown field 'colour'"),
])
@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_bad_posts_are_400_and_write_nothing(app, anonymous, tokens, g, change, says, fmt):
    form = {"service_code": "noise", "lat": str(g["lat"]), "long": str(g["lon"]), **change}
    form = {k: v for k, v in form.items() if v is not None}
    before = count(app)
    r = anonymous.post(f"{BASE}/requests.{fmt}", data=form, headers=bearer(tokens["worker"]))
    assert_error(r, 400, fmt, says)
    assert count(app) == before


def test_json_body_is_refused(anonymous, tokens, g):
    r = anonymous.post(f"{BASE}/requests.json", json={"service_code": "noise", "lat": g["lat"], "long": g["lon"]},
                       headers=bearer(tokens["worker"]))
    assert_error(r, 400, "json", "form-urlencoded")


@pytest.mark.parametrize("path", ["services.csv", "services", "requests.yaml", "requests/SJ1.txt", "requests/SJ1",
                                  "discovery.json", "services/noise.html"])
def test_unknown_format_or_endpoint_is_404(anonymous, tokens, path):
    assert_error(anonymous.get(f"{BASE}/{path}", headers=bearer(tokens["reader"])), 404, "json")


def test_unknown_format_on_post_is_404_and_writes_nothing(app, anonymous, tokens, g):
    before = count(app)
    assert_error(file(anonymous, tokens["worker"], g, fmt="csv"), 404, "json", "format")
    assert count(app) == before


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_no_credentials_is_401_in_the_georeport_format(anonymous, g, fmt):
    """401 is raised by auth.load_principal (an app-wide before_request hook) after routing, so
    the blueprint's error handler formats it, not errors.py."""
    for r in (anonymous.get(f"{BASE}/services.{fmt}"), anonymous.get(f"{BASE}/requests.{fmt}"),
              anonymous.post(f"{BASE}/requests.{fmt}", data={"service_code": "noise", "lat": "30", "long": "114"})):
        assert_error(r, 401, fmt, "log in|token")
    assert_error(anonymous.get(f"{BASE}/services.{fmt}", headers=bearer("ggt_made_up")), 401, fmt, "unknown")


def test_what_errors_py_still_formats(anonymous, tokens):
    """Requests that match no route never reach the blueprint: gisgrid's own JSON."""
    r = anonymous.get(f"{BASE}/", headers=bearer(tokens["reader"]))
    assert r.status_code == 404 and r.json["error"] == "Not Found"
    r = anonymous.delete(f"{BASE}/services.json", headers=bearer(tokens["reader"]))
    assert r.status_code == 405 and r.json["error"] == "Method Not Allowed"


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_read_only_token_cannot_post(app, anonymous, tokens, g, fmt):
    before = count(app)
    r = anonymous.post(f"{BASE}/requests.{fmt}", data={"service_code": "noise", "lat": str(g["lat"]),
                                                       "long": str(g["lon"])}, headers=bearer(tokens["reader"]))
    assert_error(r, 403, fmt, "report")
    assert count(app) == before


def test_session_reads_but_posts_need_a_token(app, g):
    from test_incidents import csrf

    viewer, worker = login_as(app, "viewer"), login_as(app, "gridworker")
    assert viewer.get(f"{BASE}/services.json").status_code == 200
    form = {"service_code": "noise", "lat": str(g["lat"]), "long": str(g["lon"])}
    assert_error(worker.post(f"{BASE}/requests.json", data=form), 400, "json", "CSRF")
    before = count(app)
    r = worker.post(f"{BASE}/requests.json", data=form, headers={"X-CSRFToken": csrf(worker)})
    assert_error(r, 400, "json", "api_key is required")
    assert count(app) == before


def test_outsider_neither_sees_nor_finds_it(anonymous, tokens, g):
    sid = file(anonymous, tokens["worker"], g).json[0]["service_request_id"]
    h = bearer(tokens["outsider"])
    for fmt in ("json", "xml"):
        d = assert_error(anonymous.get(f"{BASE}/requests/{sid}.{fmt}", headers=h), 404, fmt, sid)
        assert g["code"] not in d
    assert sid not in ids(anonymous.get(f"{BASE}/requests.json", headers=h))
    assert ids(anonymous.get(f"{BASE}/requests.json?service_request_id={sid}", headers=h)) == []
    r = anonymous.get(f"{BASE}/requests.xml", headers=h)
    assert sid.encode() not in r.data and g["code"].encode() not in r.data
    assert sid in ids(anonymous.get(f"{BASE}/requests.json?service_request_id={sid}",
                                    headers=bearer(tokens["reader"])))


def test_xml_carries_text_that_xml_cannot_hold(anonymous, tokens, g):
    sid = file(anonymous, tokens["worker"], g, description="铃\x07声 <&> ]]>").json[0]["service_request_id"]
    [x] = xml_requests(anonymous.get(f"{BASE}/requests/{sid}.xml", headers=bearer(tokens["reader"])))
    assert x["description"] == "铃声 <&> ]]>"


# -- the status mapping -------------------------------------------------------------------------
def test_status_follows_the_loop_to_closed(app, anonymous, tokens, g):
    from gisgrid.workflow import transition

    sid = file(anonymous, tokens["worker"], g).json[0]["service_request_id"]
    h = bearer(tokens["reader"])
    seen = []
    with app.extensions["gisgrid"]["sessions"]() as s:
        centre, worker = users.get(s, "commander").principal(), users.get(s, "gridworker").principal()
        for who, action, extra in ((centre, "accept", {}), (centre, "dispatch", {}), (worker, "start", {}),
                                   (worker, "feedback", {"note": "已清运"}),
                                   (worker, "evaluate", {"satisfaction": 5}), (centre, "close", {})):
            transition(s, who, sid, action, **extra)
            s.commit()
            [one] = anonymous.get(f"{BASE}/requests/{sid}.json", headers=h).json
            seen.append((one["status"], one["status_notes"]))
    assert seen == [("open", "已受理 (accepted)"), ("open", "已分派 (dispatched)"), ("open", "处置中 (handling)"),
                    ("open", "已反馈 (feedback)"), ("open", "已评价 (evaluated)"), ("closed", "已办结 (closed)")]
    [x] = xml_requests(anonymous.get(f"{BASE}/requests/{sid}.xml", headers=h))
    assert x["status"] == "closed" and x["status_notes"] == "已办结 (closed)" and x["expected_datetime"] is None
    assert x["updated_datetime"] >= x["requested_datetime"]
    assert sid in ids(anonymous.get(f"{BASE}/requests.json?status=closed", headers=h))
    assert sid not in ids(anonymous.get(f"{BASE}/requests.json?status=open", headers=h))


# -- api_key (needs the hook in gisgrid.web.auth.load_principal) ---------------------------------
def test_api_key_is_the_credential(app, anonymous, tokens, g):
    r = anonymous.get(f"{BASE}/services.json?api_key={tokens['reader']}")
    assert r.status_code == 200, r.data
    key = str(uuid.uuid4())
    form = {"api_key": tokens["worker"], "service_code": "noise", "lat": str(g["lat"]), "long": str(g["lon"])}
    r = anonymous.post(f"{BASE}/requests.xml", data=form, headers={"Idempotency-Key": key})
    assert r.status_code == 201, r.data                      # a token request: no CSRF token needed
    [made] = xml_requests(r)
    [one] = anonymous.get(f"{BASE}/requests/{made['service_request_id']}.json?api_key={tokens['reader']}").json
    assert one["status"] == "open"
    assert_error(anonymous.post(f"{BASE}/requests.json", data={**form, "api_key": tokens["reader"]}), 403, "json")
    assert_error(anonymous.get(f"{BASE}/services.json?api_key=ggt_made_up"), 401, "json")
