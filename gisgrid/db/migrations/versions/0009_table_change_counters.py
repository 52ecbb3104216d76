"""change counters: table_change and a statement trigger on every layer table; rejection index

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23 02:30:00

Tiles carry an ETag from the version of the tables they draw (``gisgrid.layers.changes``): each
INSERT/UPDATE/DELETE/TRUNCATE statement on a tracked table adds 1 to one counter row of that
table (the shard is the writer's backend pid, so concurrent writers seldom share a row).
"""
from alembic import op
import sqlalchemy as sa

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

# as gisgrid.layers.changes.TRACKED when this migration was written (migrations do not import
# the live code, which may move on)
TRACKED = ("admin_area", "grid", "building", "resident", "place", "patrol_point", "patrol_route", "incident",
           "incident_event", "staff", "grid_assignment")
SHARDS = 16


def upgrade() -> None:
    op.create_table('table_change',
    sa.Column('tbl', sa.String(length=40), nullable=False),
    sa.Column('shard', sa.SmallInteger(), nullable=False),
    sa.Column('n', sa.BigInteger(), server_default='0', nullable=False),
    sa.PrimaryKeyConstraint('tbl', 'shard', name=op.f('pk_table_change'))
    )
    op.execute(f"""
        CREATE FUNCTION gisgrid_count_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO table_change (tbl, shard, n) VALUES (TG_TABLE_NAME, pg_backend_pid() % {SHARDS}, 1)
            ON CONFLICT (tbl, shard) DO UPDATE SET n = table_change.n + 1;
            RETURN NULL;
        END $$""")
    for t in TRACKED:
        op.execute(f"CREATE TRIGGER count_change AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {t} "
                   "FOR EACH STATEMENT EXECUTE FUNCTION gisgrid_count_change()")
        op.execute(f"INSERT INTO table_change (tbl, shard, n) VALUES ('{t}', 0, 1)")
    # "resolved" excludes rejected orders: a partial index holds the few rejection events
    op.create_index('ix_incident_event_rejected', 'incident_event', ['incident_id'], unique=False,
                    postgresql_where=sa.text("note LIKE '[reject]%'"))


def downgrade() -> None:
    op.drop_index('ix_incident_event_rejected', table_name='incident_event',
                  postgresql_where=sa.text("note LIKE '[reject]%'"))
    for t in TRACKED:
        op.execute(f"DROP TRIGGER IF EXISTS count_change ON {t}")
    op.execute("DROP FUNCTION IF EXISTS gisgrid_count_change()")
    op.drop_table('table_change')
