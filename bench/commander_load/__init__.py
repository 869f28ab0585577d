"""Commander load benchmark: lease renewals and claims through the real HTTP API.

    python -m bench.commander_load                        # both sections, SQLite and PostgreSQL
    python -m bench.commander_load --db sqlite --workers 1000 --duration 5
    python -m bench.commander_load --quiet-wait 60        # on a shared machine: wait for quiet windows
    python -m bench.commander_load --server relay         # the plain `relay serve` (ceiling: /api/v1/health)
    python -m bench.commander_load.renewals --db sqlite   # one section alone (--help: its options)
    python -m bench.commander_load.claims --db sqlite --queue 2000

Sections: renewals.py (lease renewals: closed loop against a no-op ceiling, then paced) and
claims.py (a queue drained by concurrent claimers, checked for double grants); each module's
docstring defines its figures. harness.py holds what they share: the server, databases, load
generation, CPU accounting and the driver; __main__.py runs both sections, renewals first.

Server. A subprocess on 127.0.0.1, started, health-checked and stopped by its PID as the tests'
commanders are (``tests.support.commander.Commander``). By default it is ``python -m
bench.commander_load.server`` (server.py), which does what ``relay serve`` does (``Store(db)``,
``store.upgrade()``, ``create_app(store, admin_token=…, sweep_interval_s=5)``,
``uvicorn.run(app, host="127.0.0.1", port=…, log_level="warning", access_log=False)``: one
process, uvloop + httptools) and adds ``GET /bench/noop``: an ``async`` handler returning
``{}``, no auth, no database, behind the app's own middleware. That route is the ceiling: what
the same client gets from the same server when the handler does nothing. ``--server relay``
starts the real ``relay serve`` instead and uses ``GET /api/v1/health`` (a database ping) as
the ceiling. ``--app-factory module:function`` builds the app with another factory ``(db,
token, sweep_interval_s) -> app`` to measure a candidate change before and after.

Databases. Fresh for every section, as the tests' (``tests.support.commander.fresh_database``):
a SQLite file in a temporary folder, or a new PostgreSQL database on ``--pg-url`` (dropped
``WITH (FORCE)`` afterwards). The worker token comes from the admin token through the API
(``RelayClient.create_token``).

Client. One asyncio loop in this process. ``--concurrency`` lanes (default 32; the claims use
``--claimers``), one request in flight each; a lane is an ``httpx.AsyncClient`` with a pool of
one keep-alive connection (``--shared-pool``: one AsyncClient whose pool holds all of them,
which costs about twice the client CPU per request in httpx 0.28). Latency is client-side, from
send to full response (``time.perf_counter``); rates count the 200s completed in a window of
``--duration`` s after ``--warmup`` s.

CPU. Over each window, from /proc: the server process (all threads), this client process,
every ``postgres`` process on the machine, and the rest of the machine ("other"; over
0.25 cores marks the row as disturbed). A process that exits within the window takes its
CPU time along, so it lands in "other": PostgreSQL backends of connections that the
commander's pool opens and closes do (the ceiling slices, interleaved, tell that apart from
other load). On a 2-core machine the server and the client share the cores, so the CPU
columns and the per-request CPU show which side saturates.

Only 127.0.0.1 (and the PostgreSQL server given) is contacted. The server is stopped, the
databases dropped and the temporary files removed on every exit path.
"""
