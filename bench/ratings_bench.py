"""Benchmark the leaderboard math: counting, Bradley-Terry fit and bootstrap.

Usage::

    python bench/ratings_bench.py                     # both parts, 1,000,000 battles/judgments, 50 models
    python bench/ratings_bench.py --pure-only --battles 200000 --fastchat-rounds 2
    python bench/ratings_bench.py --db-only --keep    # keep evalsite_bench: a re-run skips the load
    python bench/ratings_bench.py --db-only --explain # plus the plan of the slowest query

The pure part (:func:`bench_pure`) simulates battles with known strengths, times
``arena.ratings`` step by step, and in the same run times the FastChat approach to the
same numbers: a scikit-learn logistic regression on one design row per battle (the
battles duplicated so that a tie is one win each way, as ``compute_mle_elo`` in the
Chatbot Arena notebook does) and a bootstrap that resamples individual battles and
refits. The FastChat bootstrap is timed for a few rounds and extrapolated to the full
number of rounds; the output says so. FastChat uses pandas to build its design matrix;
this reimplementation uses numpy, which is no slower.

The database part (:func:`bench_db`) loads a study with 1,000,000 judgments into a
PostgreSQL database of its own (``evalsite_bench``, created and dropped by the bench; see
``bench/_db_study.py`` for the shape of the data and the COPY loader), points Django at it
through ``DATABASE_URL`` and times what the worker runs after votes,
``arena.services.ratings_recompute`` (SQL aggregation, fit, bootstrap, snapshot write),
end to end and piece by piece, each several times (the median is printed: the machine is
shared). In the same run the FastChat baseline fetches the individual battles from the
same database and refits per bootstrap round, timed for a few rounds and extrapolated.
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from arena import ratings  # noqa: E402
from bench import _db_study  # noqa: E402


def simulate_battles(
    n_models: int,
    n_battles: int,
    rng: np.random.Generator,
    *,
    tie_rate: float = 0.3,
    both_bad_share: float = 0.3,
) -> tuple[list[str], list[str], list[str], np.ndarray]:
    """Random pairs with true ratings ~ N(1000, 150^2) Elo.

    Between equals a battle is tied with probability ``tie_rate``, between unequal
    models proportionally less (``tie_rate * 2 min(p, 1 - p)``), and the wins make up the
    rest so that ``P(win) + P(tie) / 2`` is exactly the Bradley-Terry probability ``p``:
    ties-as-half then estimates the true ratings without bias.
    """
    true = rng.normal(1000.0, 150.0, n_models)
    names = [f"model-{k:02d}" for k in range(n_models)]
    a = rng.integers(0, n_models, n_battles)
    b = (a + rng.integers(1, n_models, n_battles)) % n_models
    code = _db_study.outcome_codes(true, a, b, rng, tie_rate=tie_rate, both_bad_share=both_bad_share)
    outcome_names = np.array(ratings.OUTCOMES, dtype=object)
    return [names[k] for k in a], [names[k] for k in b], list(outcome_names[code]), true


def _fastchat_mle_elo(a: np.ndarray, b: np.ndarray, code: np.ndarray, n_models: int) -> np.ndarray:
    """Chatbot Arena notebook's ``compute_mle_elo``, with numpy in place of pandas."""
    from sklearn.linear_model import LogisticRegression

    n = 2 * a.size  # every battle twice: a win is two wins, a tie one win each way
    x = np.zeros((n, n_models))
    rows = np.arange(n)
    x[rows, np.concatenate([a, a])] = +math.log(10)
    x[rows, np.concatenate([b, b])] = -math.log(10)
    y = np.zeros(n)
    y[np.concatenate([code == 0, code == 0])] = 1.0
    y[np.concatenate([code >= 2, np.zeros(a.size, dtype=bool)])] = 1.0
    model = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-8)
    model.fit(x, y)
    elo = 400.0 * model.coef_[0]
    return elo - elo.mean() + 1000.0


