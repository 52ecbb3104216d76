"""incident: the duplicate search's index leads with the category's hash, not its text

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-23 23:40:00

``ix_incident_open_category_geom`` (0016) led with the category as text. In a GiST index a
text column is btree_gist's variable-length key: every page holds the range of its entries
(lowest and highest code) and every step down the tree and every insert compares those
strings. ``ix_incident_open_category_hash_geom`` leads with ``hashtext(category)``, a fixed
4-byte integer; the duplicate search asks for the hash and then the category itself (two codes
of one hash are told apart on the row). Measured in session 9 on the bench's table (35,000
open incidents; each variant in turn on one connection, backend CPU, both indexes freshly
built): the candidates' lookup went from 122 to 86 µs, the whole report statement's database
CPU to 0.91 of what it was; the index is 2.1 MB where the text one was 2.7 MB.

``hashtext`` is the hash of text PostgreSQL's own hash indexes are built on: were a future
version to change it, this index would need a ``REINDEX``, as those would.
"""
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None

# as gisgrid.layers.incidents.OPEN_STATES when this migration was written
OPEN = "('reported', 'accepted', 'dispatched', 'handling', 'feedback')"


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")       # 0016's, for the integer key
    op.execute(f"CREATE INDEX ix_incident_open_category_hash_geom ON incident USING gist (hashtext(category), geom) "
               f"WHERE state IN {OPEN}")
    op.execute("DROP INDEX IF EXISTS ix_incident_open_category_geom")


def downgrade() -> None:
    op.execute(f"CREATE INDEX ix_incident_open_category_geom ON incident USING gist (category, geom) "
               f"WHERE state IN {OPEN}")
    op.execute("DROP INDEX IF EXISTS ix_incident_open_category_hash_geom")
