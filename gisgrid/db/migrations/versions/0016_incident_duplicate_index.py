"""incident: the duplicate search's own index, open incidents by (category, geom)

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-23 22:00:00

Every report looks for possible duplicates: open incidents of the same category within 50 m
(``gisgrid.layers.incidents._duplicates_sql``). On ``ix_incident_geom`` alone that search read
every incident in the box around the point, of every category and state, and dropped most of
them after fetching them: at a busy place the closed ones of years and the other categories
of today. ``ix_incident_open_category_geom`` holds only open incidents (a partial index) and
leads with the category (a GiST index over a text column and a geometry: the ``btree_gist``
extension, shipped with PostgreSQL and trusted, so a database owner may create it), so the
search reads only the candidates. Measured in session 8 on the bench's table (reports at 3,750
points): the report statement's database CPU without the duplicate search ÷ with it went from
0.79 to 0.85; in one bench run the search had come to read 114 rows per report (4,186 in another).
"""
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None

# as gisgrid.layers.incidents.OPEN_STATES when this migration was written
OPEN = "('reported', 'accepted', 'dispatched', 'handling', 'feedback')"


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
    op.execute(f"CREATE INDEX ix_incident_open_category_geom ON incident USING gist (category, geom) "
               f"WHERE state IN {OPEN}")


def downgrade() -> None:
    # btree_gist stays: the database may have had it before, for something else
    op.execute("DROP INDEX IF EXISTS ix_incident_open_category_geom")
