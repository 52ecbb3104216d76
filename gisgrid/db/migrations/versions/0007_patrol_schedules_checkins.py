"""patrol: schedules (planned visits per point or route), the points a route passes, check-ins

Routes already in the database get their points back from their lines: every patrol point
within a metre of the line, in the order the line passes them.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 02:19:57.096740
"""
from alembic import op
import sqlalchemy as sa
from geoalchemy2 import Geometry

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_geospatial_table('patrol_checkin',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=100), nullable=False),
    sa.Column('point_id', sa.Integer(), nullable=False),
    sa.Column('route_id', sa.Integer(), nullable=True),
    sa.Column('worker', sa.String(length=100), nullable=False),
    sa.Column('team', sa.String(length=100), nullable=True),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('accuracy_m', sa.Float(), nullable=True),
    sa.Column('distance_m', sa.Float(), nullable=False),
    sa.Column('allowed_m', sa.Float(), nullable=False),
    sa.Column('accepted', sa.Boolean(), nullable=False),
    sa.Column('input_crs', sa.String(length=20), server_default='EPSG:4326', nullable=False),
    sa.Column('geom', Geometry(geometry_type='POINT', srid=4326, dimension=2, spatial_index=False, from_text='ST_GeomFromEWKT', name='geometry', nullable=False), nullable=False),
    sa.CheckConstraint("geom IS NULL OR ST_GeometryType(geom) IN ('ST_Point')", name=op.f('ck_patrol_checkin_geom_type')),
    sa.CheckConstraint('accuracy_m IS NULL OR accuracy_m >= 0', name=op.f('ck_patrol_checkin_accuracy')),
    sa.CheckConstraint('distance_m >= 0', name=op.f('ck_patrol_checkin_distance')),
    sa.CheckConstraint('geom IS NULL OR ST_IsValid(geom)', name=op.f('ck_patrol_checkin_geom_valid')),
    sa.ForeignKeyConstraint(['point_id'], ['patrol_point.id'], name=op.f('fk_patrol_checkin_point_id_patrol_point'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['route_id'], ['patrol_route.id'], name=op.f('fk_patrol_checkin_route_id_patrol_route'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_patrol_checkin')),
    sa.UniqueConstraint('key', name=op.f('uq_patrol_checkin_key'))
    )
    op.create_index(op.f('ix_patrol_checkin_at'), 'patrol_checkin', ['at'], unique=False)
    op.create_geospatial_index('ix_patrol_checkin_geom', 'patrol_checkin', ['geom'], unique=False, postgresql_using='gist', postgresql_ops={})
    op.create_index(op.f('ix_patrol_checkin_point_id'), 'patrol_checkin', ['point_id'], unique=False)
    op.create_index(op.f('ix_patrol_checkin_worker'), 'patrol_checkin', ['worker'], unique=False)
    op.create_table('patrol_route_point',
    sa.Column('route_id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('point_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['point_id'], ['patrol_point.id'], name=op.f('fk_patrol_route_point_point_id_patrol_point'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['route_id'], ['patrol_route.id'], name=op.f('fk_patrol_route_point_route_id_patrol_route'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('route_id', 'seq', name=op.f('pk_patrol_route_point'))
    )
    op.create_index(op.f('ix_patrol_route_point_point_id'), 'patrol_route_point', ['point_id'], unique=False)
    op.create_table('patrol_schedule',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('point_id', sa.Integer(), nullable=True),
    sa.Column('route_id', sa.Integer(), nullable=True),
    sa.Column('team', sa.String(length=100), nullable=True),
    sa.Column('visits_per_day', sa.Integer(), nullable=False),
    sa.Column('weekdays', sa.String(length=7), server_default='1234567', nullable=False),
    sa.Column('start_time', sa.Time(), nullable=True),
    sa.Column('end_time', sa.Time(), nullable=True),
    sa.Column('valid_from', sa.Date(), nullable=True),
    sa.Column('valid_to', sa.Date(), nullable=True),
    sa.CheckConstraint("weekdays ~ '^[1-7]{1,7}$'", name=op.f('ck_patrol_schedule_weekdays')),
    sa.CheckConstraint('(point_id IS NULL) <> (route_id IS NULL)', name=op.f('ck_patrol_schedule_one_target')),
    sa.CheckConstraint('valid_to IS NULL OR valid_from IS NULL OR valid_to >= valid_from', name=op.f('ck_patrol_schedule_period')),
    sa.CheckConstraint('visits_per_day > 0', name=op.f('ck_patrol_schedule_visits')),
    sa.ForeignKeyConstraint(['point_id'], ['patrol_point.id'], name=op.f('fk_patrol_schedule_point_id_patrol_point'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['route_id'], ['patrol_route.id'], name=op.f('fk_patrol_schedule_route_id_patrol_route'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_patrol_schedule'))
    )
    op.create_index(op.f('ix_patrol_schedule_point_id'), 'patrol_schedule', ['point_id'], unique=False)
    op.create_index(op.f('ix_patrol_schedule_route_id'), 'patrol_schedule', ['route_id'], unique=False)
    op.execute(
        "INSERT INTO patrol_route_point (route_id, seq, point_id) "
        "SELECT r.id, row_number() OVER (PARTITION BY r.id ORDER BY ST_LineLocatePoint(ST_LineMerge(r.geom), p.geom), p.id), "
        "p.id FROM patrol_route r JOIN patrol_point p ON ST_DWithin(r.geom::geography, p.geom::geography, 1) "
        "WHERE ST_GeometryType(ST_LineMerge(r.geom)) = 'ST_LineString'")


def downgrade() -> None:
    op.drop_index(op.f('ix_patrol_schedule_route_id'), table_name='patrol_schedule')
    op.drop_index(op.f('ix_patrol_schedule_point_id'), table_name='patrol_schedule')
    op.drop_table('patrol_schedule')
    op.drop_index(op.f('ix_patrol_route_point_point_id'), table_name='patrol_route_point')
    op.drop_table('patrol_route_point')
    op.drop_index(op.f('ix_patrol_checkin_worker'), table_name='patrol_checkin')
    op.drop_index(op.f('ix_patrol_checkin_point_id'), table_name='patrol_checkin')
    op.drop_geospatial_index('ix_patrol_checkin_geom', table_name='patrol_checkin', postgresql_using='gist', column_name='geom')
    op.drop_index(op.f('ix_patrol_checkin_at'), table_name='patrol_checkin')
    op.drop_geospatial_table('patrol_checkin')
