"""Schemathesis fuzzes every operation of the OpenAPI document against the app (WSGI, real
PostGIS behind it): no 500, and every response conforms to the document (status codes,
content types, bodies). Bounded: a fixed number of derandomised examples per operation.

Schemathesis' own pytest plugin does not run under pytest 9 yet, so the operations are
parametrised here and each one's hypothesis strategy is driven directly."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from gisgrid.layers import users

OPERATIONS = ["GET /api/me", "GET /api/locate", "GET /api/grids", "GET /api/admin-areas/{level}",
              "GET /api/residents", "GET /api/residents/{code}"]


@pytest.fixture(scope="module")
def fuzz_token(app):
    """A field worker's token (PII allowed, one grid), so the fuzzer reaches every branch."""
    with app.extensions["gisgrid"]["sessions"]() as s:
        plain, _ = users.create_token(s, users.get(s, "gridworker"), "schemathesis", ["read", "pii"], 1)
        s.commit()
    return plain


@pytest.fixture(scope="module")
def api_schema(app):
    return schemathesis.openapi.from_wsgi("/api/openapi.json", app)


def test_every_operation_is_fuzzed(api_schema):
    labels = sorted(r.ok().label for r in api_schema.get_all_operations())
    assert labels == sorted(OPERATIONS)


@pytest.mark.parametrize("label", OPERATIONS)
def test_operation_conforms_to_the_document(api_schema, fuzz_token, label):
    operation = api_schema.find_operation_by_label(label)
    headers = {"Authorization": f"Bearer {fuzz_token}"}

    @given(case=operation.as_strategy())
    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    def run(case):
        case.call_and_validate(headers=headers)

    run()


def test_document_is_served_without_credentials(anonymous):
    doc = anonymous.get("/api/openapi.json").json
    assert doc["openapi"].startswith("3.") and "/api/residents/{code}" in doc["paths"]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
