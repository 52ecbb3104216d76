"""Declarative base with a naming convention, so constraints have stable names in migrations
and errors can be translated by constraint name."""
from __future__ import annotations

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SRID = 4326  # every geometry is stored in WGS84 lon/lat (CGCS2000 is within centimetres)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
