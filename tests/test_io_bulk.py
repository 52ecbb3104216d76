"""The large-import paths (gisgrid.layers.writes.add_frame, linking.grids_of_points, db.bulk):
one audit row per import, GiST indexes rebuilt past ``BULK_FRACTION`` and restored when the
import fails, points located in-process by the same rule as the SQL linking, point EWKB packed
by numpy, binary COPY. Real PostGIS, the session rolled back after each test.

conftest's ``two_grids``, lon 113.99–114.03 × lat 29.99–30.02 the district::

    30.01 +--------+--------+
          |   G1   |   G2   |      community C = G1 ∪ G2; G1's code sorts first
    30.00 +--------+--------+
       114.00   114.01   114.02
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import shapely
from sqlalchemy import text

from gisgrid.db import bulk
from gisgrid.errors import DuplicateCode
from gisgrid.io import importer
from gisgrid.layers import audit, linking, writes

from conftest import COMMUNITY


def residents_csv(path, n, start=0, x0=114.0005):
    """``n`` residents on a line across G1 and G2, lon/lat in WGS84, no building."""
    x = np.linspace(x0, 114.0195, n)
    pd.DataFrame({"code": [f"BULK-{start + i:05d}" for i in range(n)], "name": "王芳", "gender": "F",
                  "birth_date": "1990-02-03", "lon": x, "lat": 30.005}).to_csv(path, index=False)
    return path


def stored_state(session):
    """What a failed import must leave as it was: residents, their links, audit rows, max id."""
    return session.execute(text(
        "SELECT (SELECT count(*) FROM resident), (SELECT count(*) FROM resident_link), "
        "(SELECT count(*) FROM audit_log), (SELECT max(id) FROM resident)")).one()


def gist_indexes(session, table):
    return session.execute(text("SELECT indexname FROM pg_indexes WHERE tablename = :t AND indexdef LIKE '%gist%' "
                                "ORDER BY 1"), {"t": table}).scalars().all()


def test_one_audit_row_per_import_names_file_counts_and_ids(two_grids, tmp_path):
    path = residents_csv(tmp_path / "居民.csv", 40)
    before = two_grids.execute(text("SELECT count(*) FROM audit_log")).scalar()
    rep = importer.run(two_grids, "resident", path, actor="planner")
    assert rep.ok and rep.inserted == 40, rep.text()
    rows = two_grids.execute(text("SELECT * FROM audit_log ORDER BY id")).all()[before:]
    assert len(rows) == 1                                     # not one per record
    row = two_grids.get(audit.AuditLog, rows[0].id)
    assert (row.actor, row.action, row.entity, row.entity_id) == ("planner", "import", "resident", None)
    after = row.after
    assert after["file"] == "居民.csv" and after["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (after["mode"], after["inserted"], after["updated"], after["deleted"], after["skipped"]) == \
        ("insert", 40, 0, 0, 0)
    ids = audit.imported_ids(row)
    stored = two_grids.execute(text("SELECT id FROM resident WHERE code LIKE 'BULK-%' ORDER BY id")).scalars().all()
    assert ids == stored and after["updated_ids"] == []
    # an upsert of some of them and one new: updated and created ids apart
    residents_csv(path, 3, start=38)
    rep = importer.run(two_grids, "resident", path, mode="upsert", actor="planner")
    assert (rep.inserted, rep.updated) == (1, 2), rep.text()
    last = two_grids.scalars(audit.AuditLog.__table__.select().order_by(audit.AuditLog.id.desc()).limit(1)).first()
    row = two_grids.get(audit.AuditLog, last)
    assert audit.imported_ids(row, "updated_ids") == stored[-2:]
    new = two_grids.execute(text("SELECT id FROM resident WHERE code = 'BULK-00040'")).scalar()
    assert audit.imported_ids(row) == [new]


def test_imported_ids_refuses_other_rows():
    with pytest.raises(ValueError, match="not an import"):
        audit.imported_ids(audit.AuditLog(id=7, action="create", after={"code": "R1"}))


def test_large_import_rebuilds_the_gist_index_and_links_every_row(two_grids, tmp_path, monkeypatch):
    monkeypatch.setattr(writes, "BULK_MIN_ROWS", 10)
    assert gist_indexes(two_grids, "resident") == ["ix_resident_geom"]
    rep = importer.run(two_grids, "resident", residents_csv(tmp_path / "r.csv", 50), actor="t")
    assert rep.ok and rep.inserted == 50, rep.text()
    assert gist_indexes(two_grids, "resident") == ["ix_resident_geom"]      # rebuilt, same name
    # the index answers spatial queries over the new rows
    two_grids.execute(text("SET LOCAL enable_seqscan = off"))
    n = two_grids.execute(text("SELECT count(*) FROM resident WHERE geom && ST_MakeEnvelope(114.0, 30.0, 114.01, "
                               "30.01, 4326) AND code LIKE 'BULK-%'")).scalar()
    assert n == 25
    links = two_grids.execute(text(
        "SELECT l.grid_code, count(*) FROM resident r JOIN resident_link l USING (id) WHERE r.code LIKE 'BULK-%' "
        "GROUP BY 1 ORDER BY 1")).all()
    assert links == [(COMMUNITY + "001", 25), (COMMUNITY + "002", 25)]


def test_a_failing_large_import_leaves_table_index_links_and_audit_unchanged(two_grids, tmp_path, monkeypatch):
    monkeypatch.setattr(writes, "BULK_MIN_ROWS", 10)
    importer.run(two_grids, "resident", residents_csv(tmp_path / "r.csv", 20), actor="t")
    state = lambda: stored_state(two_grids)  # noqa: E731
    before = state()
    # a frame that passed no validation: its last code is stored already, so the INSERT fails
    # after the GiST index was dropped
    frame = pd.DataFrame({"code": [f"NEW-{i}" for i in range(30)] + ["BULK-00000"], "name": "赵六",
                          "geom": list(shapely.points(np.full(31, 114.005), np.full(31, 30.005)))})
    with pytest.raises(DuplicateCode, match="resident import of 31 rows"):
        writes.add_frame(two_grids, "resident", frame, actor="t")
    assert state() == before
    assert gist_indexes(two_grids, "resident") == ["ix_resident_geom"]


def test_small_imports_keep_their_indexes(two_grids, monkeypatch):
    dropped = []
    monkeypatch.setattr(writes, "BULK_MIN_ROWS", 1)
    monkeypatch.setattr(writes, "BULK_FRACTION", 10.0)          # 10x the table: never reached here
    real = two_grids.execute

    def spy(stmt, *a, **kw):
        if str(stmt).startswith("DROP INDEX"):
            dropped.append(str(stmt))
        return real(stmt, *a, **kw)

    monkeypatch.setattr(two_grids, "execute", spy)
    frame = pd.DataFrame({"code": ["S1"], "name": "钱七", "geom": [shapely.Point(114.005, 30.005)]})
    assert writes.add_frame(two_grids, "resident", frame)["inserted"] == 1
    assert dropped == []


@pytest.mark.parametrize("x, y, grid", [
    (114.005, 30.005, "001"),        # inside G1
    (114.015, 30.005, "002"),        # inside G2
    (114.01, 30.005, "001"),         # on the shared edge: the lowest code
    (114.01, 30.01, "001"),          # on the shared corner
    (114.02, 30.005, "002"),         # on G2's outer edge: boundary included
    (114.025, 30.015, None),         # in the district, in no grid
])
def test_grids_of_points_follows_the_sql_rule(two_grids, x, y, grid):
    found = linking.grids_of_points(two_grids, [shapely.Point(x, y), None])
    by_sql = two_grids.execute(text(
        f"WITH src AS (SELECT 1 AS id, ST_SetSRID(ST_MakePoint(:x, :y), 4326) AS pt) {linking.LOCATE_SQL}"),
        {"x": x, "y": y}).one()
    assert found[1] == -1
    assert (found[0] if found[0] >= 0 else None) == by_sql.grid_id
    code = two_grids.execute(text("SELECT code FROM grid WHERE id = :i"), {"i": int(found[0])}).scalar()
    assert code == (None if grid is None else COMMUNITY + grid)


def test_unlinked_points_get_their_admin_codes(two_grids, tmp_path):
    path = tmp_path / "r.csv"
    pd.DataFrame({"code": ["OUT1"], "name": "孙八", "lon": [114.025], "lat": [30.015]}).to_csv(path, index=False)
    assert importer.run(two_grids, "resident", path).inserted == 1
    link = two_grids.execute(text("SELECT l.* FROM resident r JOIN resident_link l USING (id) WHERE code = 'OUT1'")).one()
    assert link.grid_id is None and link.district_code == "420103000000"


def test_point_ewkb_is_what_geos_writes():
    geoms = np.array([shapely.Point(114.0123456789, 30.5), None, shapely.Point(-0.5, 1e-9)], dtype=object)
    want = [None if g is None else shapely.to_wkb(shapely.set_srid(g, 4326), hex=True, include_srid=True)
            for g in geoms]
    assert list(bulk.ewkb_hex(geoms)) == want
    assert list(bulk.ewkb_hex(geoms, hex=False)) == [None if w is None else bytes.fromhex(w) for w in want]
    mixed = np.array([shapely.Point(1, 2), shapely.box(0, 0, 1, 1)], dtype=object)     # GEOS writes these
    assert list(bulk.ewkb_hex(mixed)) == list(shapely.to_wkb(shapely.set_srid(mixed, 4326), hex=True,
                                                             include_srid=True))


def test_binary_copy_round_trips_every_mapped_type(session):
    from datetime import date, datetime, timezone

    session.execute(text("CREATE TEMP TABLE t (a varchar(5), b date, c integer, d bigint, e double precision, "
                         "f boolean, g timestamptz, h geometry(Point, 4326), i text)"))
    cols = ["a", "b", "c", "d", "e", "f", "g", "h", "i"]
    types = bulk.binary_types(session, "t", cols)
    row = ["中文", date(2026, 1, 2), 7, 2**40, 1.5, True, datetime(2026, 5, 1, 8, tzinfo=timezone.utc),
           bulk.ewkb_hex([shapely.Point(114, 30)], hex=False)[0], None]
    bulk.copy_binary(session, "t", pd.DataFrame([row], columns=cols, dtype=object), types)
    got = session.execute(text("SELECT a, b, c, d, e, f, g, ST_AsText(h), i FROM t")).one()
    assert list(got) == row[:7] + ["POINT(114 30)", None]
    session.execute(text("CREATE TEMP TABLE u (j jsonb)"))
    assert bulk.binary_types(session, "u", ["j"]) is None              # CSV for the rest


def test_a_streamed_import_checks_every_chunk(two_grids, tmp_path, monkeypatch):
    """Chunks of 7 rows: the problems of every chunk reported with the file's row numbers,
    nothing written; a clean file written whole, one audit row, ids in file order."""
    monkeypatch.setattr(writes, "BULK_MIN_ROWS", 10)
    monkeypatch.setattr(importer, "CHUNK_ROWS", 7)
    path = residents_csv(tmp_path / "r.csv", 30)
    frame = pd.read_csv(path, dtype=str)
    frame.loc[3, "lat"] = "north"           # chunk 1
    frame.loc[20, "gender"] = "X"           # chunk 3
    frame.loc[29, "code"] = "BULK-00002"    # the last chunk repeats a code of the first
    frame.to_csv(path, index=False)
    state = lambda: stored_state(two_grids)  # noqa: E731
    before = state()
    rep = importer.run(two_grids, "resident", path, actor="t")
    assert not rep.written and rep.valid == 26
    assert sorted((p.row, p.field) for p in rep.problems) == \
        [(4, "code"), (5, "building_code"), (5, "lat"), (22, "gender"), (31, "code")]
    assert state() == before and gist_indexes(two_grids, "resident") == ["ix_resident_geom"]
    rep = importer.run(two_grids, "resident", residents_csv(path, 30), actor="t")
    assert rep.written and rep.inserted == 30, rep.text()
    ids = two_grids.execute(text("SELECT id FROM resident WHERE code LIKE 'BULK-%' ORDER BY code")).scalars().all()
    assert ids == sorted(ids) and ids == list(range(ids[0], ids[0] + 30))
    row = two_grids.execute(text("SELECT id FROM audit_log WHERE action = 'import' ORDER BY id DESC LIMIT 1")).scalar()
    assert audit.imported_ids(two_grids.get(audit.AuditLog, row)) == ids


def test_a_streamed_import_of_stored_codes_reports_them_and_writes_nothing(two_grids, tmp_path, monkeypatch):
    monkeypatch.setattr(writes, "BULK_MIN_ROWS", 10)
    monkeypatch.setattr(importer, "CHUNK_ROWS", 7)
    importer.run(two_grids, "resident", residents_csv(tmp_path / "a.csv", 3, start=12), actor="t")
    state = lambda: stored_state(two_grids)  # noqa: E731
    before = state()
    rep = importer.run(two_grids, "resident", residents_csv(tmp_path / "b.csv", 30), actor="t")
    assert not rep.written and rep.valid == 27
    assert [(p.row, p.field, p.value) for p in sorted(rep.problems, key=lambda p: p.row)] == \
        [(14, "code", "BULK-00012"), (15, "code", "BULK-00013"), (16, "code", "BULK-00014")]
    assert "already in the database" in rep.problems[0].reason
    assert state() == before and gist_indexes(two_grids, "resident") == ["ix_resident_geom"]


def test_bulk_links_equal_the_sql_rule(two_grids, tmp_path, monkeypatch):
    """Points on edges, corners, outside every grid: the link rows a bulk import copies in are
    what linking.relink computes in SQL."""
    monkeypatch.setattr(writes, "BULK_MIN_ROWS", 10)
    xs = [114.005, 114.015, 114.01, 114.01, 114.02, 114.025, 114.0, 113.995] * 3
    ys = [30.005, 30.005, 30.005, 30.01, 30.005, 30.015, 30.0, 30.005] * 3
    path = tmp_path / "r.csv"
    pd.DataFrame({"code": [f"E{i:02d}" for i in range(len(xs))], "name": "周九", "lon": xs, "lat": ys}).to_csv(path, index=False)
    assert importer.run(two_grids, "resident", path, actor="t").inserted == len(xs)
    q = text("SELECT r.code, l.grid_id, l.grid_code, l.community_code, l.street_code, l.district_code "
             "FROM resident r LEFT JOIN resident_link l USING (id) WHERE r.code LIKE 'E%' ORDER BY r.code")
    copied = two_grids.execute(q).all()
    assert all(r.district_code for r in copied) and any(r.grid_id is None for r in copied)
    linking.relink(two_grids, ("resident",))
    assert two_grids.execute(q).all() == copied


def test_a_failure_after_the_rows_went_in_leaves_nothing(two_grids, tmp_path, monkeypatch):
    """The link COPY fails on the second thread after a chunk's rows were inserted: the import
    raises and rows, links, audit, max id and the GiST index are as before."""
    monkeypatch.setattr(writes, "BULK_MIN_ROWS", 10)
    monkeypatch.setattr(importer, "CHUNK_ROWS", 7)
    state = lambda: stored_state(two_grids)  # noqa: E731
    before = state()
    calls = []

    def failing(conn, table, links, packed=None):
        calls.append(len(links))
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(conn, table, links, packed)

    real = linking.copy_links
    monkeypatch.setattr(linking, "copy_links", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        importer.run(two_grids, "resident", residents_csv(tmp_path / "r.csv", 30), actor="t")
    assert calls[:2] == [7, 7] and state() == before
    assert gist_indexes(two_grids, "resident") == ["ix_resident_geom"]


def test_packed_binary_copy_round_trips_nulls_text_and_numbers(session):
    """The numpy-packed stream (bulk.pack_binary) against PostgreSQL's own reading of it: every
    packed type, NULL anywhere, multi-byte and empty text, extremes of each integer; a value
    that does not fit its type is not packed (psycopg's write_row then names it)."""
    from datetime import date

    session.execute(text("CREATE TEMP TABLE p (a varchar(9), b date, c smallint, d integer, e bigint, "
                         "f double precision, g boolean, h geometry(Point, 4326), i text)"))
    cols = list("abcdefghi")
    types = bulk.binary_types(session, "p", cols)
    pt = bulk.ewkb_hex([shapely.Point(114.5, -30.25)], hex=False)[0]
    rows = [["中文\tx", date(1900, 1, 1), -2**15, 2**31 - 1, -2**63, -0.5, False, pt, ""],
            [None, None, None, None, None, None, None, None, None],
            ["", date(2099, 12, 31), 2**15 - 1, -2**31, 2**63 - 1, 1e300, True, None, "a\\b\nc"]]
    frame = pd.DataFrame(rows, columns=cols, dtype=object)
    assert bulk.pack_binary(frame, types) is not None
    bulk.copy_binary(session, "p", frame, types)
    got = session.execute(text("SELECT a, b, c, d, e, f, g, ST_AsText(h), i FROM p")).all()
    assert [list(r) for r in got] == [r[:7] + ["POINT(114.5 -30.25)" if r[7] else None] + r[8:] for r in rows]
    assert bulk.pack_binary(pd.DataFrame([[2**31]], columns=["d"], dtype=object), ["int4"]) is None
    assert bulk.pack_binary(pd.DataFrame([[1.5]], columns=["d"], dtype=object), ["int4"]) is None


def test_a_streamed_import_reports_what_a_whole_file_import_reports(two_grids, tmp_path, monkeypatch):
    path = residents_csv(tmp_path / "r.csv", 30)
    frame = pd.read_csv(path, dtype=str)
    frame.loc[2, "lon"] = "120.5"            # outside the district
    frame.loc[9, "birth_date"] = "1990-13-01"
    frame.loc[17, "name"] = " "
    frame.loc[25, "code"] = "BULK-00009"
    frame.to_csv(path, index=False)
    whole = importer.run(two_grids, "resident", path, actor="t").to_dict()
    monkeypatch.setattr(writes, "BULK_MIN_ROWS", 10)
    monkeypatch.setattr(importer, "CHUNK_ROWS", 7)
    streamed = importer.run(two_grids, "resident", path, actor="t").to_dict()
    assert streamed == whole and len(whole["problems"]) >= 5 and not whole["written"]
