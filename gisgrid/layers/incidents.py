"""Incidents (事件) and their history.

An incident is a work order: a located report that runs the closed loop
受理 accept → 分流 dispatch → 处置 handle → 反馈 feedback → 评价 evaluate → close.
Every state change is an ``incident_event`` row (who, when, from, to, note). Which action moves
an incident between which states lives in :mod:`gisgrid.workflow` and nowhere else.
"""
from __future__ import annotations

import functools
import json
from datetime import datetime

from sqlalchemy import (Boolean, CheckConstraint, DateTime, Float, ForeignKey, Index, Integer, String, Text,
                        UniqueConstraint, func, text)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from gisgrid.db.base import Base
from gisgrid.layers._columns import geom_type, gist, types, valid

STATES = {
    "reported": "待受理", "accepted": "已受理", "dispatched": "已分派", "handling": "处置中",
    "feedback": "已反馈", "evaluated": "已评价", "closed": "已办结",
}
OPEN_STATES = ("reported", "accepted", "dispatched", "handling", "feedback")
#: the open states as an SQL list, for statements that are run often (an array parameter costs
#: psycopg a Python-level dump on every call)
OPEN_STATES_SQL = "(" + ", ".join(f"'{s}'" for s in OPEN_STATES) + ")"
CATEGORIES = {
    "dispute": "矛盾纠纷", "security": "治安隐患", "fire": "消防安全", "gas": "燃气安全",
    "building_safety": "房屋安全", "city_management": "城市管理", "sanitation": "环境卫生",
    "rental_housing": "出租房屋", "floating_population": "流动人口", "elderly_care": "关爱帮扶",
    "road_facility": "道路设施", "noise": "噪声扰民",
}
CATEGORIES_EN = {
    "dispute": "Dispute between neighbours", "security": "Public security", "fire": "Fire safety", "gas": "Gas safety",
    "building_safety": "Building safety", "city_management": "City management", "sanitation": "Sanitation",
    "rental_housing": "Rental housing", "floating_population": "Floating population",
    "elderly_care": "Care for the elderly and people in difficulty", "road_facility": "Road facilities",
    "noise": "Noise",
}
#: hours allowed in each state before the order is overdue, per category (the district's
#: catalogue may override). Disputes are not left overnight (矛盾不过夜).
HANDLE_HOURS = {"dispute": 24, "security": 24, "fire": 24, "gas": 12, "building_safety": 72, "city_management": 72,
                "sanitation": 48, "rental_housing": 120, "floating_population": 120, "elderly_care": 72,
                "road_facility": 120, "noise": 48}


def default_sla(category: str) -> dict[str, int]:
    return {"reported": 2, "accepted": 4, "dispatched": 4, "handling": HANDLE_HOURS.get(category, 72),
            "feedback": 72, "evaluated": 24}


#: escalation ladder: small matters stay in the community, big ones in the street (小事不出村，大事不出镇)
LEVELS = ("grid", "community", "street", "district")
SOURCES = {"patrol": "网格巡查", "resident": "群众上报", "hotline": "12345热线", "import": "导入"}
_STATES_SQL = ", ".join(f"'{s}'" for s in STATES)


