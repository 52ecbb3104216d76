"""incident_tally and building_tally: per-grid counts kept by statement triggers; due and unlinked indexes

Revision ID: 0011
Revises: 0009
Create Date: 2026-11-23 05:30:00

The one map's low-zoom tiles (communities, incident bins) and the grid figures read a few
thousand tally rows instead of a million incidents or 200,000 buildings (``gisgrid.layers.tallies``
explains the rule). The tallies are filled here from the current data; from then on
statement-level triggers with transition tables on ``<layer>_link`` (insert, update, delete)
and ``<layer>`` (update, delete) add each statement's difference. ``ix_incident_open_deadline`` holds the open incidents
by deadline (overdue = open with a deadline − those not yet due, the few); ``ix_<layer>_link_unlinked``
the few records outside every grid (tiles add them from their rows).
"""
from alembic import op
import sqlalchemy as sa

revision = '0011'
down_revision = '0009'
branch_labels = None
depends_on = None

# as gisgrid.layers.incidents and gisgrid.layers.tallies when this migration was written
# (migrations do not import the live code, which may move on)
STATES = ("reported", "accepted", "dispatched", "handling", "feedback", "evaluated", "closed")
OPEN = ("reported", "accepted", "dispatched", "handling", "feedback")
SHARDS = 8
# what each tally sums over the rows ``i`` of its layer (``{s}``: +1 or -1): column → expression
_OPEN_LIST = ", ".join(f"'{s}'" for s in OPEN)
SUMS = {
    "incident": {"n": "{s}", **{st: f"CASE WHEN i.state = '{st}' THEN {{s}} ELSE 0 END" for st in STATES},
                 "merged": "CASE WHEN i.state = 'closed' AND i.merged_into_id IS NOT NULL THEN {s} ELSE 0 END",
                 "due": f"CASE WHEN i.state IN ({_OPEN_LIST}) AND i.deadline IS NOT NULL THEN {{s}} ELSE 0 END",
                 "sx": "{s} * ST_X(i.geom)", "sy": "{s} * ST_Y(i.geom)"},
    "building": {"buildings": "{s}", "households": "{s} * coalesce(i.households, 0)",
                 "sx": "{s} * ST_X(i.anchor)", "sy": "{s} * ST_Y(i.anchor)"},
}
#: the layer's columns the sums read
READS = {"incident": ("state", "merged_into_id", "deadline", "geom"), "building": ("households", "anchor")}
FLOATS = ("sx", "sy")


def _sums(layer: str, sign: str) -> str:
    return ", ".join(f"sum({e.format(s=sign)}) AS {c}" for c, e in SUMS[layer].items())


#: a grid's codes, copied from its links into its tally rows (so tallies group and scope without the grids)
CODES = ("grid_code", "community_code", "street_code", "district_code")
_CODES = ", ".join(CODES)


def _apply(layer: str, source: str, sign: str | None = None) -> str:
    """Upsert one statement's difference into the backend's shard: ``source`` yields
    ``(grid_id, <CODES>, <READS>)`` and, without a constant ``sign``, ``sgn``. With ``sgn``
    (updates) grids whose sums are all zero (nothing counted changed) are left alone."""
    cols = ", ".join(SUMS[layer])
    # a grid's codes are the grid's (one per grid_id): grouped by the id alone, so a link row
    # whose codes alone changed still makes one row per grid; they are written when the row is made
    codes = ", ".join(f"max(i.{c})" for c in CODES)
    upsert = (f"ON CONFLICT (grid_id, shard) DO UPDATE SET "
              + ", ".join(f"{c} = t.{c} + EXCLUDED.{c}" for c in SUMS[layer]))
    if sign:     # an insert or a delete: every grid it touches changes (the cheap path of a report)
        return (f"INSERT INTO {layer}_tally AS t (grid_id, {_CODES}, shard, {cols}) "
                f"SELECT i.grid_id, {codes}, pg_backend_pid() % {SHARDS}, {_sums(layer, sign)} "
                f"FROM ({source}) i GROUP BY i.grid_id ORDER BY i.grid_id {upsert}")
    zero = ", ".join("0" for _ in SUMS[layer])
    return (f"INSERT INTO {layer}_tally AS t (grid_id, {_CODES}, shard, {cols}) "
            f"SELECT * FROM (SELECT i.grid_id, {codes}, pg_backend_pid() % {SHARDS} AS shard, {_sums(layer, 'i.sgn')} "
            f"FROM ({source}) i GROUP BY i.grid_id) x "
            f"WHERE ({cols}) IS DISTINCT FROM ({zero}) ORDER BY grid_id {upsert}")


