"""Personal data (PIPL): encryption at rest, masking, blind indexes.

ID numbers and phone numbers are stored encrypted with Fernet (AES-128-CBC + HMAC-SHA256, from
``cryptography``), under a key that comes from the environment and never from the repository:

* ``GISGRID_PII_KEY`` – a Fernet key (urlsafe base64 of 32 bytes), or
* ``GISGRID_PII_KEY_FILE`` – a file holding one (``gisgrid demo`` creates
  ``$GISGRID_HOME/pii.key`` for the demo only, mode 0600).

Beside the ciphertext each value keeps its masked form (``4201**********1234``,
``138****5678``), which every response shows unless the caller holds the PII permission and
gives a reason, and a keyed blind index (HMAC-SHA256 of the normalised value, key derived from
the same secret) so a resident can be found by ID number without decrypting the table.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from gisgrid.errors import GisgridError


class PiiKeyMissing(GisgridError):
    status = 503


def new_key() -> str:
    return Fernet.generate_key().decode()


def key_from_env(env=None) -> str:
    env = os.environ if env is None else env
    if env.get("GISGRID_PII_KEY"):
        return env["GISGRID_PII_KEY"].strip()
    path = env.get("GISGRID_PII_KEY_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as e:
            raise PiiKeyMissing(f"GISGRID_PII_KEY_FILE {path!r} cannot be read: {e.strerror}") from e
    raise PiiKeyMissing("no key for personal data: set GISGRID_PII_KEY (a Fernet key, "
                        "`python -c 'from gisgrid.pii import new_key; print(new_key())'`) or GISGRID_PII_KEY_FILE")


class Vault:
    """Encrypts, decrypts, masks and indexes personal values under one key."""

    def __init__(self, key: str):
        try:
            self._fernet = Fernet(key.encode() if isinstance(key, str) else key)
        except (ValueError, TypeError) as e:
            raise PiiKeyMissing("the PII key is not a Fernet key (urlsafe base64 of 32 bytes)") from e
        raw = base64.urlsafe_b64decode(key)
        self._index_key = hashlib.sha256(b"gisgrid blind index\0" + raw).digest()

    def encrypt(self, value: str | None) -> bytes | None:
        return None if value is None else self._fernet.encrypt(value.encode())

    def decrypt(self, token: bytes | None) -> str | None:
        if token is None:
            return None
        try:
            return self._fernet.decrypt(bytes(token)).decode()
        except InvalidToken as e:
            raise GisgridError("personal data cannot be decrypted with the configured key") from e

    def index(self, value: str | None) -> str | None:
        if value is None:
            return None
        return hmac.new(self._index_key, normalise(value).encode(), hashlib.sha256).hexdigest()


@lru_cache(maxsize=4)
def vault(key: str | None = None) -> Vault:
    return Vault(key or key_from_env())


def normalise(value: str) -> str:
    return "".join(value.split()).upper()


def mask_id(value: str | None) -> str | None:
    """``420103197507270005`` → ``4201**********0005`` (first 4 and last 4 kept)."""
    if value is None:
        return None
    v = normalise(value)
    return v[:4] + "*" * max(len(v) - 8, 0) + v[-4:] if len(v) > 8 else "*" * len(v)


def mask_phone(value: str | None) -> str | None:
    """``13812345678`` → ``138****5678``."""
    if value is None:
        return None
    v = normalise(value)
    return v[:3] + "*" * max(len(v) - 7, 0) + v[-4:] if len(v) > 7 else "*" * len(v)


_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def id_check_digit(body17: str) -> str:
    """The GB 11643 check character of the first 17 digits of a resident ID number."""
    return "10X98765432"[sum(int(c) * w for c, w in zip(body17, _WEIGHTS)) % 11]


def check_id_number(value) -> str:
    """A normalised 18-character resident ID number, or InvalidInput saying what is wrong."""
    from gisgrid.errors import InvalidInput

    if not isinstance(value, str):
        raise InvalidInput(f"id_number must be a string, got {type(value).__name__}", field="id_number")
    v = normalise(value)
    if len(v) != 18 or not v[:17].isdigit() or not (v[17].isdigit() or v[17] == "X"):
        raise InvalidInput(f"id_number must be 17 digits and a digit or X, got {mask_id(v)!r}", field="id_number")
    if id_check_digit(v[:17]) != v[17]:
        raise InvalidInput(f"id_number {mask_id(v)!r} has a wrong check digit", field="id_number")
    return v


def check_phone(value) -> str:
    from gisgrid.errors import InvalidInput

    v = normalise(str(value)) if isinstance(value, (str, int)) else None
    if v is None or not v.lstrip("+").isdigit() or not 7 <= len(v.lstrip("+")) <= 15:
        raise InvalidInput("phone must be 7–15 digits", field="phone")
    return v
