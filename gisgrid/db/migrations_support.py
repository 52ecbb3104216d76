"""What Alembic's autogenerate compares (shared by ``migrations/env.py`` and the drift test)."""
from geoalchemy2 import alembic_helpers


def include_object(obj, name, type_, reflected, compare_to):
    # PostGIS' own tables (spatial_ref_sys, topology…) are not ours.
    if type_ == "table" and reflected and compare_to is None:
        return False
    return alembic_helpers.include_object(obj, name, type_, reflected, compare_to)