def _function(layer: str, by_link: bool) -> str:
    reads = ", ".join(READS[layer])
    if by_link:     # a link written, moved or removed: its record (as it is now) out of the old grid, into the new
        by = (f"SELECT k.grid_id, {', '.join('k.' + c for c in CODES)}, {{sgn}}"
              f"{', '.join('i.' + c for c in READS[layer])} FROM ({{rows}}) k "
              f"JOIN {layer} i ON i.id = k.id WHERE k.grid_id IS NOT NULL")
        new, old = "new_rows", "old_rows"
        both = (f"SELECT id, grid_id, {_CODES}, 1 AS sgn FROM new_rows "
                f"UNION ALL SELECT id, grid_id, {_CODES}, -1 AS sgn FROM old_rows")
        sgn = "k.sgn, "
    else:           # a record changed or deleted: its old values out of its grid, its new values in
        by = (f"SELECT l.grid_id, {', '.join('l.' + c for c in CODES)}, {{sgn}}"
              f"{', '.join('i.' + c for c in READS[layer])} FROM ({{rows}}) i "
              f"JOIN {layer}_link l ON l.id = i.id WHERE l.grid_id IS NOT NULL")
        new, old = "new_rows", "old_rows"
        both = f"SELECT id, {reads}, 1 AS sgn FROM new_rows UNION ALL SELECT id, {reads}, -1 AS sgn FROM old_rows"
        sgn = "i.sgn, "
    # a transition table exists only for its events: one branch each (PL/pgSQL plans a branch when it runs)
    return (f"CREATE FUNCTION {_name(layer, by_link)}() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n"
            f"    IF TG_OP = 'INSERT' THEN {_apply(layer, by.format(sgn='', rows=f'SELECT * FROM {new}'), '1')};\n"
            f"    ELSIF TG_OP = 'DELETE' THEN {_apply(layer, by.format(sgn='', rows=f'SELECT * FROM {old}'), '-1')};\n"
            f"    ELSE {_apply(layer, by.format(sgn=sgn, rows=both))};\n"
            "    END IF;\n    RETURN NULL;\nEND $$")


def _name(layer: str, by_link: bool) -> str:
    return f"gisgrid_tally_{layer}" + ("_link" if by_link else "")


def _triggers(layer: str) -> list[str]:
    # "tally" sorts before "unlink": on a delete of records their links are still there to say the grid
    out = []
    for table, by_link, events in ((f"{layer}_link", True, ("insert", "update", "delete")),
                                   (layer, False, ("update", "delete"))):
        for ev in events:
            ref = {"insert": "NEW TABLE AS new_rows", "update": "OLD TABLE AS old_rows NEW TABLE AS new_rows",
                   "delete": "OLD TABLE AS old_rows"}[ev]
            out.append(f"CREATE TRIGGER tally_{ev} AFTER {ev.upper()} ON {table} REFERENCING {ref} "
                       f"FOR EACH STATEMENT EXECUTE FUNCTION {_name(layer, by_link)}()")
        out.append(f"CREATE TRIGGER tally_truncate AFTER TRUNCATE ON {table} "
                   f"FOR EACH STATEMENT EXECUTE FUNCTION gisgrid_tally_{layer}_clear()")
    return out


def upgrade() -> None:
    for layer, sums in SUMS.items():
        op.create_table(f'{layer}_tally',
        sa.Column('grid_id', sa.Integer(), nullable=False),
        sa.Column('grid_code', sa.String(length=20, collation='C'), nullable=True),
        sa.Column('community_code', sa.String(length=12, collation='C'), nullable=True),
        sa.Column('street_code', sa.String(length=12, collation='C'), nullable=True),
        sa.Column('district_code', sa.String(length=12, collation='C'), nullable=True),
        sa.Column('shard', sa.SmallInteger(), nullable=False),
        *[sa.Column(c, sa.Float(precision=53) if c in FLOATS else sa.Integer(), server_default='0', nullable=False)
          for c in sums],
        sa.PrimaryKeyConstraint('grid_id', 'shard', name=op.f(f'pk_{layer}_tally'))
        )
        op.execute(_function(layer, True))
        op.execute(_function(layer, False))
        op.execute(f"CREATE FUNCTION gisgrid_tally_{layer}_clear() RETURNS trigger LANGUAGE plpgsql AS $$\n"
                   f"BEGIN\n    DELETE FROM {layer}_tally;\n    RETURN NULL;\nEND $$")
        for ddl in _triggers(layer):
            op.execute(ddl)
        op.execute(f"INSERT INTO {layer}_tally (grid_id, {_CODES}, shard, {', '.join(sums)}) "
                   f"SELECT l.grid_id, {', '.join('l.' + c for c in CODES)}, 0, {_sums(layer, '1')} "
                   f"FROM {layer} i JOIN {layer}_link l ON l.id = i.id "
                   f"WHERE l.grid_id IS NOT NULL GROUP BY l.grid_id, {', '.join('l.' + c for c in CODES)}")
    op.create_index('ix_incident_open_deadline', 'incident', ['deadline'], unique=False,
                    postgresql_where=sa.text(f"state IN ({_OPEN_LIST})"))
    for layer in SUMS:
        op.create_index(f'ix_{layer}_link_unlinked', f'{layer}_link', ['id'], unique=False,
                        postgresql_where=sa.text("grid_id IS NULL"))


def downgrade() -> None:
    for layer in SUMS:
        op.drop_index(f'ix_{layer}_link_unlinked', table_name=f'{layer}_link', postgresql_where=sa.text("grid_id IS NULL"))
    op.drop_index('ix_incident_open_deadline', table_name='incident')
    for layer in SUMS:
        for table in (f"{layer}_link", layer):
            for event in ("insert", "update", "delete", "truncate"):
                op.execute(f"DROP TRIGGER IF EXISTS tally_{event} ON {table}")
        for name in (_name(layer, True), _name(layer, False), f"gisgrid_tally_{layer}_clear"):
            op.execute(f"DROP FUNCTION IF EXISTS {name}()")
        op.drop_table(f'{layer}_tally')
