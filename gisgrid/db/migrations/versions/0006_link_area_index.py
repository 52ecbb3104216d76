"""link tables: codes COLLATE "C" and one (district, street, community, grid) index

Five single-column indexes made a bulk re-link spend most of its time building them (sorting
1,000,000 codes each with the cluster's C.UTF-8 collation). Admin codes nest, so one composite
index serves every jurisdiction filter (authz.scope_sql names each code's parents), and
bytewise "C" comparison is right for digit codes and the fastest to sort.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 03:40:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

LAYERS = ("building", "resident", "place", "patrol_point", "patrol_route", "incident")
COLUMNS = ("grid_id", "grid_code", "community_code", "street_code", "district_code")
CODES = (("grid_code", 20), ("community_code", 12), ("street_code", 12), ("district_code", 12))


def upgrade() -> None:
    for layer in LAYERS:
        link = f"{layer}_link"
        for c in COLUMNS:
            op.drop_index(op.f(f'ix_{link}_{c}'), table_name=link)
        for c, n in CODES:
            op.alter_column(link, c, type_=sa.String(length=n, collation="C"), existing_nullable=True)
        op.create_index(op.f(f'ix_{link}_area'), link, ['district_code', 'street_code', 'community_code', 'grid_code'],
                        unique=False)


def downgrade() -> None:
    for layer in LAYERS:
        link = f"{layer}_link"
        op.drop_index(op.f(f'ix_{link}_area'), table_name=link)
        for c, n in CODES:
            op.alter_column(link, c, type_=sa.String(length=n), existing_nullable=True)
        for c in COLUMNS:
            op.create_index(op.f(f'ix_{link}_{c}'), link, [c], unique=False)
