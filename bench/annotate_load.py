"""Crowd-scale annotation load: real pages, real sessions, a WSGI server on PostgreSQL.

Creates (or reuses) a study in its own PostgreSQL database: 8 imported candidates x
2,000 prompts (56,000 pairs, overlap 3; ``--scale 10`` gives 20,000 prompts and 560,000
pairs) and one annotator account per simulated annotator.  Starts the web server
(granian ``--interface wsgi --workers 2 --blocking-threads 8`` by default; ``--server
gunicorn`` for ``-k gthread``; ``DEBUG=0``) and a ratings worker (Celery on Redis,
queue ``aggregation``), then drives the pages as a browser does: each simulated
annotator has its own account and session cookie, opens the annotate page, votes with
a key (a POST carrying the CSRF token) on the task on screen and, as annotate.js does,
puts the task fetched ahead on screen (telling the server, which then answers without a
copy of it) and takes the next task ahead from the answer.  Client: aiohttp on uvloop.

Scenarios (each on a freshly reset study, so figures compare):

* ``closed:N:SECONDS``: N annotators voting back to back (no think time);
* ``open:N:SECONDS:THINK``: N annotators, each waiting an exponential think time of mean
  THINK seconds between votes.

Printed per scenario: judgments/s, vote round trip p50/p95/p99, the load generator's
own CPU per request, and the integrity check (judgments acknowledged = rows stored, none
duplicated, no unit beyond its overlap, no annotator given a unit twice, counters equal
to the rows).  Example::

    .venv/bin/python bench/annotate_load.py --scenarios closed:200:60 closed:50:30 open:1000:60:5
    .venv/bin/python bench/annotate_load.py --scale 10 --scenarios closed:200:60
    .venv/bin/python bench/annotate_load.py --scenarios closed:50:10 --explain   # plans of the vote's statements
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import time

import aiohttp
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SERVER = "postgres://postgres@127.0.0.1:5432"
N_CANDIDATES = 8
BASE_PROMPTS = 2000
OVERLAP = 3
STUDY_NAME = "bench: crowd annotation"


def _django(db_url: str, cache_url: str) -> None:
    os.environ.update(DATABASE_URL=db_url, CACHE_URL=cache_url, SECRET_KEY=secrets.token_urlsafe(50), DEBUG="0",
                      ALLOWED_HOSTS="127.0.0.1", EVALSITE_VAR_DIR=str(ROOT / "var" / "bench"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "evalsite.settings")
    import django

    django.setup()


def ensure_database(name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def build_study(n_prompts: int, n_users: int):
    """The study, created through the services (the code path users take), or reused."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password

    from annotation import services
    from annotation.models import Study, StudyMember

    User = get_user_model()
    study = Study.objects.filter(name=STUDY_NAME, prompts__isnull=False).distinct().first()
    if study is None or study.prompts.count() != n_prompts:
        if study is not None:
            study.delete()
        owner, _ = User.objects.get_or_create(username="bench-owner", defaults={"is_staff": True})
        t = time.perf_counter()
        csv = "id,prompt,tags\n" + "".join(
            f"q{i},Customer question {i}: how do I fix problem {i % 97}?,{('billing', 'shipping', 'account')[i % 3]}\n"
            for i in range(n_prompts))
        study = services.study_create(name=STUDY_NAME, created_by=owner, prompts_data=csv.encode(),
                                      prompts_filename="prompts.csv", overlap=OVERLAP)
        rng = random.Random(7)
        for c in range(N_CANDIDATES):
            cand = services.candidate_create(study=study, name=f"model-{c}", backend="imported", spec={})
            lines = "\n".join(json.dumps({"prompt_id": f"q{i}", "output": f"Answer {c}/{i}: " + "word " * rng.randint(20, 120)})
                              for i in range(n_prompts))
            services.outputs_import(candidate=cand, data=lines.encode(), filename=f"model-{c}.jsonl")
        print(f"built the study: {n_prompts:,} prompts, {study.units.count():,} pairs in {time.perf_counter() - t:.0f} s",
              flush=True)
    have = set(StudyMember.objects.filter(study=study, role="annotator").values_list("user__username", flat=True))
    missing = [f"bench-ann-{i:04d}" for i in range(n_users) if f"bench-ann-{i:04d}" not in have]
    if missing:
        password = make_password("bench-pw")
        User.objects.bulk_create([User(username=u, password=password) for u in missing], ignore_conflicts=True)
        users = User.objects.filter(username__in=missing)
        StudyMember.objects.bulk_create([StudyMember(study=study, user=u, role="annotator") for u in users],
                                        ignore_conflicts=True)
    return study


