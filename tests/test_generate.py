"""The demo district: deterministic, big enough, exact coverages, everything linked."""
from __future__ import annotations

import hashlib
from datetime import date

import pandas as pd
import pytest
import shapely
from sqlalchemy import text

from gisgrid import generate


@pytest.fixture(scope="module")
def demo():
    return generate.build("demo", seed=7, until=date(2026, 11, 1))


def digest(frames):
    """Of everything but ciphertexts (Fernet uses a random IV and a timestamp by design)."""
    h = hashlib.sha256()
    for name, df in frames.items():
        df = df.drop(columns=[c for c in df.columns if c.endswith("_enc")])
        h.update(name.encode())
        h.update(pd.util.hash_pandas_object(df.astype(str), index=False).values.tobytes())
    return h.hexdigest()


def test_same_seed_same_data_other_seed_other_data(demo):
    assert digest(generate.build("demo", seed=7, until=date(2026, 11, 1))) == digest(demo)
    assert digest(generate.build("demo", seed=8, until=date(2026, 11, 1))) != digest(demo)


def test_personal_data_is_encrypted_masked_and_decryptable(demo):
    from gisgrid import pii

    r = demo["resident"].iloc[0]
    clear = pii.vault().decrypt(r.id_number_enc.encode())
    assert pii.check_id_number(clear) == clear and pii.mask_id(clear) == r.id_number_masked
    assert r.id_number_masked[4:14] == "*" * 10 and r.phone_masked[3:7] == "****"
    assert "id_number" not in demo["resident"] and "phone" not in demo["resident"]
    assert pii.vault().index(clear) == r.id_number_index


def test_demo_meets_the_sizes_the_issue_names(demo):
    admin = demo["admin_area"]
    drawn = admin[admin.geom.notna()]
    assert (drawn.level == "street").sum() >= 3
    assert (drawn.level == "community").sum() >= 10
    assert len(demo["grid"]) >= 100
    assert len(demo["building"]) >= 3000 and demo["building"].households.sum() > 0
    assert len(demo["resident"]) >= 10_000
    assert len(demo["patrol_point"]) >= 50
    assert len(demo["incident"]) >= 2000
    states = set(demo["incident"].state)
    assert {"closed", "handling", "dispatched"} <= states
    roles = demo["grid_assignment"].groupby("grid_id").role.agg(set)
    assert all({"head", "assistant", "informant"} <= r for r in roles)
    assert demo["grid_assignment"].query("role == 'head'").grid_id.is_unique


def test_real_names_and_codes_are_used(demo):
    div = generate.read_divisions()
    grid = demo["grid"]
    assert set(grid.community_code) <= set(div.code)
    assert grid.code.str.len().eq(15).all() and (grid.code.str[:12] == grid.community_code).all()
    assert set(demo["admin_area"].code) == set(div.code)


def test_grids_cover_each_community_exactly(demo):
    grids = shapely.from_wkb(demo["grid"].geom.to_numpy())
    admin = demo["admin_area"].set_index("code")
    for code, idx in demo["grid"].groupby("community_code").groups.items():
        cells = grids[idx]
        assert shapely.coverage_is_valid(cells), code
        community = shapely.from_wkb(admin.loc[code, "geom"])
        union = shapely.coverage_union_all(cells)
        assert union.geom_type == "Polygon", f"{code} is not one contiguous polygon"
        assert shapely.symmetric_difference(union, community).area < 1e-12


def test_households_near_target_per_grid(demo):
    b = demo["building"]
    per_grid = b.groupby(b.code.str[:15]).households.sum()
    assert 200 <= per_grid.median() <= 300


def test_load_links_everything_and_keeps_outliers(session, demo):
    generate.load(session, demo, replace=True)
    q = lambda sql: session.execute(text(sql)).scalar()  # noqa: E731
    assert q("SELECT count(*) FROM building NATURAL LEFT JOIN building_link WHERE grid_id IS NULL") == 0
    assert q("SELECT count(*) FROM resident NATURAL LEFT JOIN resident_link WHERE grid_id IS NULL") == 0
    unlinked = q("SELECT count(*) FROM incident NATURAL LEFT JOIN incident_link WHERE grid_id IS NULL")
    assert 0 < unlinked < 40
    # unlinked incidents are kept and routed to the district
    assert q("SELECT count(*) FROM incident NATURAL LEFT JOIN incident_link WHERE grid_id IS NULL AND district_code = '420103000000'") == unlinked
    assert q("SELECT count(*) FROM incident") == len(demo["incident"])
    # a building's stored grid is the grid that contains its point on surface
    assert q("SELECT count(*) FROM building b JOIN building_link l ON l.id = b.id JOIN grid g ON g.id = l.grid_id "
             "WHERE NOT ST_Intersects(g.geom, b.anchor)") == 0
    with pytest.raises(Exception, match="already holds grids"):
        generate.load(session, demo)


def test_synthetic_city_path_small():
    """The city scale's code path (synthetic codes under province 99, several districts) at toy size."""
    tiny = generate.Scale("tiny", 200, 3, 4, 250, 500, 300, 12, 20, districts=2, synthetic_streets=2,
                          synthetic_communities=2)
    f = generate.build(tiny, seed=1, until=date(2026, 1, 1))
    assert len(f["grid"]) == 2 * 2 * 2 * 3
    assert f["admin_area"].code.str.startswith("99").all()
    assert (f["admin_area"].level == "district").sum() == 2
    grids = shapely.from_wkb(f["grid"].geom.to_numpy())
    assert shapely.coverage_is_valid(grids)
    districts = f["admin_area"].query("level == 'district'")
    assert districts.geom.notna().all()
    assert len(f["incident"]) == 300 and len(f["resident"]) == 500
