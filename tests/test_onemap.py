"""The one map's data API on the demo district: an area's panel, the KPI strip and search,
checked against the database and against the caller's jurisdiction."""
from __future__ import annotations

import pytest
from sqlalchemy import text

from conftest import login_as


def one(app, sql, **params):
    with app.extensions["gisgrid"]["sessions"]() as s:
        return s.execute(text(sql), params).one()


def test_grid_panel_holds_team_households_residents_and_incidents(client, app):
    gid, code, name = one(app, "SELECT id, code, name FROM grid WHERE valid_to IS NULL ORDER BY code LIMIT 1")
    hh, nb = one(app, "SELECT sum(households), count(*) FROM building JOIN building_link USING (id) WHERE grid_id = :g", g=gid)
    nr = one(app, "SELECT count(*) FROM resident JOIN resident_link USING (id) WHERE grid_code = :c", c=code)[0]
    received, open_n, closed = one(app, "SELECT count(*), count(*) FILTER (WHERE state NOT IN ('evaluated', 'closed')), "
                                        "count(*) FILTER (WHERE state = 'closed') FROM incident JOIN incident_link USING (id) WHERE grid_code = :c",
                                   c=code)
    a = client.get(f"/api/areas/{code}/summary").json
    assert (a["name"], a["level"], a["households"], a["buildings"], a["residents"]) == (name, "grid", hh, nb, nr)
    assert a["received"] == received and a["open"] == open_n and 0 < a["resolved"] <= closed
    assert a["resolution_rate"] == round(a["resolved"] / received, 4)
    assert sum(r["n"] for r in a["by_state"]) == received == sum(r["n"] for r in a["by_category"])
    assert {m["role"] for m in a["team"]} >= {"head"} and all(m["phone"] for m in a["team"])
    assert len(a["recent"]) == min(10, received)
    assert a["recent"] == sorted(a["recent"], key=lambda r: r["reported_at"], reverse=True)


def test_community_panel_and_filters(client, app):
    code = one(app, "SELECT community_code FROM grid WHERE valid_to IS NULL ORDER BY code LIMIT 1")[0]
    a = client.get(f"/api/areas/{code}/summary").json
    assert a["level"] == "community" and a["grids"] == one(app, "SELECT count(*) FROM grid WHERE community_code = :c "
                                                                 "AND valid_to IS NULL", c=code)[0]
    f = client.get(f"/api/areas/{code}/summary?category=dispute&state=closed").json
    assert [r["category"] for r in f["by_category"]] == ["dispute"] and [r["state"] for r in f["by_state"]] == ["closed"]
    assert f["received"] == one(app, "SELECT count(*) FROM incident JOIN incident_link USING (id) WHERE community_code = :c AND category = 'dispute' "
                                     "AND state = 'closed'", c=code)[0]


def test_field_worker_sees_only_their_grid_inside_their_community(app):
    worker = login_as(app, "gridworker")
    grid = one(app, "SELECT jurisdiction[1] FROM app_user WHERE username = 'gridworker'")[0]
    community = grid[:12]
    mine = worker.get(f"/api/areas/{grid}/summary").json
    comm = worker.get(f"/api/areas/{community}/summary").json
    assert comm["households"] == mine["households"] and comm["received"] == mine["received"]
    assert login_as(app, "admin").get(f"/api/areas/{community}/summary").json["households"] > mine["households"]
    other = one(app, "SELECT code FROM grid WHERE code <> :g AND valid_to IS NULL ORDER BY code DESC LIMIT 1", g=grid)[0]
    assert worker.get(f"/api/areas/{other}/summary").status_code == 404


def test_kpi_by_view_and_area(client, app):
    everything = client.get("/api/kpi").json
    total, open_n = one(app, "SELECT count(*), count(*) FILTER (WHERE state NOT IN ('evaluated', 'closed')) FROM incident")
    assert everything["received"] == total and everything["open"] == open_n
    w, s, e, n = one(app, "SELECT ST_XMin(x), ST_YMin(x), ST_XMax(x), ST_YMax(x) FROM (SELECT ST_Extent(geom)::geometry "
                          "AS x FROM grid) q")
    half = client.get(f"/api/kpi?bbox={w},{s},{(w + e) / 2},{n}").json
    assert 0 < half["received"] < total
    code = one(app, "SELECT code FROM grid WHERE valid_to IS NULL ORDER BY code LIMIT 1")[0]
    assert client.get(f"/api/kpi?area={code}").json["received"] == client.get(f"/api/areas/{code}/summary").json["received"]
    for bad, field in (("bbox=1,2,3", "bbox"), ("bbox=10,0,5,1", "bbox"), ("area=12", "code"), ("zoom=3", "zoom")):
        r = client.get(f"/api/kpi?{bad}")
        assert r.status_code == 400 and r.json["field"] == field, bad


