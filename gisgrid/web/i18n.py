"""Labels, Chinese first. ``?lang=en`` switches to English."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from flask import request

LANGS = ("zh", "en")


@lru_cache
def _catalogue() -> dict[str, dict[str, str]]:
    return json.loads((Path(__file__).parent / "translations" / "labels.json").read_text(encoding="utf-8"))


def lang() -> str:
    asked = request.args.get("lang")
    return asked if asked in LANGS else "zh"


def t(key: str, **kw) -> str:
    entry = _catalogue()[key]
    text = entry.get(lang(), entry["zh"])
    return text.format(**kw) if kw else text