def reset_study(study) -> None:
    """Forget every lease and judgment, zero the counters: each scenario starts equal."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("DELETE FROM annotation_judgment WHERE study_id = %s", [study.pk])
        cur.execute("DELETE FROM annotation_assignment WHERE study_id = %s", [study.pk])
        cur.execute("UPDATE annotation_unit SET taken = 0 WHERE study_id = %s AND taken <> 0", [study.pk])
        cur.execute("UPDATE annotation_studymember SET done = 0 WHERE study_id = %s", [study.pk])
        cur.execute("DELETE FROM arena_ratingsnapshot WHERE study_id = %s", [study.pk])
        cur.execute("UPDATE arena_ratingrequest SET pending = false, started_at = NULL WHERE study_id = %s",
                    [study.pk])
        # vacuum now, so that autovacuum does not run during the measurement
        for table in ("annotation_unit", "annotation_assignment", "annotation_judgment", "annotation_studymember",
                      "arena_ratingsnapshot", "arena_ratingrequest"):
            cur.execute(f"VACUUM ANALYZE {table}")


def sessions_for(study, n: int) -> list[str]:
    """One logged-in session per annotator, made as the login view makes them."""
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.sessions.backends.cached_db import SessionStore
    from django.utils.module_loading import import_string

    users = list(get_user_model().objects.filter(username__startswith="bench-ann-").order_by("username")[:n])
    keys = []
    for user in users:
        s = SessionStore()
        s[SESSION_KEY] = str(user.pk)
        # the backend that signed the user in, as the login view records it (django-axes' standalone
        # backend, first in the list, signs no one in and cannot load a user)
        s[BACKEND_SESSION_KEY] = next(b for b in settings.AUTHENTICATION_BACKENDS if hasattr(import_string(b), "get_user"))
        s[HASH_SESSION_KEY] = user.get_session_auth_hash()
        s.create()
        keys.append(s.session_key)
    return keys


def integrity(study, acknowledged: int) -> dict:
    from django.db import connection

    q = {
        "rows": "SELECT count(*) FROM annotation_judgment WHERE study_id = %s",
        "duplicate_judgments": "SELECT count(*) FROM (SELECT unit_id, annotator_id FROM annotation_judgment "
                               "WHERE study_id = %s GROUP BY 1, 2 HAVING count(*) > 1) d",
        "units_over_overlap": "SELECT count(*) FROM (SELECT u.id FROM annotation_unit u JOIN annotation_judgment j "
                              "ON j.unit_id = u.id WHERE u.study_id = %s GROUP BY u.id, u.needed "
                              "HAVING count(*) > u.needed) o",
        "unit_given_twice": "SELECT count(*) FROM (SELECT unit_id, annotator_id FROM annotation_assignment "
                            "WHERE study_id = %s GROUP BY 1, 2 HAVING count(*) > 1) d",
        "taken_counter_mismatch": "SELECT count(*) FROM annotation_unit u WHERE u.study_id = %s AND u.taken <> "
                                  "(SELECT count(*) FROM annotation_assignment a WHERE a.unit_id = u.id "
                                  "AND NOT a.released)",
        "done_counter_mismatch": "SELECT count(*) FROM annotation_studymember m WHERE m.study_id = %s AND m.done <> "
                                 "(SELECT count(*) FROM annotation_judgment j WHERE j.study_id = m.study_id "
                                 "AND j.annotator_id = m.user_id)",
        # one open lease per annotator and slot: the task on screen and the one fetched ahead
        "open_leases_over_one": "SELECT count(*) FROM (SELECT annotator_id, slot FROM annotation_assignment WHERE "
                                "study_id = %s AND submitted_at IS NULL AND NOT released GROUP BY 1, 2 "
                                "HAVING count(*) > 1) d",
    }
    out = {}
    with connection.cursor() as cur:
        for name, sql in q.items():
            cur.execute(sql, [study.pk])
            out[name] = cur.fetchone()[0]
    out["acknowledged"] = acknowledged
    out["ok"] = out["rows"] == acknowledged and all(
        v == 0 for k, v in out.items() if k not in ("rows", "acknowledged"))
    return out


TOKEN_BYTES = re.compile(rb'action="/tasks/([^"/]+)/"')
LEAN_BYTES = re.compile(rb'<div id="task"[^>]* data-lean')
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def annotator(session, base: str, study_id: int, session_key: str, deadline: float, think: float,
                    lat: list, stats: dict, rng: random.Random) -> None:
    """One annotator as a browser: its own session cookie, the page, then votes by key.

    Cookies are sent by hand (one shared client, no cookie jar), which keeps the load
    generator's own CPU per request low enough not to cap the server.
    """
    async with session.get(f"{base}/studies/{study_id}/annotate/", headers={"Cookie": f"sessionid={session_key}"}) as r:
        html = await r.read()
        csrf = r.cookies["csrftoken"].value if "csrftoken" in r.cookies else ""
        stats["pages"] += 1
    headers = {**FORM, "HX-Request": "true", "X-CSRFToken": csrf,
               "Cookie": f"sessionid={session_key}; csrftoken={csrf}"}
    shown = None  # the task put on screen at the last vote (fetched ahead), when the answer was lean
    while time.monotonic() < deadline:
        # as annotate.js: the task on screen, and the next one the page holds ahead
        tokens = TOKEN_BYTES.findall(html)
        if LEAN_BYTES.search(html[:400]):
            current, ahead = shown, (tokens[0] if tokens else None)
        else:
            current, ahead = (tokens[0] if tokens else None), (tokens[1] if len(tokens) > 1 else None)
        if current is None:
            stats["all_done"] += 1
            return
        shown = ahead
        vote_headers = {**headers, "X-Evalsite-Shown": ahead.decode()} if ahead else headers
        if think:
            await asyncio.sleep(min(rng.expovariate(1 / think), max(0.0, deadline - time.monotonic())))
            if time.monotonic() >= deadline:
                return
        t = time.perf_counter()
        body = (b"choice=left", b"choice=right", b"choice=tie")[rng.randrange(3)]
        url = f"{base}/tasks/{current.decode()}/"
        for attempt in range(3):
            try:
                async with session.post(url, data=body, headers=vote_headers) as r:
                    html = await r.read()
                    status = r.status
                break
            except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
                # a kept-alive connection the server had closed: send again, as browsers do
                # (a repeated vote with the same answer is recorded once)
                stats["resent"] = stats.get("resent", 0) + 1
                if attempt == 2:
                    raise
        lat.append(time.perf_counter() - t)
        if status == 200:
            stats["acknowledged"] += 1
        else:
            stats[f"status_{status}"] = stats.get(f"status_{status}", 0) + 1


async def drive(base: str, study_id: int, session_keys: list[str], seconds: float, think: float) -> dict:
    lat: list[float] = []
    stats = {"acknowledged": 0, "pages": 0, "all_done": 0}
    connector = aiohttp.TCPConnector(limit=0)
    session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
    cpu0, t0 = time.process_time(), time.monotonic()
    deadline = t0 + seconds
    rngs = [random.Random(i) for i in range(len(session_keys))]

    async def one(i: int, key: str) -> None:
        if think:  # spread the arrivals over one think time, as a crowd logs in
            await asyncio.sleep(rngs[i].uniform(0, think))
        await annotator(session, base, study_id, key, deadline, think, lat, stats, rngs[i])

    await asyncio.gather(*(one(i, key) for i, key in enumerate(session_keys)))
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    await session.close()
    stats.update(wall=wall, client_cpu=cpu, latencies=lat)
    return stats


def explain_vote(study) -> None:
    """``EXPLAIN (ANALYZE, BUFFERS)`` of the two statements of a vote round trip, as the
    last scenario left the study: the submit CTE (close the lease, store the judgment, count
    it) and the lease CTE (take a place, open the lease).  Run in a transaction that is
    rolled back, so the study is unchanged."""
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from django.utils import timezone

    from annotation import services
    from annotation.models import Assignment
    from arena import outcomes

    user = get_user_model().objects.get(username="bench-ann-0000")
    now = timezone.now()
    stamp = connection.ops.adapt_datetimefield_value(now)
    later = connection.ops.adapt_datetimefield_value(now + timezone.timedelta(minutes=30))
    lease_sql = services._LEASE_CTE_SQL.format(pair="", lock="FOR UPDATE OF u SKIP LOCKED")
    with transaction.atomic(), connection.cursor() as cur:
        held = Assignment.objects.filter(study=study, annotator=user, submitted_at__isnull=True, released=False).first()
        if held is None:
            held = services.assignment_next(study=study, annotator=user)
        for name, sql, params in (
            ("submit (close lease, insert judgment, count)", services._SUBMIT_CTE_SQL,
             [stamp, held.pk, outcomes.STORED[outcomes.A], "", stamp, 1200]),
            ("lease (take a place, open a lease)", lease_sql,
             [study.pk, user.pk, study.pk, user.pk, "explain-token", stamp, later]),
        ):
            cur.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql, params)
            print(f"\n== EXPLAIN ANALYZE: {name} ==")
            print("\n".join(row[0] for row in cur.fetchall()))
        transaction.set_rollback(True)


def cpu_by_group() -> dict[str, float]:
    """CPU seconds used so far by the processes of each part: web, database, ratings worker, Redis."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {"web": 0.0, "PostgreSQL": 0.0, "ratings worker": 0.0, "Redis": 0.0}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        seconds = (int(fields[11]) + int(fields[12])) / tick
        if "gunicorn" in cmd or "granian" in cmd:
            out["web"] += seconds
        elif cmd.startswith("postgres"):
            out["PostgreSQL"] += seconds
        elif "celery" in cmd and "worker" in cmd:
            out["ratings worker"] += seconds
        elif "redis-server" in cmd:
            out["Redis"] += seconds
    return out


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def server_command(server: str, port: int, workers: int, threads: int) -> list[str]:
    bin_dir = Path(sys.executable).parent
    if server == "granian":
        return [str(bin_dir / "granian"), "--interface", "wsgi", "evalsite.wsgi:application", "--host", "127.0.0.1",
                "--port", str(port), "--workers", str(workers), "--blocking-threads", str(threads),
                "--runtime-threads", "1", "--backlog", "4096", "--no-access-log", "--log-level", "warning"]
    return [str(bin_dir / "gunicorn"), "evalsite.wsgi", "-w", str(workers), "-k", "gthread", "--threads",
            str(threads), "-b", f"127.0.0.1:{port}", "--backlog", "4096", "--keep-alive", "75",
            "--worker-connections", "2000", "--log-level", "warning"]


