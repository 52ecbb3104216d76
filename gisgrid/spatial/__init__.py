"""Pure geometry: no database. Plain functions over shapely/numpy objects."""
