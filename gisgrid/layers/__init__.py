"""Layers: one module per noun, each with its table, its queries and its linking rule.

Importing this package registers every table on ``gisgrid.db.base.Base.metadata``.
"""
from gisgrid.layers import (  # noqa: F401  (registration)
    admin_areas, audit, buildings, changes, grids, incidents, linking, patrol, patrol_coverage, photos, places,
    plans, rate_limits, residents, roads, staff, tallies, users,
)