class Incident(Base):
    __tablename__ = "incident"
    __table_args__ = (
        CheckConstraint(f"state IN ({_STATES_SQL})", name="state"),
        CheckConstraint("satisfaction IS NULL OR satisfaction BETWEEN 1 AND 5", name="satisfaction"),
        CheckConstraint("accuracy_m IS NULL OR accuracy_m >= 0", name="accuracy"),
        CheckConstraint("level IN ('grid', 'community', 'street', 'district')", name="level"),
        CheckConstraint("length(description) <= 2000", name="description_length"),
        valid(), types("geom", "Point"), gist("incident"),
        # the open incidents by deadline: "overdue" beside the tally (gisgrid.layers.tallies)
        Index("ix_incident_open_deadline", "deadline",
              postgresql_where=text(f"state IN {OPEN_STATES_SQL}")),
        # the duplicate search (_duplicates_sql): open incidents of one category near a point, the
        # category as its hash (GiST over an integer and a geometry: the btree_gist extension;
        # migrations 0016, 0017)
        Index("ix_incident_open_category_hash_geom", text("hashtext(category)"), "geom", postgresql_using="gist",
              postgresql_where=text(f"state IN {OPEN_STATES_SQL}")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(100), unique=True)
    category: Mapped[str] = mapped_column(String(40), index=True)
    description: Mapped[str] = mapped_column(Text, default="", server_default="")
    address: Mapped[str | None] = mapped_column(String(300))
    source: Mapped[str] = mapped_column(String(20), default="patrol", server_default="patrol")
    reporter: Mapped[str | None] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(20), default="reported", server_default="reported", index=True)
    assignee_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("staff.id", ondelete="SET NULL"))
    accuracy_m: Mapped[float | None] = mapped_column(Float)
    input_crs: Mapped[str] = mapped_column(String(20), default="EPSG:4326", server_default="EPSG:4326")
    reported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), index=True)
    deadline: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    satisfaction: Mapped[int | None] = mapped_column(Integer)
    evaluation_comment: Mapped[str | None] = mapped_column(Text)
    #: who answers for it now: the grid's team, or the community/street/district centre
    level: Mapped[str] = mapped_column(String(10), default="grid", server_default="grid")
    #: indexed: deleting an incident looks up the ones merged into it (a scan of the table per row otherwise)
    merged_into_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("incident.id", ondelete="SET NULL"),
                                                       index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    geom = mapped_column(geom_type("POINT"), nullable=False)


class IncidentCategory(Base):
    """The category catalogue: a district's own, or the default one (``district_code`` NULL)."""
    __tablename__ = "incident_category"
    __table_args__ = (UniqueConstraint("district_code", "code", postgresql_nulls_not_distinct=True),)

    id: Mapped[int] = mapped_column(primary_key=True)
    district_code: Mapped[str | None] = mapped_column(String(12), ForeignKey("admin_area.code"))
    code: Mapped[str] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(100))
    name_en: Mapped[str | None] = mapped_column(String(100))
    sla_hours: Mapped[dict] = mapped_column(JSONB)
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")


