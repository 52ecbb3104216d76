"""accounts: api tokens, session version; residents: PII encrypted at rest

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 00:01:57.097202
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('api_token',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=12), nullable=False),
    sa.Column('scopes', postgresql.ARRAY(sa.String(length=20)), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['app_user.id'], name=op.f('fk_api_token_user_id_app_user'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_token')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_api_token_token_hash'))
    )
    op.create_index(op.f('ix_api_token_user_id'), 'api_token', ['user_id'], unique=False)
    op.add_column('app_user', sa.Column('session_version', sa.Integer(), server_default='1', nullable=False))
    op.add_column('resident', sa.Column('id_number_enc', sa.Text(), nullable=True))
    op.add_column('resident', sa.Column('id_number_masked', sa.String(length=18), nullable=True))
    op.add_column('resident', sa.Column('id_number_index', sa.String(length=64), nullable=True))
    op.add_column('resident', sa.Column('phone_enc', sa.Text(), nullable=True))
    op.add_column('resident', sa.Column('phone_masked', sa.String(length=20), nullable=True))
    op.create_index(op.f('ix_resident_id_number_index'), 'resident', ['id_number_index'], unique=False)
    _convert(op.get_bind(), to_clear=False)
    op.drop_column('resident', 'phone')
    op.drop_column('resident', 'id_number')


def downgrade() -> None:
    op.add_column('resident', sa.Column('id_number', sa.VARCHAR(length=18), autoincrement=False, nullable=True))
    op.add_column('resident', sa.Column('phone', sa.VARCHAR(length=20), autoincrement=False, nullable=True))
    _convert(op.get_bind(), to_clear=True)
    op.drop_index(op.f('ix_resident_id_number_index'), table_name='resident')
    op.drop_column('resident', 'phone_masked')
    op.drop_column('resident', 'phone_enc')
    op.drop_column('resident', 'id_number_index')
    op.drop_column('resident', 'id_number_masked')
    op.drop_column('resident', 'id_number_enc')
    op.drop_column('app_user', 'session_version')
    op.drop_index(op.f('ix_api_token_user_id'), table_name='api_token')
    op.drop_table('api_token')


def _convert(conn, to_clear: bool) -> None:
    """Encrypt existing clear values (upgrade) or decrypt them back (downgrade), with the key from
    the environment; a database holding residents cannot be migrated without it."""
    if not conn.execute(sa.text("SELECT EXISTS (SELECT 1 FROM resident)")).scalar():
        return
    from gisgrid import pii
    from gisgrid.layers.residents import protect

    vault = pii.vault()
    if to_clear:
        rows = conn.execute(sa.text("SELECT id, id_number_enc, phone_enc FROM resident")).all()
        conn.execute(sa.text("UPDATE resident SET id_number = :i, phone = :p WHERE id = :id"),
                     [{"id": r.id, "i": vault.decrypt(r.id_number_enc and r.id_number_enc.encode()),
                       "p": vault.decrypt(r.phone_enc and r.phone_enc.encode())} for r in rows])
        return
    rows = conn.execute(sa.text("SELECT id, id_number, phone FROM resident")).all()
    conn.execute(sa.text("UPDATE resident SET id_number_enc = :id_number_enc, id_number_masked = :id_number_masked, "
                         "id_number_index = :id_number_index, phone_enc = :phone_enc, phone_masked = :phone_masked "
                         "WHERE id = :id"),
                 [{"id": r.id, **protect(vault, r.id_number, r.phone)} for r in rows])
