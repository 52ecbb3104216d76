"""Migrations run up, down to nothing, and up again on a fresh database; the models match."""
from __future__ import annotations

from sqlalchemy import inspect, text

from gisgrid.db import migrate
from gisgrid.db.base import Base
from gisgrid.db.engine import make_engine

from conftest import create_database


def test_upgrade_downgrade_upgrade(db_url):
    eng = make_engine(create_database(db_url, "gisgrid_migrations"))
    try:
        migrate.upgrade(eng)
        assert migrate.current(eng) == migrate.head()
        tables = set(inspect(eng).get_table_names())
        assert set(Base.metadata.tables) <= tables
        with eng.connect() as c:
            gist = {r[0] for r in c.execute(text(
                "SELECT t.relname || '.' || a.attname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
                "JOIN pg_class t ON t.oid = x.indrelid JOIN pg_am am ON am.oid = i.relam "
                "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = x.indkey[0] WHERE am.amname = 'gist'"))}
            geoms = {f"{r[0]}.{r[1]}" for r in c.execute(text(
                "SELECT f_table_name, f_geometry_column FROM geometry_columns WHERE f_table_schema = 'public'"))}
            srids = {r[0] for r in c.execute(text("SELECT DISTINCT srid FROM geometry_columns "
                                                  "WHERE f_table_schema = 'public'"))}
        assert geoms and geoms <= gist, f"geometry columns without a GiST index: {geoms - gist}"
        assert srids == {4326}
        migrate.downgrade(eng, "base")
        assert migrate.current(eng) is None
        assert not (set(Base.metadata.tables) & set(inspect(eng).get_table_names()))
        migrate.upgrade(eng)
        assert migrate.current(eng) == migrate.head()
    finally:
        eng.dispose()


def test_upgrade_at_the_head_loads_no_script(db_url, monkeypatch):
    """The head the files declare is Alembic's; a database there is left alone without Alembic,
    one behind is upgraded by it."""
    assert migrate.declared_head() == migrate.head()
    eng = make_engine(create_database(db_url, "gisgrid_migrations_head"))
    try:
        migrate.upgrade(eng, "0011")
        runs = []
        real = migrate.command.upgrade
        monkeypatch.setattr(migrate.command, "upgrade", lambda *a: runs.append(a[1:]) or real(*a))
        migrate.upgrade(eng)
        assert runs == [("head",)] and migrate.current(eng) == migrate.head()
        migrate.upgrade(eng)
        assert runs == [("head",)]
    finally:
        eng.dispose()


def test_models_and_migrations_agree(db_url):
    """Autogenerate against the migrated schema finds nothing to do (no model drift)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from gisgrid.db.migrations_support import include_object

    eng = make_engine(create_database(db_url, "gisgrid_drift"))
    try:
        migrate.upgrade(eng)
        with eng.connect() as c:
            ctx = MigrationContext.configure(c, opts={"include_object": include_object, "compare_type": True})
            diff = compare_metadata(ctx, Base.metadata)
        assert diff == []
    finally:
        eng.dispose()


def test_0002_encrypts_existing_personal_data_and_downgrade_restores_it(db_url):
    from gisgrid import pii

    eng = make_engine(create_database(db_url, "gisgrid_pii_migration"))
    try:
        migrate.upgrade(eng, "0001")
        with eng.begin() as c:
            c.execute(text("INSERT INTO resident (code, name, id_number, phone, geom) VALUES "
                           "('R1', '张三', '11010519491231002X', '13812345678', ST_SetSRID(ST_MakePoint(114, 30), 4326))"))
        migrate.upgrade(eng)
        with eng.connect() as c:
            r = c.execute(text("SELECT * FROM resident")).mappings().one()
        assert "id_number" not in r and "phone" not in r
        assert r["id_number_masked"] == "1101**********002X" and r["phone_masked"] == "138****5678"
        assert pii.vault().decrypt(r["id_number_enc"].encode()) == "11010519491231002X"
        assert r["id_number_index"] == pii.vault().index("11010519491231002x")
        migrate.downgrade(eng, "0001")
        with eng.connect() as c:
            assert c.execute(text("SELECT id_number, phone FROM resident")).one() == ("11010519491231002X", "13812345678")
    finally:
        eng.dispose()


def test_0004_moves_links_into_link_tables_and_downgrade_puts_them_back(db_url):
    eng = make_engine(create_database(db_url, "gisgrid_link_migration"))
    try:
        migrate.upgrade(eng, "0003")
        with eng.begin() as c:
            c.execute(text("INSERT INTO incident (code, category, description, source, state, geom, grid_code, "
                           "community_code, street_code, district_code) VALUES "
                           "('E1', 'noise', '', 'patrol', 'reported', ST_SetSRID(ST_MakePoint(114, 30), 4326), "
                           "'420103001001001', '420103001001', '420103001000', '420103000000'), "
                           "('E2', 'noise', '', 'patrol', 'reported', ST_SetSRID(ST_MakePoint(114, 30), 4326), "
                           "NULL, NULL, NULL, NULL)"))
        migrate.upgrade(eng)
        with eng.connect() as c:
            assert "grid_code" not in {col["name"] for col in inspect(c).get_columns("incident")}
            rows = c.execute(text("SELECT i.code, l.grid_code, l.district_code FROM incident i "
                                  "LEFT JOIN incident_link l ON l.id = i.id ORDER BY i.code")).all()
            assert rows == [("E1", "420103001001001", "420103000000"), ("E2", None, None)]
        migrate.downgrade(eng, "0003")
        with eng.connect() as c:
            assert c.execute(text("SELECT code, grid_code, street_code FROM incident ORDER BY code")).all() == [
                ("E1", "420103001001001", "420103001000"), ("E2", None, None)]
            assert "incident_link" not in inspect(c).get_table_names()
    finally:
        eng.dispose()