def _timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def bench_pure(
    *,
    n_models: int = 50,
    n_battles: int = 1_000_000,
    rounds: int = 1000,
    fastchat_rounds: int = 5,
    seed: int = 0,
) -> dict[str, float]:
    """Time arena.ratings and the FastChat approach on the same simulated battles.

    Prints the figures and returns them (seconds, and the speed ratio).
    """
    rng = np.random.default_rng(seed)
    model_a, model_b, outcome, true = simulate_battles(n_models, n_battles, rng)
    print(f"{n_battles:,} simulated battles among {n_models} models (seed {seed}), {rounds} bootstrap rounds")

    counts, t_count = _timed(ratings.count_battles, model_a, model_b, outcome)
    fitted, t_fit = _timed(ratings.fit_bradley_terry, counts)
    boot_rng = np.random.default_rng(seed + 1)
    samples, t_boot = _timed(ratings.bootstrap_ratings, counts, rounds=rounds, rng=boot_rng)
    ours = t_count + t_fit + t_boot
    width = np.percentile(samples, 97.5, axis=0) - np.percentile(samples, 2.5, axis=0)
    error = np.abs(fitted - (true - true.mean() + 1000.0))
    print("arena.ratings")
    print(f"  count_battles              {t_count:8.3f} s")
    print(f"  fit_bradley_terry          {t_fit:8.3f} s")
    print(f"  bootstrap_ratings ({rounds})  {t_boot:8.3f} s")
    print(f"  total                      {ours:8.3f} s")
    print(f"  |rating - truth|: mean {error.mean():.2f}, max {error.max():.2f} Elo")
    print(f"  mean 95% interval width: {width.mean():.2f} Elo")

    index = {name: k for k, name in enumerate(counts.models)}
    a = np.fromiter(map(index.__getitem__, model_a), dtype=np.intp, count=n_battles)
    b = np.fromiter(map(index.__getitem__, model_b), dtype=np.intp, count=n_battles)
    code = np.fromiter(map(ratings.OUTCOMES.index, outcome), dtype=np.intp, count=n_battles)
    reference, t_fc_fit = _timed(_fastchat_mle_elo, a, b, code, n_models)
    fc_rng = np.random.default_rng(seed + 2)
    start = time.perf_counter()
    for _ in range(fastchat_rounds):
        pick = fc_rng.integers(0, n_battles, n_battles)  # battles.sample(frac=1.0, replace=True)
        _fastchat_mle_elo(a[pick], b[pick], code[pick], n_models)
    t_fc_round = (time.perf_counter() - start) / fastchat_rounds
    t_fc_boot = t_fc_round * rounds
    theirs = t_fc_fit + t_fc_boot
    print("FastChat approach (scikit-learn LogisticRegression on individual battles)")
    print(f"  fit                        {t_fc_fit:8.3f} s")
    print(f"  bootstrap, per round       {t_fc_round:8.3f} s  (mean of {fastchat_rounds} rounds)")
    print(f"  bootstrap ({rounds})          {t_fc_boot:8.1f} s  EXTRAPOLATED from {fastchat_rounds} rounds")
    print(f"  total                      {theirs:8.1f} s  (extrapolated)")
    gap = np.abs(fitted - reference).max()
    print(f"  max |arena.ratings - scikit-learn| rating difference: {gap:.2e} Elo")
    print(f"speed ratio, fit + {rounds}-round bootstrap (+ counting for ours): {theirs / ours:,.0f}x")
    return {
        "count_s": t_count,
        "fit_s": t_fit,
        "bootstrap_s": t_boot,
        "total_s": ours,
        "fastchat_fit_s": t_fc_fit,
        "fastchat_round_s": t_fc_round,
        "fastchat_total_extrapolated_s": theirs,
        "speed_ratio": theirs / ours,
    }


def _repeated(function, repeat: int):
    """Run ``function`` ``repeat`` times; (last result, list of seconds)."""
    times = []
    result = None
    for _ in range(repeat):
        result, seconds = _timed(function)
        times.append(seconds)
    return result, times


def _spread(times: list[float]) -> str:
    if len(times) == 1:
        return ""
    return f"  (median of {len(times)}: {min(times):.3f}-{max(times):.3f})"


class _QueryLog:
    """Django execute wrapper recording (seconds, sql, params) of every statement."""

    def __init__(self) -> None:
        self.queries: list[tuple[float, str, object]] = []

    def __call__(self, execute, sql, params, many, context):
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.queries.append((time.perf_counter() - start, sql, params))


