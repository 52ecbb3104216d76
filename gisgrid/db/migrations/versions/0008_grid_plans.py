"""grid plans: plan parameters, edit sequence, edit history for undo, publish/rollback bookkeeping

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 02:40:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_constraint(op.f('ck_grid_plan_state'), 'grid_plan', type_='check')
    op.alter_column('grid_plan', 'state', type_=sa.String(length=12), existing_nullable=False,
                    existing_server_default='draft')
    op.create_check_constraint('state', 'grid_plan',
                               "state IN ('draft', 'review', 'published', 'discarded', 'rolled_back')")
    op.add_column('grid_plan', sa.Column('target', sa.Integer(), server_default='250', nullable=False))
    op.add_column('grid_plan', sa.Column('tolerance', sa.Float(), server_default='0.1', nullable=False))
    op.add_column('grid_plan', sa.Column('seq', sa.Integer(), server_default='0', nullable=False))
    op.add_column('grid_plan', sa.Column('base_grid_ids', sa.ARRAY(sa.Integer()), server_default='{}', nullable=False))
    op.add_column('grid_plan', sa.Column('replaced_grid_ids', sa.ARRAY(sa.Integer()), nullable=True))
    op.add_column('grid_plan', sa.Column('published_by', sa.String(length=100), nullable=True))
    op.add_column('grid_plan', sa.Column('rolled_back_at', sa.DateTime(timezone=True), nullable=True))
    op.create_check_constraint('target', 'grid_plan', 'target > 0')
    op.create_check_constraint('tolerance', 'grid_plan', 'tolerance >= 0 AND tolerance < 1')
    op.create_table('plan_edit',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('plan_id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('op', sa.String(length=10), nullable=False),
    sa.Column('actor', sa.String(length=100), nullable=True),
    sa.Column('at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('before', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('after', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('note', sa.String(length=500), nullable=True),
    sa.Column('undone_by', sa.String(length=100), nullable=True),
    sa.Column('undone_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("op IN ('replace', 'reshape', 'split', 'merge', 'propose')", name=op.f('ck_plan_edit_op')),
    sa.ForeignKeyConstraint(['plan_id'], ['grid_plan.id'], name=op.f('fk_plan_edit_plan_id_grid_plan'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_plan_edit'))
    )
    op.create_index(op.f('ix_plan_edit_plan_id'), 'plan_edit', ['plan_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_plan_edit_plan_id'), table_name='plan_edit')
    op.drop_table('plan_edit')
    op.drop_constraint(op.f('ck_grid_plan_tolerance'), 'grid_plan', type_='check')
    op.drop_constraint(op.f('ck_grid_plan_target'), 'grid_plan', type_='check')
    for col in ('rolled_back_at', 'published_by', 'replaced_grid_ids', 'base_grid_ids', 'seq', 'tolerance', 'target'):
        op.drop_column('grid_plan', col)
    op.drop_constraint(op.f('ck_grid_plan_state'), 'grid_plan', type_='check')
    op.execute("UPDATE grid_plan SET state = 'published' WHERE state = 'rolled_back'")
    op.alter_column('grid_plan', 'state', type_=sa.String(length=10), existing_nullable=False,
                    existing_server_default='draft')
    op.create_check_constraint('state', 'grid_plan',
                               "state IN ('draft', 'review', 'published', 'discarded')")
