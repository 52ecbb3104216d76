"""Users of gisgrid (accounts, not residents) and their API tokens.

Passwords are hashed with Argon2id (``argon2-cffi``, its default parameters). API tokens are
shown once at creation (``ggt_`` + 43 random characters), stored as their SHA-256 (a token is
a 256-bit secret, so a fast hash is enough), scoped to a subset of the user's actions,
revocable and optionally expiring. Roles and jurisdictions are interpreted by
:mod:`gisgrid.authz`; this module only stores and checks them.
"""
from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta, timezone

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Boolean, CheckConstraint, DateTime, ForeignKey, Integer, String, func, or_, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, Session, mapped_column

from gisgrid.authz import ROLE_PERMISSIONS, TOKEN_SCOPES, Principal
from gisgrid.db.base import Base
from gisgrid.errors import DuplicateCode, InvalidInput, NotFound, UnknownReference

ROLES = {"admin": "管理员", "commander": "指挥中心", "planner": "规划员", "field": "网格员", "viewer": "只读"}
MIN_PASSWORD = 10
LAST_USED_EVERY = timedelta(minutes=5)
_HASHER = PasswordHasher()
_DUMMY_HASH = _HASHER.hash("timing equaliser for unknown users")


class User(Base):
    __tablename__ = "app_user"
    __table_args__ = (CheckConstraint("role IN ('admin', 'commander', 'planner', 'field', 'viewer')", name="role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    display_name: Mapped[str | None] = mapped_column(String(100))
    password_hash: Mapped[str | None] = mapped_column(String(300))
    role: Mapped[str] = mapped_column(String(20))
    #: admin codes or grid codes the user may see and act on
    jurisdiction: Mapped[list[str]] = mapped_column(ARRAY(String(20)), default=list, server_default="{}")
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")
    #: bumped on password change or disable: sessions carrying an older value are refused
    session_version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    def principal(self, scopes=None) -> Principal:
        return Principal(self.username, self.role, tuple(self.jurisdiction or ()),
                         None if scopes is None else frozenset(scopes), self.id)


class ApiToken(Base):
    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(Integer, ForeignKey("app_user.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(12))
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(20)))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


def _check_jurisdiction(session: Session, codes: list[str]) -> list[str]:
    from sqlalchemy import text

    codes = sorted(set(codes))
    known = {r[0] for r in session.execute(text(
        "SELECT code FROM admin_area WHERE code = ANY(:c) UNION SELECT code FROM grid "
        "WHERE code = ANY(:c) AND valid_to IS NULL"), {"c": codes})}
    unknown = [c for c in codes if c not in known]
    if unknown:
        raise UnknownReference(f"jurisdiction codes name no admin area or grid: {', '.join(unknown)}",
                               field="jurisdiction")
    return codes


def check_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise InvalidInput(f"password must be at least {MIN_PASSWORD} characters", field="password")
    return password


def add(session: Session, username: str, role: str, jurisdiction: list[str], password: str,
        display_name: str | None = None) -> User:
    """Create a user. ``admin`` may have an empty jurisdiction (it sees everything); every other
    role needs at least one admin area or grid code."""
    if role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}, got {role!r}", field="role")
    if not username or len(username) > 100 or not username.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise InvalidInput(f"username must be 1–100 letters, digits, '.', '-' or '_', got {username!r}",
                           field="username")
    if role != "admin" and not jurisdiction:
        raise InvalidInput(f"a {role} needs a jurisdiction (admin area or grid codes)", field="jurisdiction")
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise DuplicateCode(f"user {username!r} exists", field="username")
    user = User(username=username, role=role, jurisdiction=_check_jurisdiction(session, jurisdiction),
                password_hash=_HASHER.hash(check_password(password)), display_name=display_name)
    session.add(user)
    session.flush()
    return user


def get(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound(f"no user {username!r}", field="username")
    return user


def set_password(session: Session, user: User, password: str) -> None:
    user.password_hash = _HASHER.hash(check_password(password))
    user.session_version += 1


def set_active(session: Session, user: User, active: bool) -> None:
    user.active = active
    user.session_version += 1


def authenticate(session: Session, username: str, password: str) -> User | None:
    """The active user with this password, or None. Takes the same time for unknown users."""
    user = session.scalar(select(User).where(User.username == username))
    try:
        _HASHER.verify(user.password_hash if user and user.password_hash else _DUMMY_HASH, password or "")
    except (VerificationError, InvalidHashError):
        return None
    if user is None or not user.active:
        return None
    if _HASHER.check_needs_rehash(user.password_hash):
        user.password_hash = _HASHER.hash(password)
    return user


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, user: User, name: str, scopes: list[str], days: int | None = 365) -> tuple[str, ApiToken]:
    """A new token for ``user``; returns the plain token (shown once) and its row."""
    scopes = sorted(set(scopes))
    bad = [s for s in scopes if s not in TOKEN_SCOPES]
    if bad or not scopes:
        raise InvalidInput(f"scopes must be a non-empty subset of {sorted(TOKEN_SCOPES)}, got {scopes}", field="scopes")
    beyond = [s for s in scopes if s not in ROLE_PERMISSIONS[user.role]]
    if beyond:
        raise InvalidInput(f"role {user.role!r} cannot grant {beyond}", field="scopes")
    plain = "ggt_" + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user.id, name=name, token_hash=_digest(plain), prefix=plain[:8], scopes=scopes,
                   expires_at=datetime.now(timezone.utc) + timedelta(days=days) if days else None)
    session.add(row)
    session.flush()
    return plain, row


def token_digest(token: str) -> str:
    """What is stored of a token (its SHA-256): the key it is looked up and remembered by."""
    return _digest(token)


def principal_for_token(session: Session, token: str) -> tuple[Principal, datetime | None] | None:
    """The principal a bearer token stands for and the token's expiry time, or None if it is
    unknown, revoked or expired."""
    if not token or not token.startswith("ggt_"):
        return None
    now = datetime.now(timezone.utc)
    row = session.execute(
        select(ApiToken, User).join(User, User.id == ApiToken.user_id)
        .where(ApiToken.token_hash == _digest(token), ApiToken.revoked_at.is_(None), User.active.is_(True),
               or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > now))).first()
    if row is None:
        return None
    tok, user = row
    if tok.last_used_at is None or now - tok.last_used_at > LAST_USED_EVERY:
        tok.last_used_at = now      # at most every few minutes: not a write on every request
    return user.principal(tok.scopes), tok.expires_at


def revoke_token(session: Session, token_id: int) -> None:
    tok = session.get(ApiToken, token_id)
    if tok is None:
        raise NotFound(f"no token {token_id}", field="id")
    tok.revoked_at = datetime.now(timezone.utc)
