"""Reading and writing layer files: GeoJSON, GeoPackage, zipped Shapefile, KML (pyogrio/GDAL),
CSV and XLSX (pandas/openpyxl). Nothing here knows the layers; it turns a file into a table of
values plus geometries and back.
"""
from __future__ import annotations

import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from gisgrid.errors import InvalidInput

#: file suffix → format name
SUFFIXES = {".geojson": "geojson", ".json": "geojson", ".gpkg": "gpkg", ".zip": "shp", ".shp": "shp",
            ".kml": "kml", ".csv": "csv", ".xlsx": "xlsx"}
IMPORT_FORMATS = ("geojson", "gpkg", "shp", "kml", "csv", "xlsx")
EXPORT_FORMATS = ("geojson", "gpkg", "shp", "csv", "xlsx")
MEDIA_TYPES = {"geojson": "application/geo+json", "gpkg": "application/geopackage+sqlite3",
               "shp": "application/zip", "csv": "text/csv; charset=utf-8",
               "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}
EXTENSIONS = {"geojson": ".geojson", "gpkg": ".gpkg", "shp": ".zip", "csv": ".csv", "xlsx": ".xlsx"}
_DRIVERS = {"geojson": "GeoJSON", "gpkg": "GPKG", "shp": "ESRI Shapefile"}
#: the columns GDAL's KML drivers add to every feature (styling and timing); dropped
_KML_HOUSEKEEPING = ("description", "timestamp", "begin", "end", "altitudeMode", "tessellate", "extrude",
                     "visibility", "drawOrder", "icon", "snippet")


@dataclass
class Table:
    """A file's content: one row a record, values as read (text from CSV/XLSX, typed from GIS
    formats), the geometries when the format has them, and the CRS the file declares."""
    values: pd.DataFrame
    geometry: object = None           # GeoSeries or None
    crs: str | None = None            # "EPSG:n" the file declares, or None
    tabular: bool = False             # CSV/XLSX: row numbers count the header line
    notes: list[str] = field(default_factory=list)

    @property
    def first_row(self) -> int:
        """The row number users see for the first record (the header is row 1 in a sheet)."""
        return 2 if self.tabular else 1


def format_of(path: Path, fmt: str | None = None) -> str:
    if fmt:
        if fmt not in IMPORT_FORMATS:
            raise InvalidInput(f"unknown format {fmt!r}; formats: {', '.join(IMPORT_FORMATS)}", field="format")
        return fmt
    found = SUFFIXES.get(Path(path).suffix.lower())
    if found is None:
        raise InvalidInput(f"cannot tell the format of {Path(path).name!r} from its suffix; suffixes: "
                           f"{', '.join(SUFFIXES)} (or give --format)", field="format")
    return found


def read(path: Path, fmt: str | None = None, *, layer: str | None = None) -> Table:
    """Read a layer file.

    Parameters
    ----------
    path : Path
    fmt : str, optional
        One of ``IMPORT_FORMATS``; from the suffix when omitted.
    layer : str, optional
        The layer to read from a multi-layer file (GeoPackage): the one named so if present,
        else the first.

    Raises
    ------
    InvalidInput
        Unreadable file, naming it and GDAL's or the parser's reason.
    """
    path = Path(path)
    fmt = format_of(path, fmt)
    try:
        if fmt == "csv":
            return Table(_read_csv(path), tabular=True)
        if fmt == "xlsx":
            return Table(pd.read_excel(path, dtype=object, engine="openpyxl").dropna(how="all"), tabular=True)
        return _read_features(path, fmt, layer)
    except InvalidInput:
        raise
    except Exception as e:  # GDAL, pandas and openpyxl raise many types for a bad file
        raise InvalidInput(f"cannot read {path.name!r} as {fmt}: {str(e).strip()[:300] or type(e).__name__}",
                           field="file") from e


def _read_csv(path: Path) -> pd.DataFrame:
    # Spreadsheets saved by Chinese Excel are often GB18030 (GBK); UTF-8 (with or without BOM) first.
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding=encoding)
        except UnicodeDecodeError:
            continue
    raise InvalidInput(f"cannot read {path.name!r}: neither UTF-8 nor GB18030 text", field="file")


def _read_features(path: Path, fmt: str, layer: str | None) -> Table:
    import pyogrio

    notes = []
    layers = [name for name, _ in pyogrio.list_layers(path)]
    if not layers:
        raise InvalidInput(f"{path.name!r} holds no layer", field="file")
    pick = layer if layer in layers else layers[0]
    if len(layers) > 1:
        notes.append(f"the file holds layers {layers}; read {pick!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # GDAL's notes on field widths etc.
        gdf = pyogrio.read_dataframe(path, layer=pick)
    crs = None
    if gdf.crs is not None:
        epsg = gdf.crs.to_epsg()
        crs = f"EPSG:{epsg}" if epsg else gdf.crs.to_string()
    values = pd.DataFrame(gdf.drop(columns=gdf.geometry.name))
    if fmt == "kml":
        # styling and the placemark's own id, not data
        values = values.drop(columns=[c for c in (*_KML_HOUSEKEEPING, "id") if c in values])
        if "Name" in values and "name" not in values:
            values = values.rename(columns={"Name": "name"})
    return Table(values.reset_index(drop=True), gdf.geometry.reset_index(drop=True), crs, notes=notes)


# -- writing ----------------------------------------------------------------------------------
def write_features(gdf, path: Path, fmt: str, layer_name: str) -> None:
    """Write a GeoDataFrame as GeoJSON, GeoPackage or a zipped Shapefile (UTF-8, with .cpg)."""
    import pyogrio

    path = Path(path)
    if fmt == "shp":
        with tempfile.TemporaryDirectory() as tmp:
            shp = Path(tmp) / f"{layer_name}.shp"
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "'crs' was not provided", UserWarning)
                pyogrio.write_dataframe(gdf, shp, driver=_DRIVERS[fmt], encoding="UTF-8")
            with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
                for part in sorted(Path(tmp).iterdir()):
                    z.write(part, part.name)
        return
    if path.exists():
        path.unlink()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "'crs' was not provided", UserWarning)   # GCJ-02/BD-09 have none
        pyogrio.write_dataframe(gdf, path, driver=_DRIVERS[fmt], layer=layer_name if fmt == "gpkg" else None)


def write_table(frame: pd.DataFrame, path: Path, fmt: str, sheet: str) -> None:
    """CSV (UTF-8 with a byte-order mark, so Excel shows Chinese) or XLSX (bold frozen header)."""
    if fmt == "csv":
        frame.to_csv(path, index=False, encoding="utf-8-sig")
        return
    from openpyxl.styles import Font

    with pd.ExcelWriter(path, engine="openpyxl") as xl:
        frame.to_excel(xl, index=False, sheet_name=sheet[:31])
        ws = xl.sheets[sheet[:31]]
        for cell in ws[1]:
            cell.font = Font(bold=True)
        ws.freeze_panes = "A2"
