"""rate-limit counters shared by the web worker processes; index on incident.merged_into_id

Without that index, deleting incidents checks the self-referencing foreign key with a scan of
the whole table per deleted row (70,000 bench rows took over 20 minutes).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 02:45:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('rate_limit',
                    sa.Column('key', sa.String(length=300), nullable=False),
                    sa.Column('count', sa.Integer(), nullable=False),
                    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
                    sa.PrimaryKeyConstraint('key', name=op.f('pk_rate_limit')),
                    prefixes=['UNLOGGED'])
    op.create_index(op.f('ix_incident_merged_into_id'), 'incident', ['merged_into_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_incident_merged_into_id'), table_name='incident')
    op.drop_table('rate_limit')
