"""Photos of incidents, stored content-addressed in the database (so a backup holds them).

Uploads must be JPEG or PNG (decided by decoding, not by the name or the declared type) and at
most ``MAX_BYTES``. Every image is re-encoded without its metadata before it is stored: EXIF
(GPS position, device, time) never leaves the server. The key is the SHA-256 of the stored
bytes, so the same photo uploaded twice is stored once.
"""
from __future__ import annotations

import hashlib
import io
from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Integer, LargeBinary, String, func, text
from sqlalchemy.orm import Mapped, Session, mapped_column

from gisgrid.db.base import Base
from gisgrid.errors import InvalidInput

MAX_BYTES = 8 * 1024 * 1024
MAX_PIXELS = 40_000_000
FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png"}


class Photo(Base):
    __tablename__ = "photo"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    mime: Mapped[str] = mapped_column(String(20))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class IncidentPhoto(Base):
    __tablename__ = "incident_photo"

    incident_id: Mapped[int] = mapped_column(Integer, ForeignKey("incident.id", ondelete="CASCADE"), primary_key=True)
    photo_sha256: Mapped[str] = mapped_column(String(64), ForeignKey("photo.sha256"), primary_key=True)
    uploaded_by: Mapped[str | None] = mapped_column(String(100))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


def clean(raw: bytes) -> tuple[bytes, str, int, int]:
    """Decode, check and re-encode an upload without metadata: ``(bytes, mime, width, height)``."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if len(raw) > MAX_BYTES:
        raise InvalidInput(f"photo is {len(raw) / 1e6:.1f} MB; at most {MAX_BYTES // (1024 * 1024)} MB", field="photo")
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with Image.open(io.BytesIO(raw)) as im:
            fmt = im.format
            if fmt not in FORMATS:
                raise InvalidInput(f"photo must be JPEG or PNG, got {fmt or 'unknown'}", field="photo")
            im.load()
            im = ImageOps.exif_transpose(im)       # keep the orientation, drop the tag
            out = io.BytesIO()
            if fmt == "JPEG":
                im.convert("RGB").save(out, "JPEG", quality=88, optimize=True)
            else:
                im.save(out, "PNG", optimize=True)
            return out.getvalue(), FORMATS[fmt], im.width, im.height
    except InvalidInput:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise InvalidInput(f"photo cannot be read as JPEG or PNG: {e}", field="photo") from None


def add(session: Session, incident_id: int, raw: bytes, actor: str | None) -> str:
    """Store a cleaned photo (once) and attach it to the incident; returns its SHA-256."""
    data, mime, w, h = clean(raw)
    digest = hashlib.sha256(data).hexdigest()
    session.execute(text("INSERT INTO photo (sha256, mime, width, height, size, data) VALUES "
                         "(:s, :m, :w, :h, :n, :d) ON CONFLICT (sha256) DO NOTHING"),
                    {"s": digest, "m": mime, "w": w, "h": h, "n": len(data), "d": data})
    session.execute(text("INSERT INTO incident_photo (incident_id, photo_sha256, uploaded_by) VALUES (:i, :s, :a) "
                         "ON CONFLICT DO NOTHING"), {"i": incident_id, "s": digest, "a": actor})
    return digest


def of_incident_sql(incident_id: str) -> str:
    """An SQL expression: the photo hashes of the incident whose id is the SQL expression
    ``incident_id``, as a JSON array, oldest first."""
    return ("(SELECT coalesce(json_agg(photo_sha256 ORDER BY at, photo_sha256), '[]') FROM incident_photo "
            f"WHERE incident_id = {incident_id})")



def get(session: Session, sha256: str) -> Photo | None:
    return session.get(Photo, sha256)
