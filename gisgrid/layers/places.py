"""Places (场所): shops, schools, rental houses, hazards, cameras, organisations… a point with a
category and free attributes (JSONB)."""
from __future__ import annotations

from sqlalchemy import String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from gisgrid.db.base import Base
from gisgrid.layers._columns import geom_type, gist, types, valid

CATEGORIES = {
    "rental_house": "出租房屋", "shop": "商铺", "school": "学校", "hospital": "医疗机构",
    "hazard": "安全隐患点", "camera": "监控点位", "organisation": "社会组织", "elderly_care": "养老机构",
}


class Place(Base):
    __tablename__ = "place"
    __table_args__ = (valid(), types("geom", "Point"), gist("place"))

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    category: Mapped[str] = mapped_column(String(40), index=True)
    attributes: Mapped[dict] = mapped_column(JSONB, default=dict, server_default="{}")
    geom = mapped_column(geom_type("POINT"), nullable=False)
