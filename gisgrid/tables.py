"""Tables of records to CSV and XLSX, the spreadsheets a street office asks for: one row a
record, Chinese column headers first (English on request)."""
from __future__ import annotations

import csv
import io


def headers(columns: dict[str, tuple[str, str]], lang: str = "zh") -> list[str]:
    return [zh if lang == "zh" else en for zh, en in columns.values()]


def to_csv(rows: list[dict], columns: dict[str, tuple[str, str]], lang: str = "zh") -> bytes:
    """UTF-8 with a byte-order mark, so Excel opens Chinese text correctly."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(headers(columns, lang))
    for r in rows:
        w.writerow(["" if r.get(k) is None else r.get(k) for k in columns])
    return ("\ufeff" + buf.getvalue()).encode("utf-8")


def to_xlsx(rows: list[dict], columns: dict[str, tuple[str, str]], lang: str = "zh", sheet: str = "统计") -> bytes:
    from openpyxl import Workbook
    from openpyxl.styles import Font

    wb = Workbook()
    ws = wb.active
    ws.title = sheet[:31]
    ws.append(headers(columns, lang))
    for cell in ws[1]:
        cell.font = Font(bold=True)
    for r in rows:
        ws.append([r.get(k) for k in columns])
    for i, key in enumerate(columns, start=1):
        if key.endswith("_rate"):
            for row in ws.iter_rows(min_row=2, min_col=i, max_col=i):
                row[0].number_format = "0.0%"
    ws.freeze_panes = "A2"
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


MIME = {"csv": "text/csv", "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}


def spreadsheet(rows: list[dict], columns: dict[str, tuple[str, str]], fmt: str, lang: str = "zh",
                sheet: str = "统计") -> tuple[bytes, str]:
    """The rows as ``fmt`` ("csv" or "xlsx"): ``(content, mime type)``."""
    if fmt == "csv":
        return to_csv(rows, columns, lang), MIME["csv"]
    if fmt == "xlsx":
        return to_xlsx(rows, columns, lang, sheet), MIME["xlsx"]
    raise ValueError(f"fmt must be csv or xlsx, got {fmt!r}")
