"""Who a token or a session stands for, remembered between requests until the database says
it changed.

Every authenticated request needs its caller: the API token's row and its user, or the session's
user. Reading them costs a query (and, on 2 cores, as much CPU as the rest of a small request).
A worker remembers the answers in memory and forgets them all as soon as any account or token
changes anywhere:

* migration 0012 puts statement triggers on ``app_user`` (role, jurisdiction, active, session
  version, username; deletes) and ``api_token`` (revocation, expiry, scopes, owner; deletes)
  that ``NOTIFY gisgrid_auth`` – from the web app, the CLI or plain SQL alike. A notification
  is delivered when the changing transaction commits;
* each worker process keeps one connection that ``LISTEN``\\s on that channel (a daemon thread)
  and clears its memory on every notification.

So a revoked token or a disabled account is refused within the notification's delivery time
(milliseconds on one host), not after a time-to-live. The memory is used only while the
listening connection is up: before it has connected, after it broke and until it has listened
again, every request reads the database, as if there were no cache. A generation number
stops a lookup that started before a change from storing its stale answer after the clear.
Entries also expire after ``ttl`` seconds (a bound on memory and on anything the triggers do
not cover), and a token's own expiry time is checked on every hit.

``gisgrid serve`` starts the listener in each worker; an app without a listener (tests'
``test_client``, scripts) reads the database every time.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

log = logging.getLogger(__name__)

CHANNEL = "gisgrid_auth"


class PrincipalCache:
    def __init__(self, dsn: str, ttl: float = 60.0, size: int = 10_000):
        self._dsn = dsn
        self._ttl = ttl
        self._size = size
        self._lock = threading.Lock()
        self._items: OrderedDict = OrderedDict()
        self._generation = 0
        self._live = False           # True only while the LISTEN connection is up
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._conn = None

    # -- the memory ---------------------------------------------------------------------------
    def generation(self) -> int:
        return self._generation

    def get(self, key):
        if not self._live or self._ttl <= 0:
            return None
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            value, born = item
            if time.monotonic() - born > self._ttl:
                del self._items[key]
                return None
            return value

    def put(self, key, value, generation: int) -> None:
        """Remember ``value`` if nothing changed since ``generation`` was read (before the lookup)."""
        if not self._live or self._ttl <= 0:
            return
        with self._lock:
            if generation != self._generation:
                return
            self._items[key] = (value, time.monotonic())
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._items.clear()

    # -- the listener -------------------------------------------------------------------------
    def listen(self) -> None:
        """Start the listening thread (once per process; call it after a fork)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="gisgrid-auth-listener", daemon=True)
        self._thread.start()

    def wait_live(self, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while not self._live and time.monotonic() < end:
            time.sleep(0.01)
        return self._live

    def stop(self) -> None:
        self._stop.set()
        conn = self._conn
        if conn is not None:
            try:
                conn.cancel_safe()
            except Exception:  # noqa: BLE001 - already gone
                pass
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        import psycopg

        backoff = 0.2
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True, connect_timeout=5,
                                     application_name="gisgrid auth listener") as conn:
                    self._conn = conn
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.clear()                 # anything may have changed while not listening
                    self._live = True
                    backoff = 0.2
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            self.clear()
                        conn.execute("SELECT 1")     # notices a dead connection within a second
            except Exception as e:  # noqa: BLE001 - any failure: stop trusting the memory, retry
                if not self._stop.is_set():
                    log.warning("auth cache listener: %s; reading accounts from the database until it is back",
                                e.__class__.__name__)
            finally:
                self._live = False
                self._conn = None
                self.clear()
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)