def start_servers(env: dict, port: int, workers: int, threads: int, log_dir: Path, server: str = "gunicorn"):
    log_dir.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    gunicorn = subprocess.Popen(
        server_command(server, port, workers, threads),
        cwd=ROOT, env=env, stdout=open(log_dir / "gunicorn.log", "wb"), stderr=subprocess.STDOUT,
        start_new_session=True)
    worker = subprocess.Popen(
        [py, "-m", "celery", "-A", "evalsite", "worker", "-Q", env["EVALSITE_QUEUE_PREFIX"] + "aggregation",
         "--concurrency", "1", "--without-mingle", "--without-gossip", "--loglevel", "INFO"],
        cwd=ROOT, env=env, stdout=open(log_dir / "worker.log", "wb"), stderr=subprocess.STDOUT,
        start_new_session=True)
    import urllib.request

    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            break
        except Exception:
            time.sleep(0.1)
    else:
        raise SystemExit(f"the web server did not start; see {log_dir / 'gunicorn.log'}")
    return [gunicorn, worker]


def stop(procs) -> None:
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=int, default=1, help="prompts = 2,000 x scale (1: 56,000 pairs)")
    ap.add_argument("--scenarios", nargs="+", default=["closed:200:60", "closed:50:30", "open:1000:60:5"])
    ap.add_argument("--port", type=int, default=8077)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--server", choices=["gunicorn", "granian"], default="granian",
                    help="the WSGI server (granian: --threads is its blocking threads per worker)")
    ap.add_argument("--database", default="evalsite_annotate_bench")
    ap.add_argument("--explain", action="store_true",
                    help="after the scenarios, print EXPLAIN ANALYZE of the vote's two statements")
    args = ap.parse_args()

    db_url = f"{SERVER}/{args.database}"
    cache_url = "redis://127.0.0.1:6379/13"
    ensure_database(args.database)
    _django(db_url, cache_url)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    n_users = max(int(s.split(":")[1]) for s in args.scenarios)
    study = build_study(BASE_PROMPTS * args.scale, max(250, n_users))
    env = {**os.environ, "DATABASE_URL": db_url, "CACHE_URL": cache_url, "DEBUG": "0", "SECRET_KEY": os.environ["SECRET_KEY"],
           "ALLOWED_HOSTS": "127.0.0.1", "CELERY_BROKER_URL": "redis://127.0.0.1:6379/12",
           "CELERY_RESULT_BACKEND": "redis://127.0.0.1:6379/12", "EVALSITE_QUEUE_PREFIX": "bench-",
           "EVALSITE_VAR_DIR": str(ROOT / "var" / "bench"), "LOG_LEVEL": "WARNING"}
    procs = start_servers(env, args.port, args.workers, args.threads, ROOT / "var" / "bench" / "logs", args.server)
    base = f"http://127.0.0.1:{args.port}"
    try:
        import uvloop

        print(f"study {study.pk}: {study.units.count():,} pairs, overlap {OVERLAP}; {args.server} -w {args.workers} "
              f"threads {args.threads}, DEBUG=0, PostgreSQL, Redis; a ratings worker running", flush=True)
        for spec in args.scenarios:
            kind, n, seconds, *rest = spec.split(":")
            n, seconds, think = int(n), float(seconds), float(rest[0]) if rest else 0.0
            reset_study(study)
            keys = sessions_for(study, n)
            cpu_before = cpu_by_group()
            stats = uvloop.run(drive(base, study.pk, keys, seconds, think if kind == "open" else 0.0))
            cpu_used = {k: v - cpu_before.get(k, 0.0) for k, v in cpu_by_group().items()}
            lat = stats["latencies"]
            check = integrity(study, stats["acknowledged"])
            label = f"{n} annotators, " + ("closed loop" if kind == "closed" else f"think time {think:g} s (exp.)")
            print(f"\n== {label}, {seconds:g} s ==")
            print(f"  judgments/s        {stats['acknowledged'] / stats['wall']:8.1f}   ({stats['acknowledged']:,} in "
                  f"{stats['wall']:.1f} s)")
            print(f"  vote round trip    p50 {percentile(lat, 50) * 1000:6.1f} ms   p95 {percentile(lat, 95) * 1000:6.1f} ms"
                  f"   p99 {percentile(lat, 99) * 1000:6.1f} ms")
            requests = len(lat) + stats["pages"]
            print(f"  client CPU         {stats['client_cpu'] / max(1, requests) * 1000:.3f} ms per request "
                  f"({stats['client_cpu']:.1f} s for {requests:,} requests)")
            votes = max(1, stats["acknowledged"])
            print("  server CPU per vote " + ", ".join(f"{k} {v / votes * 1000:.2f} ms" for k, v in cpu_used.items())
                  + f" (2 cores = {2 * stats['wall'] / votes * 1000:.2f} ms of CPU per vote available)")
            other = {k: v for k, v in stats.items() if k.startswith("status_") or k in ("all_done", "resent")}
            if any(other.values()):
                print(f"  other answers      {other}")
            print(f"  integrity          {'OK' if check['ok'] else 'FAILED'}: " +
                  ", ".join(f"{k} {v}" for k, v in check.items() if k != "ok"), flush=True)
        if args.explain:
            explain_vote(study)
    finally:
        stop(procs)


if __name__ == "__main__":
    main()
