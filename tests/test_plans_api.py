"""The plan API through the Flask client as the demo planner: JSON errors with status and field,
a stale version is a 409, a proposal names its exceptions. Plans are discarded, never published,
so the demo grids other tests read stay as they are."""
from __future__ import annotations

import re

import pytest
from sqlalchemy import text

from conftest import login_as


@pytest.fixture
def planner(app):
    c = login_as(app, "planner")
    token = re.search(r'name="csrf-token" content="([^"]+)"', c.get("/planner").get_data(as_text=True)).group(1)
    c.environ_base["HTTP_X_CSRFTOKEN"] = token
    return c


@pytest.fixture
def community(app):
    with app.extensions["gisgrid"]["sessions"]() as s:
        return s.execute(text("SELECT community_code FROM grid WHERE valid_to IS NULL ORDER BY code DESC LIMIT 1")).scalar()


def test_edit_conflict_propose_and_states(planner, community):
    r = planner.post("/api/plans", json={"scope": community, "target": 250, "tolerance": 0.1})
    assert r.status_code == 201
    plan = r.json
    pid, first = plan["id"], plan["cells"][0]["properties"]["code"]
    try:
        second = plan["cells"][1]["properties"]["code"]
        r = planner.post(f"/api/plans/{pid}/edits", json={"op": "merge", "codes": [first, second],
                                                          "versions": {first: 0, second: 0}})
        assert r.status_code == 200 and r.json["seq"] == 1
        r = planner.post(f"/api/plans/{pid}/edits", json={"op": "merge", "codes": [first, second],
                                                          "versions": {first: 0, second: 0}})
        assert r.status_code == 409 and r.json["field"] == "versions" and "version 1" in r.json["message"]
        r = planner.post(f"/api/plans/{pid}/edits", json={"op": "split", "code": "nope", "versions": {"nope": 0}})
        assert r.status_code == 404 and r.json["field"] == "code"
        r = planner.post(f"/api/plans/{pid}/edits", json={"op": "merge", "versions": {}, "colour": "red"})
        assert r.status_code == 400 and r.json["field"] == "colour"
        r = planner.post(f"/api/plans/{pid}/propose", json={"keep_current": True})
        assert r.status_code == 200
        prop = r.json["proposal"]
        assert prop["parts"] == len(r.json["cells"]) and prop["keep_current"] is True
        assert all(e["reason"] in ("oversized_building", "units_too_coarse", "isolated") for e in prop["exceptions"])
        assert r.json["check"]["counts"]["gap"] == 0 and r.json["check"]["counts"]["overlap"] == 0
        assert planner.post(f"/api/plans/{pid}/propose", json={"tolerance": 2}).json["field"] == "tolerance"
        d = planner.get(f"/api/plans/{pid}/diff").json
        assert d["layers"]["building"]["count"] == prop["households_moved"]
        assert planner.post(f"/api/plans/{pid}/actions/submit").json["state"] == "review"
        r = planner.post(f"/api/plans/{pid}/undo")
        assert r.status_code == 409 and "only a draft" in r.json["message"]
        assert planner.post(f"/api/plans/{pid}/actions/reopen").json["state"] == "draft"
        assert planner.post(f"/api/plans/{pid}/undo").json["undone"]["op"] == "propose"
        r = planner.post(f"/api/plans/{pid}/actions/explode")
        assert r.status_code == 400 and r.json["field"] == "action"
    finally:
        assert planner.post(f"/api/plans/{pid}/actions/discard").json["state"] == "discarded"
