"""What a file of each layer holds: its fields, their types, their Chinese headers.

Import and export share these tables, so an exported file imports back unchanged. A column
may be named by its field name (``households``), its Chinese header (``户数``) or, in a
Shapefile, its short name (10 characters at most, ``visits_day``). Exports add columns derived
from the links (``grid_code``, ``grid_name``, ``community_name`` …): an import accepts and
ignores them, since links are recomputed from the geometry.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from gisgrid.layers import incidents, patrol, places

#: value kinds and what they accept
KINDS = ("text", "int", "float", "date", "datetime", "json", "tags")


@dataclass(frozen=True)
class Field:
    name: str
    zh: str
    kind: str = "text"
    required: bool = False
    choices: tuple[str, ...] | None = None
    max_len: int | None = None
    short: str | None = None        # Shapefile column name when ``name`` is longer than 10

    @property
    def shp(self) -> str:
        return self.short or self.name


@dataclass(frozen=True)
class Layer:
    name: str
    zh: str
    fields: tuple[Field, ...]
    geometry: tuple[str, ...]          # geometry types accepted (before Multi promotion)
    geometry_required: bool = True
    linked: bool = True                # carries grid/community/street/district links
    extra: dict = field(default_factory=dict)

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)

    @property
    def points(self) -> bool:
        return self.geometry == ("Point",)


def _code(n=40):
    return Field("code", "编码", required=True, max_len=n)


def _name(required=True, n=200):
    return Field("name", "名称", required=required, max_len=n)


LAYERS: dict[str, Layer] = {l.name: l for l in (
    Layer("admin_area", "行政区划", (
        _code(12), _name(n=100), Field("kind", "城乡类型", choices=("urban", "rural")),
        Field("parent_code", "上级编码", max_len=12, short="parent")),
        ("Polygon", "MultiPolygon"), geometry_required=False, linked=False),
    Layer("grid", "网格", (
        _code(20), _name(n=100), Field("kind", "城乡类型", choices=("urban", "rural"))),
        ("Polygon", "MultiPolygon"), linked=False),
    Layer("building", "楼栋", (
        _code(), _name(False), Field("address", "地址", max_len=300), Field("households", "户数", "int"),
        Field("floors", "层数", "int"), Field("source", "来源", max_len=40)),
        ("Polygon", "MultiPolygon", "Point")),
    Layer("resident", "居民", (
        _code(), _name(n=100), Field("gender", "性别", choices=("M", "F")),
        Field("birth_date", "出生日期", "date"), Field("id_number", "身份证号", short="id_number"),
        Field("phone", "联系电话"), Field("tags", "标签", "tags"),
        Field("building_code", "楼栋编码", max_len=40, short="bldg_code")),
        ("Point",), geometry_required=False),
    Layer("place", "场所", (
        _code(), _name(), Field("category", "类别", required=True, choices=tuple(places.CATEGORIES)),
        Field("attributes", "属性", "json", short="attrs")),
        ("Point",)),
    Layer("patrol_point", "巡逻点", (
        _code(), _name(), Field("kind", "类型", choices=tuple(patrol.KINDS)),
        Field("radius_m", "半径(米)", "float"), Field("visits_per_day", "每日巡查次数", "int", short="visits_day"),
        Field("team", "巡逻队", max_len=100)),
        ("Point",)),
    Layer("patrol_route", "巡逻路线", (
        _code(), _name(), Field("team", "巡逻队", max_len=100)),
        ("LineString", "MultiLineString")),
    Layer("road", "道路", (
        _code(), _name(False), Field("kind", "道路等级", max_len=40), Field("source", "来源", max_len=40)),
        ("LineString", "MultiLineString"), linked=False),
    Layer("incident", "事件", (
        _code(), Field("category", "事件类别", required=True, max_len=40),
        Field("state", "状态", choices=tuple(incidents.STATES)),
        Field("level", "处置层级", choices=incidents.LEVELS),
        Field("description", "描述", max_len=2000, short="descr"), Field("address", "地址", max_len=300),
        Field("source", "来源", choices=tuple(incidents.SOURCES)), Field("reporter", "上报人", max_len=100),
        Field("reported_at", "上报时间", "datetime", short="reported"),
        Field("closed_at", "办结时间", "datetime", short="closed"),
        Field("satisfaction", "满意度", "int", short="satisfy"), Field("accuracy_m", "定位精度(米)", "float", short="accuracy")),
        ("Point",)),
)}

#: columns exports add (names resolved, links) that imports accept and ignore
DERIVED = (
    Field("grid_code", "网格编码", short="grid"), Field("grid_name", "网格名称", short="grid_name"),
    Field("community_code", "社区编码", short="comm_code"), Field("community_name", "社区名称", short="comm_name"),
    Field("street_code", "街道编码", short="strt_code"), Field("street_name", "街道名称", short="strt_name"),
    Field("district_code", "区县编码", short="dist_code"), Field("district_name", "区县名称", short="dist_name"),
    Field("level", "级别"), Field("id_number_masked", "身份证号(脱敏)", short="id_masked"),
    Field("phone_masked", "联系电话(脱敏)", short="ph_masked"),
)
#: geometry columns of a table file (CSV/XLSX): lon/lat for points, WKT for anything
LON, LAT, WKT = Field("lon", "经度", "float"), Field("lat", "纬度", "float"), Field("wkt", "几何(WKT)")
GEOMETRY_ALIASES = {"lon": ("lon", "lng", "longitude", "x", "经度"), "lat": ("lat", "latitude", "y", "纬度"),
                    "wkt": ("wkt", "geometry", "geom", "几何(wkt)", "几何")}


def derived_for(layer: Layer) -> tuple[Field, ...]:
    """The derived columns an export of ``layer`` writes."""
    own = {f.name for f in layer.fields}
    if layer.name == "admin_area":
        keep = {"level", "district_code", "street_code", "community_code"}
    elif layer.name == "grid":
        keep = {"community_code", "community_name", "street_code", "street_name", "district_code", "district_name"}
    elif layer.linked:
        keep = {f.name for f in DERIVED} - {"level", "id_number_masked", "phone_masked"}
    else:
        keep = set()
    if layer.name == "resident":
        keep |= {"id_number_masked", "phone_masked"}
    return tuple(f for f in DERIVED if f.name in keep and f.name not in own)


def get(name: str) -> Layer:
    from gisgrid.errors import InvalidInput

    if name not in LAYERS:
        raise InvalidInput(f"unknown layer {name!r}; layers: {', '.join(LAYERS)}", field="layer")
    return LAYERS[name]


def aliases(layer: Layer) -> dict[str, str]:
    """Every accepted spelling of a column (lower-cased) → the field name (or ``lon``/``lat``/
    ``wkt``, or a derived column's name)."""
    out = {}
    for f in (*layer.fields, *derived_for(layer), *DERIVED):
        for a in (f.name, f.zh, f.shp):
            out.setdefault(a.lower(), f.name)
    for target, names in GEOMETRY_ALIASES.items():
        for a in names:
            out.setdefault(a.lower(), target)
    return out
