"""Alembic environment (from Alembic's generic template, with geoalchemy2's helpers).

gisgrid passes its own connection in ``config.attributes["connection"]`` (see
``gisgrid/db/migrate.py``); ``alembic`` on the command line works too with ``sqlalchemy.url``.
"""
from alembic import context
from geoalchemy2 import alembic_helpers
from sqlalchemy import engine_from_config, pool

import gisgrid.layers  # noqa: F401  registers every table
from gisgrid.db.base import Base
from gisgrid.db.migrations_support import include_object

config = context.config
target_metadata = Base.metadata


def _configure(connection):
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_object=include_object,
        process_revision_directives=alembic_helpers.writer,
        render_item=alembic_helpers.render_item,
        compare_type=True,
    )


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    connectable = engine_from_config(config.get_section(config.config_ini_section, {}),
                                     prefix="sqlalchemy.", poolclass=pool.NullPool)
    with connectable.connect() as connection:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, render_item=alembic_helpers.render_item)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
