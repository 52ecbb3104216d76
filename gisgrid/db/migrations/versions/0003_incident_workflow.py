"""incidents: category catalogue with SLAs, escalation level, photos

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 00:31:52.324884
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('photo',
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('mime', sa.String(length=20), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('sha256', name=op.f('pk_photo'))
    )
    op.create_table('incident_category',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('district_code', sa.String(length=12), nullable=True),
    sa.Column('code', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('name_en', sa.String(length=100), nullable=True),
    sa.Column('sla_hours', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('active', sa.Boolean(), server_default='true', nullable=False),
    sa.ForeignKeyConstraint(['district_code'], ['admin_area.code'], name=op.f('fk_incident_category_district_code_admin_area')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_incident_category')),
    sa.UniqueConstraint('district_code', 'code', name=op.f('uq_incident_category_district_code_code'),
                        postgresql_nulls_not_distinct=True)
    )
    op.create_table('incident_photo',
    sa.Column('incident_id', sa.Integer(), nullable=False),
    sa.Column('photo_sha256', sa.String(length=64), nullable=False),
    sa.Column('uploaded_by', sa.String(length=100), nullable=True),
    sa.Column('at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['incident_id'], ['incident.id'], name=op.f('fk_incident_photo_incident_id_incident'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['photo_sha256'], ['photo.sha256'], name=op.f('fk_incident_photo_photo_sha256_photo')),
    sa.PrimaryKeyConstraint('incident_id', 'photo_sha256', name=op.f('pk_incident_photo'))
    )
    op.add_column('incident', sa.Column('evaluation_comment', sa.Text(), nullable=True))
    op.add_column('incident', sa.Column('level', sa.String(length=10), server_default='grid', nullable=False))
    op.add_column('incident', sa.Column('merged_into_id', sa.Integer(), nullable=True))
    op.add_column('incident', sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False))
    op.create_foreign_key(op.f('fk_incident_merged_into_id_incident'), 'incident', 'incident', ['merged_into_id'], ['id'], ondelete='SET NULL')
    op.create_check_constraint("level", "incident", "level IN ('grid', 'community', 'street', 'district')")
    op.create_check_constraint("description_length", "incident", "length(description) <= 2000")
    # records outside every grid are answered for by the street (or district) centre
    op.execute("UPDATE incident SET level = CASE WHEN street_code IS NOT NULL THEN 'street' ELSE 'district' END "
               "WHERE grid_id IS NULL")
    from gisgrid.layers.incidents import CATEGORIES, CATEGORIES_EN, default_sla

    table = sa.table("incident_category", sa.column("code"), sa.column("name"), sa.column("name_en"),
                     sa.column("sla_hours", postgresql.JSONB))
    op.bulk_insert(table, [{"code": c, "name": n, "name_en": CATEGORIES_EN[c], "sla_hours": default_sla(c)}
                           for c, n in CATEGORIES.items()])


def downgrade() -> None:
    op.drop_constraint(op.f("ck_incident_description_length"), "incident", type_="check")
    op.drop_constraint(op.f("ck_incident_level"), "incident", type_="check")
    op.drop_constraint(op.f('fk_incident_merged_into_id_incident'), 'incident', type_='foreignkey')
    op.drop_column('incident', 'updated_at')
    op.drop_column('incident', 'merged_into_id')
    op.drop_column('incident', 'level')
    op.drop_column('incident', 'evaluation_comment')
    op.drop_table('incident_photo')
    op.drop_table('incident_category')
    op.drop_table('photo')
