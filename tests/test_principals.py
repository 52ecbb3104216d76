"""The workers' memory of who a token or session is (gisgrid.web.principals), against the real
database: used only while its LISTEN connection is up, emptied by any account or token change
(the migration's triggers), and never refilled by a lookup that raced a change."""
from __future__ import annotations

import time

import psycopg
import pytest

from gisgrid.web.principals import PrincipalCache


@pytest.fixture
def cache(db_url, engine):      # engine: the schema migrated
    c = PrincipalCache(db_url.replace("+psycopg", ""), ttl=60)
    yield c
    c.stop()


def _forgotten(cache, key, seconds=5.0) -> bool:
    end = time.monotonic() + seconds
    while cache.get(key) is not None and time.monotonic() < end:
        time.sleep(0.02)
    return cache.get(key) is None


def test_nothing_is_remembered_before_the_listener_is_up(cache):
    cache.put("k", "v", cache.generation())
    assert cache.get("k") is None
    cache.listen()
    assert cache.wait_live()
    cache.put("k", "v", cache.generation())
    assert cache.get("k") == "v"


def test_an_account_change_anywhere_empties_it(cache, db_url):
    cache.listen()
    assert cache.wait_live()
    with psycopg.connect(db_url.replace("+psycopg", ""), autocommit=True) as other:
        cache.put("k", "v", cache.generation())
        other.execute("UPDATE api_token SET last_used_at = now()")      # bookkeeping: not a change of rights
        time.sleep(0.3)
        assert cache.get("k") == "v"
        other.execute("UPDATE app_user SET active = active")             # any change of rights' columns
        assert _forgotten(cache, "k")
        cache.put("k", "v", cache.generation())
        other.execute("UPDATE api_token SET revoked_at = revoked_at")
        assert _forgotten(cache, "k")


def test_a_lookup_that_raced_a_change_is_not_stored(cache, db_url):
    cache.listen()
    assert cache.wait_live()
    before = cache.generation()               # a request starts its lookup …
    with psycopg.connect(db_url.replace("+psycopg", ""), autocommit=True) as other:
        other.execute("UPDATE app_user SET role = role")    # … an account changes meanwhile …
    end = time.monotonic() + 5
    while cache.generation() == before and time.monotonic() < end:
        time.sleep(0.02)
    cache.put("k", "stale", before)           # … and its answer, read before the change, is dropped
    assert cache.get("k") is None


def test_stop_ends_the_listener_and_the_memory(cache):
    cache.listen()
    assert cache.wait_live()
    cache.put("k", "v", cache.generation())
    cache.stop()
    assert cache.get("k") is None