def test_search_grid_code_address_incident_number(client, app):
    code, name = one(app, "SELECT code, name FROM grid WHERE valid_to IS NULL ORDER BY code LIMIT 1")
    inc = one(app, "SELECT code FROM incident ORDER BY code LIMIT 1")[0]
    addr = one(app, "SELECT address FROM building WHERE address IS NOT NULL ORDER BY code LIMIT 1")[0]
    assert ("grid", code) in {(r["kind"], r["code"]) for r in client.get(f"/api/search?q={code}").json}
    assert ("grid", code) in {(r["kind"], r["code"]) for r in client.get(f"/api/search?q={name}").json}
    assert [r["code"] for r in client.get(f"/api/search?q={inc}").json if r["kind"] == "incident"] == [inc]
    assert any(r["kind"] == "building" and r["label"] == addr for r in client.get(f"/api/search?q={addr}").json)
    assert client.get("/api/search?q=%25_%25").json == []          # LIKE wildcards are literal
    assert client.get("/api/search?q=").status_code == 400


# -- unfiltered figures come from the tallies: they equal a fresh count ---------------------------
def _principals(s):
    from gisgrid import authz

    out = [authz.Principal("admin", "admin")]
    for name in ("gridworker", "commander"):
        role, jur = s.execute(text("SELECT role, jurisdiction FROM app_user WHERE username = :u"), {"u": name}).one()
        out.append(authz.Principal(name, role, tuple(jur or ())))
    return out


def test_kpi_and_panel_from_the_tally_equal_a_fresh_count(app):
    """Every selection the strip and the panel offer (everything, map views that cut grids, each
    level of area), for callers of three jurisdictions, after writes that move every figure the
    tally cannot hold by itself (today's reports, deadlines ahead and past, a rejected closure,
    satisfaction given): the tally figures equal the incidents counted afresh."""
    from gisgrid.layers import summaries

    with app.extensions["gisgrid"]["sessions"]() as s:
        ids = s.execute(text("SELECT i.id FROM incident i JOIN incident_link l ON l.id = i.id "
                             "WHERE l.grid_id IS NOT NULL ORDER BY i.id LIMIT 40")).scalars().all()
        s.execute(text("UPDATE incident SET reported_at = now() WHERE id = ANY(:i)"), {"i": ids[:6]})
        s.execute(text("UPDATE incident SET state = 'handling', deadline = now() + interval '2 days' WHERE id = ANY(:i)"),
                  {"i": ids[6:12]})
        s.execute(text("UPDATE incident SET state = 'dispatched', deadline = now() - interval '2 days' "
                       "WHERE id = ANY(:i)"), {"i": ids[12:16]})
        s.execute(text("UPDATE incident SET state = 'closed', merged_into_id = NULL, satisfaction = 2 WHERE id = ANY(:i)"),
                  {"i": ids[16:20]})
        s.execute(text("UPDATE incident SET satisfaction = 5 WHERE id = ANY(:i)"), {"i": ids[20:26]})
        s.execute(text("INSERT INTO incident_event (incident_id, from_state, to_state, actor, note, at) "
                       "SELECT id, 'evaluated', 'closed', 'admin', '[reject] not fixed', now() "
                       "FROM incident WHERE id = ANY(:i)"), {"i": ids[16:18]})
        w, so, e, n = s.execute(text("SELECT ST_XMin(x), ST_YMin(x), ST_XMax(x), ST_YMax(x) FROM "
                                     "(SELECT ST_Extent(geom)::geometry AS x FROM grid WHERE valid_to IS NULL) q")).one()
        views = [None, (w, so, e, n), (w, so, (w + e) / 2, n), (w + (e - w) / 3, so + (n - so) / 3, e, n - (n - so) / 5)]
        grid, community = s.execute(text("SELECT g.code, g.community_code FROM grid g JOIN incident_link l "
                                         "ON l.grid_id = g.id WHERE l.id = :i"), {"i": ids[0]}).one()
        areas = [grid, community, community[:9] + "000", community[:6] + "000000"]
        for p in _principals(s):
            for bbox in views:
                tallied, fresh = summaries.kpi(s, p, bbox=bbox), summaries.kpi(s, p, bbox=bbox, fresh=True)
                assert tallied == fresh, (p.username, bbox)
            for code in areas:
                try:
                    fresh = summaries.kpi(s, p, code=code, fresh=True)
                except Exception as exc:      # an area outside the caller's jurisdiction: the same refusal
                    with pytest.raises(type(exc)):
                        summaries.kpi(s, p, code=code)
                    continue
                assert summaries.kpi(s, p, code=code) == fresh, (p.username, code)
                assert summaries.summary(s, code, p) == summaries.summary(s, code, p, fresh=True), (p.username, code)
        everything = summaries.kpi(s, _principals(s)[0])
        assert everything["new_today"] >= 6 and everything["overdue"] > 0
        assert everything["resolved"] < s.execute(text("SELECT count(*) FROM incident WHERE state = 'closed' "
                                                       "AND merged_into_id IS NULL")).scalar()
        s.rollback()
