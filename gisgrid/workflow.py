"""The work-order state machine: 受理 accept → 分流 dispatch → 处置 handle → 反馈 feedback →
评价 evaluate → 办结 close, with escalation and return along grid → community → street →
district. The one place that says which action moves an incident from which state to which,
who may take it, and what it must carry.

Every transition locks the incident row, checks the state inside the lock (so two people never
both move it), writes an ``incident_event`` and an audit row, and sets the deadline of the next
step from the category's SLA.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import text
from sqlalchemy.orm import Session

from gisgrid import authz
from gisgrid.errors import IllegalTransition, InvalidInput, NotFound, UnknownReference
from gisgrid.layers import audit
from gisgrid.layers.incidents import LEVELS


@dataclass(frozen=True)
class Action:
    name: str
    label: str
    sources: tuple[str, ...]
    target: str
    permission: str
    needs_note: bool = False


ACTIONS = {a.name: a for a in (
    Action("accept", "受理", ("reported",), "accepted", "dispatch"),
    Action("reject", "不予受理", ("reported",), "closed", "dispatch", needs_note=True),
    Action("dispatch", "分派", ("accepted",), "dispatched", "dispatch"),
    Action("start", "开始处置", ("dispatched",), "handling", "act"),
    Action("feedback", "反馈", ("handling",), "feedback", "act", needs_note=True),
    Action("evaluate", "评价", ("feedback",), "evaluated", "act"),
    Action("redo", "重办", ("feedback", "evaluated"), "handling", "dispatch", needs_note=True),
    Action("close", "办结", ("evaluated",), "closed", "dispatch"),
    Action("escalate", "上报", ("accepted", "dispatched", "handling"), "accepted", "act", needs_note=True),
    Action("return", "退回", ("accepted", "dispatched", "handling"), "accepted", "act", needs_note=True),
)}


def allowed_actions(state: str) -> list[str]:
    return [a.name for a in ACTIONS.values() if state in a.sources]


def _locked(session: Session, principal: authz.Principal, code: str) -> dict:
    row = session.execute(text(
        "SELECT i.*, l.grid_id, l.grid_code, l.community_code, l.street_code, l.district_code "
        "FROM incident i LEFT JOIN incident_link l ON l.id = i.id WHERE i.code = :c FOR UPDATE OF i"), {"c": code}).mappings().first()
    if row is None or not authz.covers(principal, row):
        raise NotFound(f"no incident {code!r} in your jurisdiction", field="code")
    return dict(row)


def sla_hours(session: Session, category: str, district_code: str | None, state: str) -> int | None:
    sla = session.execute(text(
        "SELECT sla_hours FROM incident_category WHERE code = :c AND (district_code = :d OR district_code IS NULL) "
        "ORDER BY district_code NULLS LAST LIMIT 1"), {"c": category, "d": district_code}).scalar()
    return (sla or {}).get(state)


def _grid_head(session: Session, grid_id: int | None) -> int | None:
    if grid_id is None:
        return None
    return session.execute(text(
        "SELECT staff_id FROM grid_assignment WHERE grid_id = :g AND role = 'head' AND valid_to IS NULL "
        "ORDER BY id LIMIT 1"), {"g": grid_id}).scalar()


def transition(session: Session, principal: authz.Principal, code: str, action: str, *, note: str | None = None,
               assignee: str | None = None, satisfaction=None, comment: str | None = None) -> dict:
    """Apply ``action`` to incident ``code`` for ``principal``; returns the new state.

    Raises
    ------
    Forbidden
        The role may not take this action.
    NotFound
        No such incident in the principal's jurisdiction.
    IllegalTransition (409)
        The state does not allow the action; the allowed ones are named.
    InvalidInput
        A missing note, a satisfaction outside 1–5, a level beyond the ladder.
    """
    if action not in ACTIONS:
        raise InvalidInput(f"unknown action {action!r}; actions: {', '.join(ACTIONS)}", field="action")
    act = ACTIONS[action]
    authz.require(principal, act.permission)
    note = (note or "").strip() or None
    if note and len(note) > 2000:
        raise InvalidInput(f"note is {len(note)} characters; at most 2000", field="note")
    inc = _locked(session, principal, code)
    if inc["state"] not in act.sources:
        allowed = allowed_actions(inc["state"])
        raise IllegalTransition(f"cannot {action} an incident in state {inc['state']!r}; allowed: "
                                f"{', '.join(allowed) or 'none (closed)'}", allowed)
    if act.needs_note and not note:
        raise InvalidInput(f"{action} needs a note saying why or what was done", field="note")
    changes: dict = {"state": act.target}
    level = inc["level"]
    if action in ("escalate", "return"):
        i = LEVELS.index(level) + (1 if action == "escalate" else -1)
        if not 0 <= i < len(LEVELS):
            raise InvalidInput(f"cannot {action} beyond the {level} level", field="action")
        changes["level"] = LEVELS[i]
        changes["assignee_id"] = None
    if action == "dispatch":
        if assignee:
            staff_id = session.execute(text("SELECT id FROM staff WHERE code = :c"), {"c": assignee}).scalar()
            if staff_id is None:
                raise UnknownReference(f"no staff member {assignee!r}", field="assignee")
        else:
            staff_id = _grid_head(session, inc["grid_id"])
            if staff_id is None:
                raise InvalidInput("this incident has no grid head to default to: name an assignee (staff code)",
                                   field="assignee")
        changes["assignee_id"] = staff_id
    if action == "evaluate":
        try:
            sat = int(satisfaction)
        except (TypeError, ValueError):
            raise InvalidInput(f"satisfaction must be an integer 1–5, got {satisfaction!r}", field="satisfaction") from None
        if not 1 <= sat <= 5:
            raise InvalidInput(f"satisfaction must be 1–5, got {sat}", field="satisfaction")
        changes["satisfaction"], changes["evaluation_comment"] = sat, (comment or "").strip()[:2000] or None
    now = datetime.now(timezone.utc)
    if act.target == "closed":
        changes["closed_at"], changes["deadline"] = now, None
    else:
        hours = sla_hours(session, inc["category"], inc["district_code"], act.target)
        changes["deadline"] = now + timedelta(hours=hours) if hours else None
    changes["updated_at"] = now
    session.execute(text(f"UPDATE incident SET {', '.join(f'{k} = :{k}' for k in changes)} WHERE id = :id"),
                    {**changes, "id": inc["id"]})
    session.execute(text("INSERT INTO incident_event (incident_id, at, actor, from_state, to_state, note) "
                         "VALUES (:i, :at, :a, :f, :t, :n)"),
                    {"i": inc["id"], "at": now, "a": principal.username, "f": inc["state"], "t": act.target,
                     "n": f"[{action}] {note}" if note else f"[{action}]"})
    audit.record(session, principal.username, action, "incident", inc["id"],
                 before={"state": inc["state"], "level": level},
                 after={k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in changes.items()}, reason=note)
    return {"code": code, "state": act.target, "level": changes.get("level", level),
            "allowed": allowed_actions(act.target)}


def merge(session: Session, principal: authz.Principal, code: str, into: str, note: str | None = None) -> dict:
    """Close ``code`` as a duplicate of ``into`` (both in the principal's jurisdiction, ``into`` open)."""
    from gisgrid.layers.incidents import OPEN_STATES

    authz.require(principal, "dispatch")
    if code == into:
        raise InvalidInput("an incident cannot be merged into itself", field="into")
    src, dst = _locked(session, principal, code), _locked(session, principal, into)
    if src["state"] not in OPEN_STATES:
        raise IllegalTransition(f"{code} is {src['state']}: only open incidents can be merged", [])
    if dst["state"] not in OPEN_STATES:
        raise IllegalTransition(f"{into} is {dst['state']}: merge into an open incident", [])
    now = datetime.now(timezone.utc)
    session.execute(text("UPDATE incident SET state = 'closed', closed_at = :now, deadline = NULL, updated_at = :now, "
                         "merged_into_id = :d WHERE id = :s"), {"now": now, "d": dst["id"], "s": src["id"]})
    session.execute(text("INSERT INTO incident_event (incident_id, at, actor, from_state, to_state, note) "
                         "VALUES (:i, :at, :a, :f, 'closed', :n)"),
                    {"i": src["id"], "at": now, "a": principal.username, "f": src["state"],
                     "n": f"[merge] → {into}" + (f": {note}" if note else "")})
    audit.record(session, principal.username, "merge", "incident", src["id"], before={"state": src["state"]},
                 after={"state": "closed", "merged_into": into}, reason=note)
    return {"code": code, "state": "closed", "merged_into": into}
