"""Layers in and out: files → validated records → PostGIS, and back.

* :mod:`gisgrid.io.fields` – what each layer's file holds: fields, types, Chinese headers;
* :mod:`gisgrid.io.formats` – reading and writing GeoJSON, GeoPackage, zipped Shapefile, KML,
  CSV and XLSX (geopandas/pyogrio, pandas/openpyxl: no hand-written parsers);
* :mod:`gisgrid.io.importer` – the validation report and the import (all or nothing by default);
* :mod:`gisgrid.io.exporter` – exports filtered by jurisdiction, personal data masked.
"""
