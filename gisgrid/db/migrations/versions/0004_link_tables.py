"""links move out of the layer rows into one narrow table per linked layer

A bulk re-link used to rewrite every wide layer row (and all of its indexes) to change five
columns; now it builds a new narrow ``<layer>_link`` table and swaps it in (gisgrid.layers.linking).
Deleting a record deletes its link row through a statement-level trigger; link tables carry no
foreign keys, so that swap never locks the layer tables.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 02:50:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

LAYERS = ("building", "resident", "place", "patrol_point", "patrol_route", "incident")
COLUMNS = ("grid_id", "grid_code", "community_code", "street_code", "district_code")
#: the link columns as 0001 made them on each layer (grid_code was not indexed there)
OLD_INDEXED = ("grid_id", "community_code", "street_code", "district_code")

UNLINK = """
CREATE FUNCTION gisgrid_unlink() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DELETE FROM %I k USING gone WHERE k.id = gone.id', TG_TABLE_NAME || '_link');
    RETURN NULL;
END $$
"""


def _link_columns():
    return [sa.Column('grid_id', sa.Integer(), nullable=True),
            sa.Column('grid_code', sa.String(length=20), nullable=True),
            sa.Column('community_code', sa.String(length=12), nullable=True),
            sa.Column('street_code', sa.String(length=12), nullable=True),
            sa.Column('district_code', sa.String(length=12), nullable=True)]


def upgrade() -> None:
    op.execute(UNLINK)
    cols = ", ".join(COLUMNS)
    for layer in LAYERS:
        link = f"{layer}_link"
        op.create_table(link, sa.Column('id', sa.Integer(), autoincrement=False, nullable=False), *_link_columns(),
                        sa.PrimaryKeyConstraint('id', name=op.f(f'pk_{link}')))
        op.execute(f"INSERT INTO {link} (id, {cols}) SELECT id, {cols} FROM {layer} "
                   "WHERE num_nonnulls(grid_id, community_code, street_code, district_code) > 0")
        for c in COLUMNS:
            op.create_index(op.f(f'ix_{link}_{c}'), link, [c], unique=False)
        for c in OLD_INDEXED:
            op.drop_index(op.f(f'ix_{layer}_{c}'), table_name=layer)
        op.drop_constraint(op.f(f'fk_{layer}_grid_id_grid'), layer, type_='foreignkey')
        for c in COLUMNS:
            op.drop_column(layer, c)
        op.execute(f"CREATE TRIGGER unlink AFTER DELETE ON {layer} REFERENCING OLD TABLE AS gone "
                   "FOR EACH STATEMENT EXECUTE FUNCTION gisgrid_unlink()")


def downgrade() -> None:
    for layer in LAYERS:
        link = f"{layer}_link"
        op.execute(f"DROP TRIGGER unlink ON {layer}")
        for col in _link_columns():
            op.add_column(layer, col)
        op.execute(f"UPDATE {layer} r SET " + ", ".join(f"{c} = k.{c}" for c in COLUMNS)
                   + f" FROM {link} k WHERE k.id = r.id")
        op.create_foreign_key(op.f(f'fk_{layer}_grid_id_grid'), layer, 'grid', ['grid_id'], ['id'], ondelete='SET NULL')
        for c in OLD_INDEXED:
            op.create_index(op.f(f'ix_{layer}_{c}'), layer, [c], unique=False)
        op.drop_table(link)
    op.execute("DROP FUNCTION gisgrid_unlink()")
