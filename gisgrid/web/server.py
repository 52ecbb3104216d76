"""The production HTTP server behind ``gisgrid serve``: Granian (Rust, hyper) running the Flask
app through WSGI in ``settings.workers`` processes of ``settings.threads`` Python threads each.

Granian, not gunicorn: on this project's report bench (bench/incidents.py, 50 keep-alive
clients) gunicorn's gthread workers spent 0.57 ms of server CPU per request on the bare stack
(Flask echoing the body, no database) and Granian 0.27 ms, both 3 workers × 4 threads; under
the full report load the server's CPU per report fell by a fifth to a quarter, measured in
alternated runs. HTTP parsing, keep-alive and the accept loop run in Rust outside the GIL;
only the WSGI call holds it.

On 2 cores Granian warns at start that cores + 1 workers of 8 threads is more than the cores:
that is deliberate. A report spends half its time waiting on PostgreSQL, and in alternated
30 s runs of the report bench 3 workers × 8 threads answered more reports per CPU second than
3 × 4, 2 × 6 or 2 × 8 (GISGRID_WORKERS, GISGRID_THREADS)."""
from __future__ import annotations

import os

from gisgrid.config import Settings


def workers(settings: Settings) -> int:
    """Worker processes: ``settings.workers``, or cores + 1 (one process runs Python on one core
    at a time; the extra one fills the gaps while the others wait on the database)."""
    return settings.workers or (os.cpu_count() or 1) + 1


def server(settings: Settings, target: str, *, working_dir=None):
    """A Granian server for the WSGI app ``target`` ("module:attribute") with gisgrid's settings:
    bound to ``settings.host:port``; a worker that dies is started again; on SIGTERM or SIGINT
    the workers finish the requests in flight, and one still busy after 10 s is killed; no
    access log (requests are audited in the database where it matters); warnings and errors
    on stderr."""
    from granian import Granian
    from granian.constants import Interfaces
    from granian.log import LogLevels

    return Granian(target, address=settings.host, port=settings.port, interface=Interfaces.WSGI,
                   workers=workers(settings), blocking_threads=settings.threads, websockets=False,
                   respawn_failed_workers=True, workers_kill_timeout=10, log_level=LogLevels.warning,
                   log_access=False, working_dir=working_dir)


def serve(settings: Settings) -> None:
    """Serve gisgrid until a signal stops it. Each worker process builds its own app (engine,
    pools, the principals' listener, a report connection per thread) after the fork, before it
    serves; the embedded cluster must be up already."""
    server(settings, "gisgrid.web:create_app").serve(target_loader=_load)


def _load(_target):
    from gisgrid.layers import incidents
    from gisgrid.web import create_app

    app = create_app()
    app.extensions["gisgrid"]["principals"].listen()    # per worker, after the fork
    # a connection per thread, each with the field report planned once, before the first request
    app.extensions["gisgrid"]["direct_connections"].warm(app.extensions["gisgrid"]["settings"].threads,
                                                         [incidents.report_warmup()])
    return app


if __name__ == "__main__":        # python -m gisgrid.web.server MODULE:APP DIR: bench/bare_stack.py
    import sys
    from pathlib import Path

    from gisgrid import config

    server(config.load(), sys.argv[1], working_dir=Path(sys.argv[2])).serve()
