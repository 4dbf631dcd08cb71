"""Worker liveness: each Celery worker records itself, beats, and frees what dead workers held.

A worker killed outright (``kill -9`` of its process group, a lost machine) leaves its outputs
``running`` with their messages unacknowledged; the broker hands those messages out again only
after its visibility timeout (Redis), or never (the filesystem broker).  So every worker, from
the moment it starts and then every ``EVALSITE_WORKER_HEARTBEAT_SECONDS``, in a thread of its
main process (any pool, no beat process):

* records that it is alive (``services.worker_beat``), and
* queues again the outputs held by workers that are gone (``services.generation_release_stale``).

A worker's identity is one start of its main process: a random id, passed to the pool
processes in the environment and written on every output of a batch when its message arrives
and again when a task claims it (``Output.claimed_by``).  The signals are wired in
``evalsite.celery``.
"""
from __future__ import annotations

import logging
import os
import secrets
import threading

log = logging.getLogger(__name__)

WORKER_ID_ENV = "EVALSITE_WORKER_ID"

_stop = threading.Event()
_thread: threading.Thread | None = None


def current_worker_id() -> str:
    """The id of the worker start this process belongs to ("" outside a worker, e.g. eager runs)."""
    return os.environ.get(WORKER_ID_ENV, "")


def worker_started(nodename: str) -> str:
    """Register a new worker start, in its main process before the pool forks (``worker_init``).

    Registering before any task can run means no claim ever names an unknown worker.  The
    database connection used here is closed again, so that pool processes do not inherit it.
    """
    from django.db import connection

    from . import services

    worker_id = f"{os.getpid()}.{secrets.token_hex(8)}"
    os.environ[WORKER_ID_ENV] = worker_id  # inherited by the pool processes
    try:
        services.worker_register(worker_id=worker_id, nodename=nodename, pid=os.getpid())
    finally:
        connection.close()
    log.info("worker %s registered as %s", nodename, worker_id)
    return worker_id


def worker_ready(nodename: str) -> None:
    """Start beating once the pool is up (``worker_ready``); the first beat sweeps at once."""
    global _thread
    worker_id = current_worker_id()
    if not worker_id or (_thread is not None and _thread.is_alive()):
        return
    _stop.clear()
    _thread = threading.Thread(target=_beat, args=(worker_id, nodename), name="evalsite-heartbeat", daemon=True)
    _thread.start()
    log.info("worker %s beats every %ss and frees the outputs of stopped workers", nodename, _interval())


def worker_stopping() -> None:
    """Stop beating and record a clean stop (warm shutdown has finished the running tasks)."""
    from django.db import connection

    from . import services

    _stop.set()
    if _thread is not None:
        _thread.join(timeout=10)
    worker_id = current_worker_id()
    if worker_id:
        try:
            services.worker_stop(worker_id=worker_id)
        except Exception:  # the database may be what is going away
            log.exception("could not record the stop of worker %s", worker_id)
        finally:
            connection.close()


def batch_received(candidate_id: int, output_ids: list[int]) -> None:
    """Mark a generation batch as held by this worker as soon as its message arrives (in the
    main process, before a pool process claims it), so that it is queued again if the worker
    dies first.  Never lets a database error disturb the consumer."""
    from django.db import close_old_connections

    from . import services

    try:
        close_old_connections()
        services.generation_received(candidate_id=candidate_id, output_ids=output_ids, worker=current_worker_id())
    except Exception:
        log.exception("could not mark batch %s of candidate %s as received", output_ids, candidate_id)


def _interval() -> int:
    from django.conf import settings

    return settings.EVALSITE_WORKER_HEARTBEAT_SECONDS


def _beat(worker_id: str, nodename: str) -> None:
    from django.db import close_old_connections, connection

    from . import services

    pid = os.getpid()
    while True:
        close_old_connections()  # drops a connection the database closed meanwhile
        try:
            services.worker_beat(worker_id=worker_id, nodename=nodename, pid=pid)
            queued = services.generation_release_stale()
            if queued:
                log.warning("queued %d outputs again whose worker had stopped", queued)
            services.workers_forget()
        except Exception:  # the next beat tries again; a worker must not die of a database hiccup
            log.exception("heartbeat of worker %s failed", worker_id)
        if _stop.wait(_interval()):
            break
    connection.close()