def _incremental_refresh(study_id: int, *, rounds: int, full_s: float, new_votes: int) -> dict[str, float]:
    """Cast ``new_votes`` votes through the vote path, then time the refresh that counts only them.

    The overlap goes up by one so that places open; afterwards the votes are deleted and
    the overlap and counters restored, so a kept database stays reusable.
    """
    from django.contrib.auth import get_user_model
    from django.db import connection

    from annotation import services
    from annotation.models import Assignment, Study, StudyMember, Unit
    from arena import services as arena_services

    study = Study.objects.get(pk=study_id)
    overlap = study.overlap
    services.study_update_settings(study=study, overlap=overlap + 1, adaptive_sampling=False)
    crowd = list(get_user_model().objects.filter(
        pk__in=StudyMember.objects.filter(study=study, role="annotator").values("user")))
    start_id = Assignment.objects.order_by("-id").values_list("id", flat=True).first() or 0
    start = time.perf_counter()
    cast = 0
    while cast < new_votes:
        for user in crowd:
            lease = services.assignment_next(study=study, annotator=user)
            if lease is not None:
                services.judgment_submit(assignment=lease, choice=("left", "right", "tie")[cast % 3])
                cast += 1
            if cast >= new_votes:
                break
    t_votes = time.perf_counter() - start
    try:
        snapshot, t_inc = _timed(arena_services.ratings_recompute, study_id=study_id, rounds=rounds)
        full, _ = _timed(arena_services.ratings_recompute, study_id=study_id, rounds=rounds, force=True)
        same = [(r["model"], r["rating"], r["lower"], r["upper"]) for r in snapshot.payload["rows"]] == [
            (r["model"], r["rating"], r["lower"], r["upper"]) for r in full.payload["rows"]]
    finally:  # put the kept database back as it was loaded
        with connection.cursor() as cur:
            cur.execute("DELETE FROM annotation_judgment WHERE assignment_id > %s", [start_id])
            cur.execute("DELETE FROM annotation_assignment WHERE id > %s", [start_id])
        Unit.objects.filter(study=study, taken__gt=overlap).update(taken=overlap)
        for member in StudyMember.objects.filter(study=study, role="annotator"):
            member.done = member.user.judgments.filter(study=study).count()
            member.save(update_fields=["done"])
        services.study_update_settings(study=study, overlap=overlap, adaptive_sampling=False)
        arena_services.ratings_recompute(study_id=study_id, rounds=rounds, force=True)
    print(f"incremental refresh after {new_votes:,} new votes (cast through the vote path in {t_votes:.1f} s, "
          f"{new_votes / t_votes:,.0f}/s, one process)")
    print(f"  {'ratings_recompute (incremental)':<31}{t_inc:8.3f} s  against a full pass {full_s:.3f} s; "
          f"same ratings and intervals as the full pass: {'yes' if same else 'NO'}")
    print(f"  goal: at most 1 s end to end, equal to a full pass: {'met' if t_inc <= 1.0 and same else 'NOT met'}")
    return {"incremental_s": t_inc, "votes_per_s_one_process": new_votes / t_votes}