class IncidentEvent(Base):
    __tablename__ = "incident_event"
    # the few rejections, so "resolved" (RESOLVED_SQL) probes a small index, not every event
    __table_args__ = (Index("ix_incident_event_rejected", "incident_id",
                            postgresql_where=text("note LIKE '[reject]%'")),)

    id: Mapped[int] = mapped_column(primary_key=True)
    incident_id: Mapped[int] = mapped_column(Integer, ForeignKey("incident.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    actor: Mapped[str | None] = mapped_column(String(100))
    from_state: Mapped[str | None] = mapped_column(String(20))
    to_state: Mapped[str] = mapped_column(String(20))
    note: Mapped[str | None] = mapped_column(Text)


# -- reporting --------------------------------------------------------------------------------
LIMITS = {"description": 2000, "address": 300, "reporter": 100, "idempotency_key": 100}
DUPLICATE_METRES = 50
DUPLICATE_HOURS = 72


def categories(session, district_code: str | None = None) -> list[dict]:
    """The catalogue for a district: its own categories, else the default ones."""
    from sqlalchemy import text

    rows = session.execute(text(
        "SELECT DISTINCT ON (code) code, name, name_en, sla_hours FROM incident_category "
        "WHERE active AND (district_code = :d OR district_code IS NULL) ORDER BY code, district_code NULLS LAST"),
        {"d": district_code}).mappings()
    return [dict(r) for r in rows]


def set_category(session, actor: str, code: str, *, district_code: str | None, name: str, sla_hours: dict,
                 name_en: str | None = None, active: bool = True) -> dict:
    """Add or change a category of a district's catalogue (``district_code`` None: the default
    catalogue every district falls back to). ``sla_hours`` gives the hours allowed in each open
    state (the deadline of that step). Audited with the values before and after."""
    from sqlalchemy import text

    from gisgrid.errors import InvalidInput, UnknownReference
    from gisgrid.layers import audit

    if not isinstance(code, str) or not code or len(code) > 40 or not code.replace("_", "").isalnum():
        raise InvalidInput(f"code must be 1–40 letters, digits or '_', got {code!r}", field="code")
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise InvalidInput("name must be 1–100 characters", field="name")
    if name_en is not None and (not isinstance(name_en, str) or len(name_en) > 100):
        raise InvalidInput("name_en must be at most 100 characters", field="name_en")
    if not isinstance(active, bool):
        raise InvalidInput(f"active must be true or false, got {active!r}", field="active")
    if not isinstance(sla_hours, dict) or not sla_hours:
        raise InvalidInput("sla_hours must be an object of state → hours", field="sla_hours")
    steps = [s for s in STATES if s != "closed"]
    for state, hours in sla_hours.items():
        if state not in steps:
            raise InvalidInput(f"sla_hours: {state!r} is not a state with a deadline; states: {', '.join(steps)}",
                               field="sla_hours")
        if isinstance(hours, bool) or not isinstance(hours, int) or not 1 <= hours <= 8760:
            raise InvalidInput(f"sla_hours.{state} must be a whole number of hours, 1–8760, got {hours!r}",
                               field="sla_hours")
    if district_code is not None and session.execute(text(
            "SELECT 1 FROM admin_area WHERE code = :d AND level = 'district'"), {"d": district_code}).scalar() is None:
        raise UnknownReference(f"no district {district_code!r}", field="district")
    before = session.execute(text(
        "SELECT name, name_en, sla_hours, active FROM incident_category WHERE code = :c "
        "AND district_code IS NOT DISTINCT FROM :d"), {"c": code, "d": district_code}).mappings().first()
    row = session.execute(text(
        "INSERT INTO incident_category (district_code, code, name, name_en, sla_hours, active) "
        "VALUES (:d, :c, :n, :ne, CAST(:sla AS jsonb), :a) ON CONFLICT (district_code, code) DO UPDATE SET "
        "name = EXCLUDED.name, name_en = EXCLUDED.name_en, sla_hours = EXCLUDED.sla_hours, active = EXCLUDED.active "
        "RETURNING district_code, code, name, name_en, sla_hours, active"),
        {"d": district_code, "c": code, "n": name.strip(), "ne": name_en, "sla": json.dumps(sla_hours),
         "a": active}).mappings().one()
    out = dict(row)
    audit.record(session, actor, "update" if before else "create", "incident_category",
                 f"{district_code or 'default'}:{code}", before=dict(before) if before else None, after=out)
    return out


def report(session, actor: str, **kw) -> tuple[dict, bool]:
    """:func:`report_body` with the answer as a dict."""
    body, created = report_body(session, actor, **kw)
    return json.loads(body), created


def report_body(session, actor: str, *, category, lon, lat, crs="EPSG:4326", description="", address=None,
                source="patrol", reporter=None, accuracy_m=None, idempotency_key=None,
                duplicate_metres: float = DUPLICATE_METRES, duplicate_hours: float = DUPLICATE_HOURS,
                quota=None, conn=None) -> tuple[str, bool]:
    """File a report: validate, insert once per idempotency key, link to its grid in the same
    transaction, route it (grid team, or the street/district centre when outside every grid),
    start its first deadline and history. Returns ``(answer, created)``, the answer as JSON
    text: what :func:`detail` says of the incident, plus its ``possible_duplicates``; a retry
    with the same key answers the first incident and ``created=False``.

    ``quota`` (a :class:`gisgrid.layers.rate_limits.Quota`): count this attempt against it in
    the same statement, write nothing past it (raises ``rate_limits.Exceeded``, 429), and fill in
    its count and window end.

    ``conn``: an autocommitted psycopg connection to run the statement on, instead of
    ``session`` (one of the web app's direct connections: no pool checkout, no ORM round about a
    single statement); ``session`` is then used only when nothing was written (a retry, an
    unknown category), to say why, and may be a callable that makes it (a session costs
    about 0.13 ms to make and close, 4% of a report's server time).
    """
    from gisgrid.errors import InvalidInput, UnknownReference
    from gisgrid.spatial.crs import canonical, lonlat_to_storage

    for name, value in (("description", description), ("address", address), ("reporter", reporter),
                        ("idempotency_key", idempotency_key)):
        if value is not None and not isinstance(value, str):
            raise InvalidInput(f"{name} must be text, got {type(value).__name__}", field=name)
        if value is not None and len(value) > LIMITS[name]:
            raise InvalidInput(f"{name} is {len(value)} characters; at most {LIMITS[name]}", field=name)
    if source not in SOURCES:
        raise InvalidInput(f"source must be one of {', '.join(SOURCES)}, got {source!r}", field="source")
    if accuracy_m is not None:
        try:
            accuracy_m = float(accuracy_m)
        except (TypeError, ValueError):
            raise InvalidInput(f"accuracy_m must be a number of metres, got {accuracy_m!r}", field="accuracy_m") from None
        if not 0 <= accuracy_m <= 100_000:
            raise InvalidInput(f"accuracy_m must be between 0 and 100000, got {accuracy_m}", field="accuracy_m")
    x, y = lonlat_to_storage(lon, lat, crs)
    crs = canonical(crs)        # gcj02, bd09 or EPSG:n, as stored in input_crs
    params = _report_params(actor, idempotency_key, category, description, address, source, reporter, accuracy_m,
                            crs, x, y, duplicate_metres, duplicate_hours, quota)
    if conn is None:
        row = session.execute(_report_statement(quota is not None), params).one()
    else:
        from psycopg import RawCursor

        sql, names = _report_driver_sql(quota is not None)
        with RawCursor(conn) as cur:
            row = cur.execute(sql, [params[n] for n in names]).fetchone()
    if quota is not None:
        quota.count, quota.reset = row[0], float(row[1])
        quota.refuse_if_exceeded("reports")
    if row[-1] is None:       # nothing written: a retry of a report already filed, or a bad category
        from sqlalchemy import text

        if callable(session):
            session = session()
        found = idempotency_key and session.execute(
            text("SELECT code FROM incident WHERE idempotency_key = :k"), {"k": idempotency_key}).scalar()
        if found:
            return json.dumps(detail(session, found), ensure_ascii=False), False
        known = {c["code"] for c in categories(session)}
        raise UnknownReference(f"unknown category {category!r}; categories: {', '.join(sorted(known))}",
                               field="category")
    return row[-1], True


def _report_params(actor, key, category, description, address, source, reporter, accuracy_m, crs, x, y,
                   duplicate_metres, duplicate_hours, quota) -> dict:
    """The parameters of :func:`_report_sql`, by name, from a report's checked values."""
    return {"key": key, "cat": category, "descr": description or "", "addr": address, "src": source,
            "rep": reporter or actor, "acc": accuracy_m, "crs": str(crs), "x": x, "y": y, "actor": actor,
            "m": duplicate_metres, "s": duplicate_hours * 3600, **(quota.params() if quota is not None else {})}


def report_warmup() -> tuple[str, list]:
    """The report statement (with a quota, as the web app runs it) and parameters of its types,
    to plan it on a new connection without running it (``EXPLAIN``)."""
    from gisgrid.layers.rate_limits import Quota

    sql, names = _report_driver_sql(True)
    params = _report_params("", "", "", "", "", "patrol", "", 0.0, "EPSG:4326", 0.0, 0.0, DUPLICATE_METRES,
                            DUPLICATE_HOURS, Quota("", 1, 60))
    return sql, [params[n] for n in names]


def _duplicates_sql(point: str, at: str, exclude: str) -> str:
    """An SQL expression: as a JSON array of ``{code, state, metres}`` (NULL if none), nearest
    first, the open incidents of category ``:cat`` within ``:m`` metres of the SQL point
    ``point``, reported within ``:s`` seconds of ``at``, other than incident id ``exclude``."""
    # the box first (ix_incident_open_category_hash_geom: open incidents by the hash of their
    # category and point; the category itself then drops a hash's other categories), the exact
    # distance on the few inside it: :m metres are at most :m / (111,320 cos lat) degrees of
    # longitude and fewer of latitude
    return (
        "(SELECT json_agg(json_build_object('code', d.code, 'state', d.state, 'metres', d.metres) "
        "ORDER BY d.metres, d.code) FROM (SELECT o.code, o.state, "
        f"round(ST_Distance(o.geom::geography, {point}::geography))::int AS metres FROM incident o "
        "WHERE hashtext(o.category) = hashtext(:cat) AND o.category = :cat "
        f"AND o.id <> {exclude} AND o.state IN {OPEN_STATES_SQL} "
        f"AND o.geom && ST_Expand({point}, :m / (111320.0 * greatest(cos(radians(ST_Y({point}))), 0.01))) "
        f"AND ST_DWithin(o.geom::geography, {point}::geography, :m) "
        f"AND abs(extract(epoch FROM o.reported_at - {at})) <= :s "
        "ORDER BY metres, o.code LIMIT 10) d)")


@functools.cache
def _report_statement(quota: bool):
    """The statement of :func:`_report_sql`, built once (a text() parses its SQL each time it is
    made), on one line."""
    from sqlalchemy import text

    return text(" ".join(_report_sql(quota).split()))


@functools.cache
def _report_driver_sql(quota: bool) -> tuple[str, tuple[str, ...]]:
    """:func:`_report_statement` with PostgreSQL's own ``$n`` parameters, and the parameter
    names in their order, for a psycopg ``RawCursor``: psycopg then neither parses nor
    converts the statement on each call (it does for ``%(name)s`` queries, and caches the
    conversion only for statements under 4 KiB; this one is about that long)."""
    from sqlalchemy.dialects.postgresql import psycopg

    compiled = _report_statement(quota).compile(dialect=psycopg.dialect(paramstyle="numeric_dollar"))
    return str(compiled), tuple(compiled.positiontup)


def _report_sql(quota: bool) -> str:
    """One statement files a report and answers it: where it is (the linking rule), its
    category's first deadline (the district's catalogue, else the default one), the incident,
    its link, its first event and its audit row; then what :func:`detail` would read of it,
    with the possible duplicates, as one JSON text (:func:`_new_incident_json`). Nothing is
    written (the answer is NULL) when the idempotency key was used before or the category is not
    in the catalogue. (Data-modifying CTEs cannot see
    each other's rows, so the link and level are computed before the insert, and the answer is
    built from what the inserts return, not read back from the tables.) With ``quota``, the
    statement first counts the attempt (``rate_limits.HIT_SQL``) and inserts only if allowed;
    it always returns one row: the quota's count and window end, and the answer (NULL when
    nothing was written)."""
    from gisgrid.layers.linking import COLUMNS, LOCATE_SQL
    from gisgrid.layers.rate_limits import HIT_SQL

    cols = ", ".join(COLUMNS)
    return f"""
    WITH {f"quota AS ({HIT_SQL})," if quota else ""}
    src AS (SELECT CAST(NULL AS integer) AS id, ST_SetSRID(ST_MakePoint(:x, :y), 4326) AS pt),
    loc AS ({LOCATE_SQL}),
    cat AS (SELECT c.sla_hours, c.name FROM incident_category c, loc
            WHERE c.code = :cat AND c.active AND (c.district_code = loc.district_code OR c.district_code IS NULL)
            ORDER BY c.district_code NULLS LAST LIMIT 1),
    ins AS (
        INSERT INTO incident (id, code, idempotency_key, category, description, address, source, reporter, state,
                              accuracy_m, input_crs, geom, level, deadline)
        SELECT n.id, 'SJ' || to_char(now() AT TIME ZONE 'Asia/Shanghai', 'YYYYMMDD') || lpad(CAST(n.id AS text), 7, '0'),
               :key, :cat, :descr, :addr, :src, :rep, 'reported', :acc, :crs, src.pt,
               CASE WHEN loc.grid_id IS NOT NULL THEN 'grid' WHEN loc.street_code IS NOT NULL THEN 'street'
                    ELSE 'district' END,
               now() + make_interval(hours => coalesce(CAST(cat.sla_hours ->> 'reported' AS integer), 2))
        FROM src, loc, cat, (SELECT nextval(pg_get_serial_sequence('incident', 'id')) AS id) n
        {"WHERE (SELECT allowed FROM quota)" if quota else ""}
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING *),
    link AS (INSERT INTO incident_link (id, {cols}) SELECT ins.id, {", ".join("loc." + c for c in COLUMNS)}
             FROM ins, loc),
    event AS (INSERT INTO incident_event (incident_id, actor, from_state, to_state, note)
              SELECT id, :actor, NULL, 'reported', '[report]' FROM ins RETURNING *),
    audit AS (INSERT INTO audit_log (actor, action, entity, entity_id, after)
              SELECT :actor, 'create', 'incident', CAST(ins.id AS text),
                     jsonb_build_object('code', ins.code, 'category', ins.category, 'lon', ST_X(ins.geom),
                                        'lat', ST_Y(ins.geom), 'crs', ins.input_crs, 'source', ins.source)
              FROM ins)
    SELECT {"q.count AS quota_count, q.reset AS quota_reset," if quota else ""}
           CAST(CASE WHEN i.id IS NOT NULL THEN {_new_incident_json()} END AS text) AS answer
    FROM {"quota" if quota else "(SELECT)"} q LEFT JOIN (ins i CROSS JOIN loc l CROSS JOIN cat k) ON true"""


def category_name_sql(category: str, district: str) -> str:
    """An SQL expression: the name of category ``category`` (SQL) in the catalogue of district
    ``district`` (SQL): as a report picks the entry (the district's own active one, else the
    default catalogue's), then an inactive one (an incident keeps its category's name after the
    category is retired); else the code."""
    return (f"coalesce((SELECT c.name FROM incident_category c WHERE c.code = {category} "
            f"AND (c.district_code = {district} OR c.district_code IS NULL) "
            f"ORDER BY c.active DESC, c.district_code NULLS LAST LIMIT 1), {category})")


def _iso_sql(t: str) -> str:
    """An SQL expression: the timestamptz ``t`` as Python's ``datetime.isoformat()`` writes it
    (what :func:`detail` answers): microseconds only when there are some, the offset as +HH:MM."""
    return (f"(to_char({t}, 'YYYY-MM-DD\"T\"HH24:MI:SS') || CASE to_char({t}, 'US') WHEN '000000' THEN '' "
            f"ELSE '.' || to_char({t}, 'US') END || to_char({t}, 'TZH:TZM'))")


def _new_incident_json() -> str:
    """An SQL expression, inside :func:`_report_sql`'s last SELECT: the answer to a report, the
    JSON :func:`detail` gives of the incident ``i`` just inserted (link ``l``, its category's
    catalogue entry ``k``, first event ``event``), plus its possible duplicates. A new incident
    has no assignee, no merge, no photos, its state is ``reported`` and its first deadline is
    ahead. Built by the statement so
    the server passes the text on: no JSON parsed or written in Python on the hot path.
    ``test_report_answer_is_the_incident_as_read_back`` holds it to :func:`detail`, field for
    field."""
    from gisgrid.layers import staff
    from gisgrid.workflow import allowed_actions

    plain = ("code", "category", "description", "address", "source", "reporter", "state", "level", "accuracy_m",
             "input_crs", "satisfaction", "evaluation_comment")
    link = ("grid_id", "grid_code", "community_code", "street_code", "district_code")
    times = ("reported_at", "updated_at", "deadline", "closed_at")
    allowed = ", ".join(f"'{a}'" for a in allowed_actions("reported"))
    pairs = ([f"'{c}', i.{c}" for c in plain] + [f"'{c}', l.{c}" for c in link]
             + [f"'{c}', {_iso_sql('i.' + c)}" for c in times]
             + ["'lon', ST_X(i.geom)", "'lat', ST_Y(i.geom)", "'assignee', NULL", "'assignee_name', NULL",
                "'merged_into', NULL", "'overdue', false", "'photos', json_build_array()",
                "'category_name', k.name", f"'state_name', '{STATES['reported']}'",
                f"'allowed', json_build_array({allowed})",
                "'events', (SELECT json_agg(json_build_object('at', e.at, 'actor', e.actor, 'from_state', "
                "e.from_state, 'to_state', e.to_state, 'note', e.note)) FROM event e)",
                f"'team', {staff.team_sql('l.grid_id', labelled=True)}",
                f"'possible_duplicates', coalesce({_duplicates_sql('i.geom', 'i.reported_at', 'i.id')}, '[]')"])
    return "json_build_object(" + ", ".join(pairs) + ")"


_DETAIL_COLUMNS = (
    "SELECT i.id, i.code, i.category, i.description, i.address, i.source, i.reporter, i.state, i.level, "
    "i.accuracy_m, i.input_crs, i.reported_at, i.updated_at, i.deadline, i.closed_at, i.satisfaction, "
    "i.evaluation_comment, l.grid_id, l.grid_code, l.community_code, l.street_code, l.district_code, "
    "ST_X(i.geom) AS lon, ST_Y(i.geom) AS lat, s.code AS assignee, s.name AS assignee_name, m.code AS merged_into, "
    "(i.deadline < now() AND i.state = ANY(:open)) AS overdue, "
    f"{category_name_sql('i.category', 'l.district_code')} AS category_name "
)
_DETAIL_FROM = (
    "FROM incident i LEFT JOIN incident_link l ON l.id = i.id LEFT JOIN staff s ON s.id = i.assignee_id "
    "LEFT JOIN incident m ON m.id = i.merged_into_id "
)
_DETAIL = _DETAIL_COLUMNS + _DETAIL_FROM
#: the link of incident ``i`` as ``l`` (gisgrid.layers.linking); scopes filter on ``l``
LINK = "LEFT JOIN incident_link l ON l.id = i.id"


def _jsonable(row) -> dict:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in dict(row).items()}


def detail(session, code: str, scope: tuple[str, dict] = ("TRUE", {})) -> dict:
    """One incident with its history, photos, the grid's team and the actions now allowed.
    ``scope`` from :func:`gisgrid.authz.scope_sql` on the link ``l``."""
    from sqlalchemy import text

    from gisgrid.errors import NotFound
    from gisgrid.layers import photos, staff

    # one round trip: the row, its history, photos and the grid's team as JSON columns
    row = session.execute(text(
        f"{_DETAIL_COLUMNS}, {_EVENTS_JSON} AS events, {photos.of_incident_sql('i.id')} AS photos, "
        f"{staff.team_sql('l.grid_id')} AS team {_DETAIL_FROM} WHERE i.code = :c AND {scope[0]}"),
        {"c": code, "open": list(OPEN_STATES), **scope[1]}).mappings().first()
    if row is None:
        raise NotFound(f"no incident {code!r} in your jurisdiction", field="code")
    return _detail_out(row)


def _detail_out(row) -> dict:
    """The JSON of an incident from a row of :data:`_DETAIL_COLUMNS` and its JSON columns."""
    from gisgrid.layers import staff
    from gisgrid.workflow import allowed_actions

    out = _jsonable(row)
    out["state_name"] = STATES[out["state"]]
    out["team"] = staff.labelled(out["team"]) if out["grid_id"] else []
    out["allowed"] = allowed_actions(out["state"])
    out.pop("id")
    return out


#: the history of incident ``i`` as a JSON array, oldest first
_EVENTS_JSON = ("(SELECT json_agg(json_build_object('at', e.at, 'actor', e.actor, 'from_state', e.from_state, "
                "'to_state', e.to_state, 'note', e.note) ORDER BY e.at, e.id) FROM incident_event e "
                "WHERE e.incident_id = i.id)")


def _reported_between(conds: list, params: dict, since, until) -> None:
    """Add the ``[since, until)`` condition on ``i.reported_at`` (either bound optional)."""
    if since:
        conds.append("i.reported_at >= :since")
        params["since"] = since
    if until:
        conds.append("i.reported_at < :until")
        params["until"] = until


def scoped_id(session, code: str, scope: tuple[str, dict]) -> int:
    """The id of incident ``code`` if it lies inside ``scope`` (on the link ``l``); NotFound otherwise."""
    from sqlalchemy import text

    from gisgrid.errors import NotFound

    found = session.execute(text(f"SELECT i.id FROM incident i {LINK} WHERE i.code = :c AND {scope[0]}"),
                            {"c": code, **scope[1]}).scalar()
    if found is None:
        raise NotFound(f"no incident {code!r} in your jurisdiction", field="code")
    return found


def search(session, scope: tuple[str, dict], *, state=None, category=None, grid=None, area=None, since=None,
           until=None, assignee_username=None, overdue=False, limit=100, offset=0) -> dict:
    """Incidents inside ``scope`` (on the link ``l``) with filters, newest first: ``{"total", "items"}``."""
    from sqlalchemy import text

    conds, params = [scope[0]], dict(scope[1])
    for col, val in (("i.state", state), ("i.category", category), ("l.grid_code", grid)):
        if val:
            conds.append(f"{col} = ANY(:{col[2:]})")
            params[col[2:]] = val.split(",") if isinstance(val, str) else list(val)
    if area:
        conds.append("(l.community_code = :area OR l.street_code = :area OR l.district_code = :area)")
        params["area"] = area
    _reported_between(conds, params, since, until)
    if overdue:
        conds.append("i.deadline < now() AND i.state = ANY(:open)")
    if assignee_username:
        conds.append("i.assignee_id IN (SELECT id FROM staff WHERE code = :me OR name = :me)")
        params["me"] = assignee_username
    where = " AND ".join(conds)
    params.update(open=list(OPEN_STATES), limit=limit, offset=offset)
    total = session.execute(text(f"SELECT count(*) FROM incident i {LINK} WHERE {where}"), params).scalar()
    rows = session.execute(text(_DETAIL + f"WHERE {where} ORDER BY i.reported_at DESC, i.id DESC "
                                          "LIMIT :limit OFFSET :offset"), params).mappings()
    items = []
    for r in rows:
        d = _jsonable(r)
        d.pop("id")
        items.append(d)
    return {"total": total, "items": items}


# -- statistics -------------------------------------------------------------------------------
#: resolved (化解): closed, neither rejected nor merged into another as a duplicate (alias ``i``)
RESOLVED_SQL = ("(i.state = 'closed' AND i.merged_into_id IS NULL AND NOT EXISTS ("
                "SELECT 1 FROM incident_event e WHERE e.incident_id = i.id AND e.note LIKE '[reject]%'))")
STAT_LEVELS = {"grid": "grid_code", "community": "community_code", "street": "street_code", "district": "district_code"}
STAT_COLUMNS = {   # key → (Chinese header, English header)
    "code": ("区域编码", "area code"), "name": ("区域名称", "area name"), "category": ("类别", "category"),
    "received": ("受理数", "received"), "open": ("未办结", "open"), "overdue": ("超期", "overdue"),
    "resolved": ("已化解", "resolved"), "resolution_rate": ("化解率", "resolution rate"),
    "mean_hours_to_close": ("平均办结时长(小时)", "mean hours to close"),
    "p90_hours_to_close": ("P90办结时长(小时)", "p90 hours to close"),
    "satisfaction_rate": ("满意率", "satisfaction rate"),
}


def statistics(session, scope: tuple[str, dict], *, level: str = "community", since=None, until=None,
               by_category: bool = False) -> list[dict]:
    """Incident figures per area of ``level`` (and per category with ``by_category``) for the
    incidents reported in ``[since, until)`` inside ``scope`` (on the link ``l``).

    * resolved: closed, neither rejected nor merged as a duplicate; resolution rate (化解率) =
      resolved / received;
    * time to close: ``closed_at - reported_at`` of the resolved, mean and 90th percentile, hours;
    * satisfaction rate (满意率): evaluations of 4 or 5 out of all evaluations.
    Rates are fractions (0–1), None where there is nothing to divide.
    """
    from sqlalchemy import text

    from gisgrid.errors import InvalidInput

    if level not in STAT_LEVELS:
        raise InvalidInput(f"level must be one of {', '.join(STAT_LEVELS)}, got {level!r}", field="level")
    col = STAT_LEVELS[level]
    conds, params = [scope[0], f"l.{col} IS NOT NULL"], {**scope[1], "open": list(OPEN_STATES)}
    _reported_between(conds, params, since, until)
    group = f"i.{col}, i.category" if by_category else f"i.{col}"
    names = ("(SELECT name FROM grid WHERE code = s.code AND valid_to IS NULL LIMIT 1)" if level == "grid"
             else "(SELECT name FROM admin_area WHERE code = s.code)")
    sql = f"""
        WITH base AS (
            SELECT i.*, l.grid_code, l.community_code, l.street_code, l.district_code, {RESOLVED_SQL} AS resolved
            FROM incident i {LINK} WHERE {' AND '.join(conds)}),
        s AS (
            SELECT i.{col} AS code, {"i.category" if by_category else "NULL::text"} AS category,
                   count(*) AS received,
                   count(*) FILTER (WHERE state = ANY(:open)) AS open,
                   count(*) FILTER (WHERE state = ANY(:open) AND deadline < now()) AS overdue,
                   count(*) FILTER (WHERE resolved) AS resolved,
                   avg(extract(epoch FROM closed_at - reported_at) / 3600) FILTER (WHERE resolved) AS mean_h,
                   percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM closed_at - reported_at) / 3600)
                       FILTER (WHERE resolved) AS p90_h,
                   count(*) FILTER (WHERE satisfaction >= 4) AS satisfied,
                   count(satisfaction) AS evaluated
            FROM base i GROUP BY {group})
        SELECT s.*, {names} AS name FROM s ORDER BY s.code, s.category"""
    out = []
    for r in session.execute(text(sql), params).mappings():
        out.append({
            "code": r["code"], "name": r["name"], "category": r["category"], "received": r["received"],
            "open": r["open"], "overdue": r["overdue"], "resolved": r["resolved"],
            "resolution_rate": round(r["resolved"] / r["received"], 4) if r["received"] else None,
            "mean_hours_to_close": round(float(r["mean_h"]), 2) if r["mean_h"] is not None else None,
            "p90_hours_to_close": round(float(r["p90_h"]), 2) if r["p90_h"] is not None else None,
            "satisfaction_rate": round(r["satisfied"] / r["evaluated"], 4) if r["evaluated"] else None,
        })
    return out
