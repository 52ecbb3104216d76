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
    the environment; a database holding residents cannot be migrated without it. Values go
    through a temporary table by COPY and one UPDATE … FROM (a million residents in about a
    minute and a half, most of it Fernet), not an UPDATE per row."""
    if not conn.execute(sa.text("SELECT EXISTS (SELECT 1 FROM resident)")).scalar():
        return
    from gisgrid import pii
    from gisgrid.layers.residents import protect

    vault = pii.vault()
    raw = conn.connection.driver_connection
    if to_clear:
        cols, select = ("id_number", "phone"), "SELECT id, id_number_enc, phone_enc FROM resident"
        convert = lambda r: (r[0], vault.decrypt(r[1] and r[1].encode()), vault.decrypt(r[2] and r[2].encode()))  # noqa: E731
        types = "id_number text, phone text"
    else:
        cols = ("id_number_enc", "id_number_masked", "id_number_index", "phone_enc", "phone_masked")
        select = "SELECT id, id_number, phone FROM resident"
        convert = lambda r: (r[0], *protect(vault, r[1], r[2]).values())  # noqa: E731
        types = ", ".join(f"{c} text" for c in cols)
    conn.execute(sa.text(f"CREATE TEMP TABLE _pii (id integer PRIMARY KEY, {types}) ON COMMIT DROP"))
    last = 0
    with raw.cursor() as cur:
        while True:    # keyset pages: a read and a COPY never interleave on the connection
            rows = cur.execute(f"{select} WHERE id > %s ORDER BY id LIMIT 20000", (last,)).fetchall()
            if not rows:
                break
            last = rows[-1][0]
            with cur.copy(f"COPY _pii (id, {', '.join(cols)}) FROM STDIN") as cp:
                for r in rows:
                    cp.write_row(convert(r))
    conn.execute(sa.text(f"UPDATE resident r SET {', '.join(f'{c} = p.{c}' for c in cols)} FROM _pii p "
                         "WHERE r.id = p.id"))
    conn.execute(sa.text("DROP TABLE _pii"))
