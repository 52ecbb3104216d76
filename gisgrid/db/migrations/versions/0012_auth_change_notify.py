"""auth change notifications: NOTIFY gisgrid_auth when an account or token changes

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-23 05:40:00

Web workers remember who a token or session stands for (``gisgrid.web.principals``) and forget
it when told: statement triggers on ``app_user`` and ``api_token`` send ``NOTIFY gisgrid_auth``
on every change that can alter a caller's rights (delivered at commit). A token's
``last_used_at`` is not among them, so bookkeeping does not flush every worker's memory.
"""
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

#: the columns whose change alters who a caller is or what they may do
WATCHED = {
    "app_user": "username, role, jurisdiction, active, session_version",
    "api_token": "user_id, token_hash, scopes, expires_at, revoked_at",
}


def upgrade() -> None:
    op.execute("""
        CREATE FUNCTION gisgrid_auth_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('gisgrid_auth', TG_TABLE_NAME);
            RETURN NULL;
        END $$""")
    for table, columns in WATCHED.items():
        op.execute(f"CREATE TRIGGER auth_changed AFTER UPDATE OF {columns} OR DELETE OR TRUNCATE ON {table} "
                   "FOR EACH STATEMENT EXECUTE FUNCTION gisgrid_auth_changed()")


def downgrade() -> None:
    for table in WATCHED:
        op.execute(f"DROP TRIGGER IF EXISTS auth_changed ON {table}")
    op.execute("DROP FUNCTION IF EXISTS gisgrid_auth_changed()")