def _summary_at_scale(study_id: int) -> dict[str, float]:
    """Time the managers' summary on the big study: the worker's recompute and the page's read.

    Adds, with one INSERT ... SELECT each, a finished metric run scoring every output and an
    LLM judge with a verdict on every fifth unit, and random latencies; removes them after.
    """
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from annotation.models import Output, Study, Unit
    from arena.models import Judge
    from metrics.models import MetricRun
    from metrics.summary import study_summary, summary_recompute

    study = Study.objects.get(pk=study_id)
    run = MetricRun.objects.create(study=study, metric="rougeL", options_hash="bench", status=MetricRun.Status.DONE)
    judge = Judge.objects.create(study=study, name="bench judge", backend="openai", spec={}, rubric="bench",
                                 status=Judge.Status.DONE)
    try:
        with connection.cursor() as cur:
            cur.execute("UPDATE annotation_output SET latency_ms = 200 + 800 * random() WHERE study_id = %s",
                        [study_id])
            cur.execute("INSERT INTO metrics_outputscore (run_id, output_id, value) "
                        "SELECT %s, id, random() FROM annotation_output WHERE study_id = %s", [run.pk, study_id])
            cur.execute("INSERT INTO arena_judgeverdict (judge_id, unit_id, outcome, first_order_reply, "
                        "second_order_reply, consistent, created_at) SELECT %s, id, (ARRAY['a','b','tie'])[1 + id %% 3], "
                        "'', '', true, now() FROM annotation_unit WHERE study_id = %s AND id %% 5 = 0",
                        [judge.pk, study_id])
        n_outputs = Output.objects.filter(study_id=study_id).count()
        n_verdicts = judge.verdicts.count()
        _, t_worker = _timed(summary_recompute, study_id=study_id, force=True)
        study_summary(study)
        with CaptureQueriesContext(connection) as ctx:
            _, t_page = _timed(study_summary, study)
    finally:
        run.delete()
        judge.delete()
        with connection.cursor() as cur:
            cur.execute("UPDATE annotation_output SET latency_ms = NULL WHERE study_id = %s", [study_id])
    print(f"managers' summary ({n_outputs:,} outputs each with a metric score, {n_verdicts:,} judge verdicts, "
          f"{Unit.objects.filter(study_id=study_id).count():,} units)")
    print(f"  {'summary_recompute (worker)':<31}{t_worker:8.3f} s")
    print(f"  {'study_summary (page read)':<31}{t_page:8.3f} s  in {len(ctx.captured_queries)} queries")
    return {"summary_worker_s": t_worker, "summary_page_s": t_page}


