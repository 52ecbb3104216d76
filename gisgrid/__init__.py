"""gisgrid: GIS grid-mapping for community governance."""
