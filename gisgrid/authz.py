"""Who may do what, where: the one place that decides.

A :class:`Principal` is the caller: a user's role (which actions) and jurisdiction (which
admin areas or grids), narrowed by an API token's scopes. Every endpoint and tile asks
:func:`require` for its action and filters rows with :func:`scope_sql`; nothing else decides.

Jurisdiction codes are 12-digit admin codes (district ``…000000``, street ``…000``, community)
or 15-digit grid codes. A record is inside when any of its stored codes (``district_code``,
``street_code``, ``community_code``, ``grid_code``) is one of the jurisdiction's codes at that
level: a district commander sees the whole district, a community worker the community, a
field worker their own grids. Records outside every grid (unlinked) carry only the admin codes
that contain them, so they are seen at the level that can route them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from gisgrid.errors import GisgridError

#: role → actions. ``pii``: may see unmasked personal data (with a reason, audited).
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": frozenset({"read", "report", "act", "dispatch", "plan", "import", "export", "pii", "users", "audit"}),
    "commander": frozenset({"read", "report", "act", "dispatch", "export", "audit"}),
    "planner": frozenset({"read", "plan", "import", "export"}),
    "field": frozenset({"read", "report", "act", "pii"}),
    "viewer": frozenset({"read"}),
}
ACTIONS = frozenset().union(*ROLE_PERMISSIONS.values())
#: what a token may be scoped to (a subset of its user's actions)
TOKEN_SCOPES = ACTIONS - {"users"}


class Unauthenticated(GisgridError):
    status = 401


class Forbidden(GisgridError):
    status = 403


@dataclass(frozen=True)
class Principal:
    username: str
    role: str
    jurisdiction: tuple[str, ...] = ()
    scopes: frozenset[str] | None = None     # None: a session, all of the role's actions
    user_id: int | None = None
    levels: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if self.role not in ROLE_PERMISSIONS:
            raise ValueError(f"unknown role {self.role!r}; roles: {', '.join(ROLE_PERMISSIONS)}")
        self.levels.update(split_codes(self.jurisdiction))

    @property
    def actions(self) -> frozenset[str]:
        allowed = ROLE_PERMISSIONS[self.role]
        return allowed if self.scopes is None else allowed & self.scopes

    @property
    def everywhere(self) -> bool:
        return self.role == "admin"

    def can(self, action: str) -> bool:
        return action in self.actions


def split_codes(codes) -> dict[str, list[str]]:
    """Jurisdiction codes by level: ``district``, ``street``, ``community``, ``grid``."""
    out = {"district": [], "street": [], "community": [], "grid": []}
    for c in codes:
        if len(c) == 15 or len(c) > 12:
            out["grid"].append(c)
        elif c.endswith("000000"):
            out["district"].append(c)
        elif c.endswith("000"):
            out["street"].append(c)
        else:
            out["community"].append(c)
    return out


def require(principal: Principal | None, action: str) -> Principal:
    """The principal, if it may perform ``action``; else Unauthenticated (401) or Forbidden (403)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    if principal is None:
        raise Unauthenticated("log in, or send an API token as 'Authorization: Bearer …'")
    if not principal.can(action):
        raise Forbidden(f"role {principal.role!r}"
                        + (f" with token scopes {sorted(principal.scopes)}" if principal.scopes is not None else "")
                        + f" may not {action!r}")
    return principal


def scope_sql(principal: Principal, alias: str = "", *, grid_col: str | None = "grid_code") -> tuple[str, dict]:
    """A SQL condition (and its bound parameters) keeping the rows of a linked table (or the
    grid table with ``grid_col="code"``) inside the principal's jurisdiction. ``grid_col=None``:
    the table has no grid column (admin areas), grid codes of the jurisdiction match nothing."""
    if principal.everywhere:
        return "TRUE", {}
    p = f"{alias}." if alias else ""
    lv = principal.levels
    conds, params = [], {}
    chain = (("district", "district_code", 6), ("street", "street_code", 9), ("community", "community_code", 12),
             ("grid", grid_col, None))
    for depth, (level, col, _) in enumerate(chain):
        if not lv[level] or col is None:      # grid_col=None: the table has no grid column
            continue
        # the level's codes, with the parents they imply, so one (district, street, community,
        # grid) index serves every level: e.g. street 420103001000 → district 420103000000
        parts = []
        for plevel, pcol, digits in chain[:depth]:
            parents = sorted({c[:digits].ljust(12, "0") for c in lv[level]})
            parts.append(f"{p}{pcol} = ANY(:jur_{level}_{plevel})")
            params[f"jur_{level}_{plevel}"] = parents
        parts.append(f"{p}{col} = ANY(:jur_{level})")
        params[f"jur_{level}"] = lv[level]
        conds.append("(" + " AND ".join(parts) + ")")
    return ("(" + " OR ".join(conds) + ")" if conds else "FALSE"), params


def covers(principal: Principal, record: dict) -> bool:
    """Whether one record (a dict with some of ``district_code``, ``street_code``,
    ``community_code``, ``grid_code``) lies inside the jurisdiction."""
    if principal.everywhere:
        return True
    lv = principal.levels
    return any(record.get(col) in lv[level] for level, col in (
        ("district", "district_code"), ("street", "street_code"), ("community", "community_code"),
        ("grid", "grid_code")) if record.get(col))


def admin_area_sql(principal: Principal, alias: str = "") -> tuple[str, dict]:
    """Admin areas visible to the principal: those inside the jurisdiction and those that
    contain it (so a field worker sees the outline of their community and street)."""
    if principal.everywhere:
        return "TRUE", {}
    p = f"{alias}." if alias else ""
    codes = list(principal.jurisdiction)
    ancestors = sorted({c[:6] + "000000" for c in codes} | {c[:9] + "000" for c in codes if not c.endswith("000000")}
                       | {c[:12] for c in codes if len(c) > 12})
    inside, params = scope_sql(principal, alias, grid_col=None)
    return f"({inside} OR {p}code = ANY(:jur_ancestors))", {**params, "jur_ancestors": ancestors}


def area_geom_sql(principal: Principal, alias: str = "") -> tuple[str, dict]:
    """Unlinked records (roads) visible to the principal: those whose geometry meets an admin
    area or current grid of the jurisdiction."""
    if principal.everywhere:
        return "TRUE", {}
    p = f"{alias}." if alias else ""
    codes = list(principal.jurisdiction)
    return ("(EXISTS (SELECT 1 FROM admin_area ja WHERE ja.code = ANY(:jur_codes) AND ST_Intersects(ja.geom, "
            f"{p}geom)) OR EXISTS (SELECT 1 FROM grid jg WHERE jg.valid_to IS NULL AND jg.code = ANY(:jur_codes) "
            f"AND ST_Intersects(jg.geom, {p}geom)))"), {"jur_codes": codes}
