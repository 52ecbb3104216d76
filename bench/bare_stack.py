"""The web stack alone, for bench/incidents.py: Flask under the same server configuration as
``gisgrid serve`` (gisgrid.web.server), answering ``POST /api/incidents`` by parsing the JSON body and returning it
(with a code) as 201 – no database, no authentication, no checks. What the server + Flask + the
bench's clients reach on this machine is the most any Flask view can reach here."""
from __future__ import annotations

import itertools

from flask import Flask, request

app = Flask(__name__)
_seq = itertools.count()


@app.post("/api/incidents")
def report():
    body = request.get_json()
    return {"code": f"BARE{next(_seq):09d}", **body}, 201