def bench_db(
    *,
    n_models: int = 50,
    n_judgments: int = 1_000_000,
    rounds: int = 1000,
    fastchat_rounds: int = 5,
    seed: int = 0,
    repeat: int = 3,
    keep: bool = False,
    server: str = _db_study.DEFAULT_SERVER,
    database: str = _db_study.DEFAULT_DATABASE,
    explain: bool = False,
    new_votes: int = 10_000,
) -> dict[str, float]:
    """Time ``ratings_recompute`` on a PostgreSQL study of ``n_judgments`` judgments, and FastChat on the same rows.

    Prints the figures and returns them (seconds, medians of ``repeat`` runs, and the
    speed ratio). Django is configured for the bench database here, so call this at most
    once per process.
    """
    url = _db_study.database_url(server, database)
    try:
        _db_study.ensure_database(server, database)
    except _db_study.psycopg.OperationalError as error:
        raise SystemExit(f"database part: cannot reach PostgreSQL at {server} ({error}); "
                         "set --server or EVALSITE_BENCH_SERVER, or run with --pure-only") from error
    os.environ["DATABASE_URL"] = url
    # its own broker folder: the refresh requests its votes make must not reach a `make run` worker
    os.environ.setdefault("EVALSITE_VAR_DIR", str(Path(__file__).resolve().parent.parent / "var" / "bench"))
    os.environ["DJANGO_SETTINGS_MODULE"] = "evalsite.settings"
    os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))  # DEBUG is off: a strong key is required
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, connections

    from annotation.models import Candidate
    from arena import selectors, services

    try:
        call_command("migrate", verbosity=0)
        found = _db_study.find_study(url, n_models, n_judgments, seed)
        if found:
            study_id, truth = found
            load = None
            print(f"PostgreSQL study: {n_judgments:,} judgments among {n_models} models (seed {seed}), "
                  f"reused from database {database}")
        else:
            study_id, truth, load = _db_study.load_study(url, n_models=n_models, n_judgments=n_judgments, seed=seed)
            rows = load["rows"]
            print(f"PostgreSQL study: {n_judgments:,} judgments among {n_models} models (seed {seed}), "
                  f"loaded into database {database}")
            print(f"  {rows['annotation_prompt']:,} prompts, {rows['annotation_prompttag']:,} tags, "
                  f"{rows['annotation_output']:,} outputs, {rows['annotation_unit']:,} units, "
                  f"{rows['annotation_assignment']:,} assignments, {rows['annotation_judgment']:,} judgments, "
                  f"{rows['auth_user'] - 1} annotators; {load['database_bytes'] / 2**20:,.0f} MiB")
            print(f"  load {load['total_s']:.1f} s: generate {load['generate_s']:.1f} s, COPY and index rebuild "
                  f"{load['copy_s']:.1f} s (of which indexes {load['index_s']:.1f} s), "
                  f"VACUUM ANALYZE {load['analyze_s']:.1f} s")
        print(f"  {rounds} bootstrap rounds; " + (f"each timing below is the median of {repeat} runs"
                                               if repeat > 1 else "each timing below is one run"))

        # The aggregation the recompute runs: battle_table (slice-aware) or, in older trees, battle_cells.
        aggregate = getattr(selectors, "battle_table", None) or selectors.battle_cells
        table, t_agg = _repeated(lambda: aggregate(study_id), repeat)
        seed_for = study_id * 1_000_003 + table.last_judgment_id
        _, t_math = _repeated(lambda: services.leaderboard_payload(table, rounds=rounds, seed=seed_for), repeat)
        log = _QueryLog()
        t_e2e = []
        for k in range(repeat):
            if k == repeat - 1:
                with connection.execute_wrapper(log):
                    snapshot, seconds = _timed(services.ratings_recompute, study_id=study_id, force=True,
                                               rounds=rounds)
            else:
                snapshot, seconds = _timed(services.ratings_recompute, study_id=study_id, force=True, rounds=rounds)
            t_e2e.append(seconds)
        agg, math_s, e2e = (statistics.median(t) for t in (t_agg, t_math, t_e2e))
        fitted = {row["model"]: row["rating"] for row in snapshot.payload["rows"]}
        models = sorted(truth)
        ours_elo = np.array([fitted[m] for m in models])
        true_elo = np.array([truth[m] for m in models])
        error = np.abs((ours_elo - ours_elo.mean()) - (true_elo - true_elo.mean()))
        width = np.array([row["upper"] - row["lower"] for row in snapshot.payload["rows"]])
        sql_s = sum(q[0] for q in log.queries)
        slowest = max(log.queries, key=lambda q: q[0])
        print(f"arena.services.ratings_recompute (study {study_id}, {table.n_judgments:,} judgments, "
              f"{len(table.count):,} aggregated rows)")
        label = f"SQL aggregation ({aggregate.__name__})"
        print(f"  {label:<31}{agg:8.3f} s{_spread(t_agg)}")
        print(f"  {'leaderboard_payload (math)':<31}{math_s:8.3f} s{_spread(t_math)}")
        print(f"  {'end to end (force=True)':<31}{e2e:8.3f} s{_spread(t_e2e)}")
        print(f"    of which SQL: {len(log.queries)} statements, {sql_s:.3f} s; slowest {slowest[0]:.3f} s "
              f"(last run)")
        print(f"  |rating - truth|: mean {error.mean():.2f}, max {error.max():.2f} Elo")
        print(f"  mean 95% interval width: {width.mean():.2f} Elo")
        if (n_judgments, n_models, rounds) == (1_000_000, 50, 1000):
            print(f"  goal (1,000,000 judgments, 50 models): end to end at most 5 s: "
                  f"{'met' if e2e <= 5.0 else 'NOT met'}")

        incremental = _incremental_refresh(study_id, rounds=rounds, full_s=e2e, new_votes=new_votes)
        summary = _summary_at_scale(study_id)

        # FastChat: every battle out of the database, one design row per battle, refit per round.
        names = dict(Candidate.objects.filter(study_id=study_id).values_list("pk", "name"))
        position = {pk: models.index(name) for pk, name in names.items()}
        battles = selectors.study_judgments(study_id).values_list(
            "unit__output_a__candidate_id", "unit__output_b__candidate_id", "outcome")
        rows, t_fetch = _timed(list, battles.iterator(chunk_size=50_000))
        n = len(rows)
        outcome_code = {"a": 0, "b": 1, "tie": 2, "both_bad": 3}
        a = np.fromiter((position[r[0]] for r in rows), dtype=np.intp, count=n)
        b = np.fromiter((position[r[1]] for r in rows), dtype=np.intp, count=n)
        code = np.fromiter((outcome_code[r[2]] for r in rows), dtype=np.intp, count=n)
        del rows
        reference, t_fc_fit = _timed(_fastchat_mle_elo, a, b, code, len(models))
        fc_rng = np.random.default_rng(seed + 2)
        start = time.perf_counter()
        for _ in range(fastchat_rounds):
            pick = fc_rng.integers(0, n, n)
            _fastchat_mle_elo(a[pick], b[pick], code[pick], len(models))
        t_fc_round = (time.perf_counter() - start) / fastchat_rounds
        t_fc_boot = t_fc_round * rounds
        theirs = t_fetch + t_fc_fit + t_fc_boot
        print("FastChat approach on the same database (individual battles, scikit-learn LogisticRegression)")
        label = f"fetch {n:,} battles (ORM)"
        print(f"  {label:<31}{t_fetch:8.3f} s")
        print(f"  {'fit':<31}{t_fc_fit:8.3f} s")
        print(f"  {'bootstrap, per round':<31}{t_fc_round:8.3f} s  (mean of {fastchat_rounds} rounds)")
        print(f"  {f'bootstrap ({rounds})':<31}{t_fc_boot:8.1f} s  EXTRAPOLATED from {fastchat_rounds} rounds")
        print(f"  {'total':<31}{theirs:8.1f} s  (extrapolated)")
        gap = np.abs((ours_elo - ours_elo.mean()) - (reference - reference.mean())).max()
        print(f"  max |ratings_recompute - scikit-learn| rating difference: {gap:.2e} Elo")
        print(f"speed ratio, fetch + fit + {rounds}-round bootstrap against ratings_recompute end to end: "
              f"{theirs / e2e:,.0f}x")
        if explain:
            print(f"slowest statement of the last end-to-end run ({slowest[0]:.3f} s):")
            print(f"  {slowest[1]}  -- params {slowest[2]!r}")
            with connection.cursor() as cursor:
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + slowest[1], slowest[2])
                print("\n".join("  " + row[0] for row in cursor.fetchall()))
        result = {
            "aggregation_s": agg,
            "math_s": math_s,
            "total_s": e2e,
            "mean_abs_error_elo": float(error.mean()),
            "fastchat_fetch_s": t_fetch,
            "fastchat_fit_s": t_fc_fit,
            "fastchat_round_s": t_fc_round,
            "fastchat_total_extrapolated_s": theirs,
            "speed_ratio": theirs / e2e,
            **incremental,
            **summary,
        }
        if load:
            result["load_s"] = load["total_s"]
        return result
    finally:
        connections.close_all()
        if keep:
            print(f"kept database {database} (a re-run with the same --models/--judgments/--seed skips the load)")
        else:
            _db_study.drop_database(server, database)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--pure-only", action="store_true", help="only the simulated battles, no database")
    which.add_argument("--db-only", "--db", dest="db_only", action="store_true",
                       help="only the PostgreSQL study (the default runs both parts)")
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--battles", type=int, default=1_000_000, help="simulated battles (pure part)")
    parser.add_argument("--judgments", type=int, default=1_000_000, help="judgments in the PostgreSQL study")
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--fastchat-rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3, help="runs per database timing (median printed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help=f"keep the bench database ({_db_study.DEFAULT_DATABASE})")
    parser.add_argument("--explain", action="store_true", help="EXPLAIN ANALYZE the slowest recompute query")
    parser.add_argument("--new-votes", type=int, default=10_000,
                        help="votes cast through the vote path before timing the incremental refresh")
    parser.add_argument("--server", default=os.environ.get("EVALSITE_BENCH_SERVER", _db_study.DEFAULT_SERVER),
                        help="PostgreSQL server URL without a database name (a superuser: the bench creates "
                             "and drops its database)")
    parser.add_argument("--database", default=_db_study.DEFAULT_DATABASE)
    args = parser.parse_args(argv)
    run_pure, run_db = not args.db_only, not args.pure_only
    if run_pure:
        bench_pure(
            n_models=args.models,
            n_battles=args.battles,
            rounds=args.rounds,
            fastchat_rounds=args.fastchat_rounds,
            seed=args.seed,
        )
    if run_pure and run_db:
        print()
    if run_db:
        bench_db(
            n_models=args.models,
            n_judgments=args.judgments,
            rounds=args.rounds,
            fastchat_rounds=args.fastchat_rounds,
            seed=args.seed,
            repeat=args.repeat,
            keep=args.keep,
            server=args.server,
            database=args.database,
            explain=args.explain,
            new_votes=args.new_votes,
        )


if __name__ == "__main__":
    main()
