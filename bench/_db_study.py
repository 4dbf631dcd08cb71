"""The bench study in PostgreSQL: a dedicated database and a fast COPY loader.

Used by ``bench/ratings_bench.py --db``. The database (``evalsite_bench`` by default) is
the benchmark's own: the loader empties its tables before writing, and the bench drops it
at the end unless ``--keep``. Nothing here imports Django; the schema is the one
``manage.py migrate`` creates (``annotation/models.py``), written with explicit ids.

Shape of the study (seeded, so the same arguments give the same rows):

* 50 candidates (``model-00`` ...) with Bradley-Terry strengths ~ N(1000, 150^2) Elo, kept
  in ``Study.generation_settings["bench"]`` so a reused database still has the truth;
* 2,000 prompts with two or three tags each (a topic such as ``billing`` or ``shipping``,
  often a difficulty, sometimes ``escalation``), as ``Prompt.tags`` and ``PromptTag`` rows;
* one output per candidate and prompt (100,000), texts of log-normal length (median about
  600 characters, a per-candidate verbosity), stored in a random order per prompt so that
  ``output_a`` (the lower id) is any candidate;
* units: distinct random pairs of outputs on the same prompt, each judged by two
  different annotators (overlap 2): 500,000 units for 1,000,000 judgments; each with the
  copies and counters the vote path keeps: its candidate pair (``cand_lo < cand_hi``,
  ``a_is_lo``), ``pair_seq`` (0, 1, ... among its pair's units in id order), a random
  ``shuffle`` in [0, 2^31) and ``taken`` (its judgments, so every unit but the last of an
  odd count is full and the partial ``unit_open`` indexes are near empty);
* 200 annotators in four groups, a submitted, unreleased assignment per judgment (random
  43-character token, like ``secrets.token_urlsafe(32)``), judgments in a random unit order
  over 60 days; ``StudyMember.done`` is each member's judgment count, ``Study.units_total``
  the unit count, ``Study.version`` 0, and the study has its idle ``"all"`` ``RatingRequest``;
* outcomes drawn from the Bradley-Terry model with ties and both-bad votes as in
  ``ratings_bench.simulate_battles``, screen side (``left_is_a``) a fair coin.

The load is one transaction: TRUNCATE, then ``COPY ... WITH (FREEZE)`` per table from
text generated in chunks with numpy, with the secondary indexes (the partial ones, such
as ``unit_open`` and the unique ``assignment_one_open_lease``, included) and the unique
constraints of the four big tables dropped first and rebuilt after (the schema ends up
exactly as ``migrate`` made it), then VACUUM ANALYZE. Foreign-key triggers are off
during the load (``session_replication_role = replica``: the data is consistent by
construction); check constraints (``unit_candidates_ordered`` among them) are enforced
by COPY and unique ones when they are rebuilt.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import psycopg
from psycopg import sql

DEFAULT_SERVER = "postgres://postgres@127.0.0.1:5432"
DEFAULT_DATABASE = "evalsite_bench"
STUDY_NAME = "bench: leaderboard at scale"
LAYOUT = 2  # bump when the generated shape changes, so an old kept database is reloaded
N_PROMPTS = 2000
N_ANNOTATORS = 200
OVERLAP = 2
GROUPS = ("team-a", "team-b", "team-c", "team-d")
TOPICS = ("billing", "shipping", "returns", "account", "technical", "product")
CHUNK = 100_000
BIG_TABLES = ("annotation_output", "annotation_unit", "annotation_assignment", "annotation_judgment")
START = np.datetime64("2025-03-01T08:00:00", "ms")

TABLES = (
    "auth_user",
    "annotation_study",
    "annotation_studymember",
    "annotation_prompt",
    "annotation_prompttag",
    "annotation_candidate",
    "annotation_output",
    "annotation_unit",
    "annotation_assignment",
    "annotation_judgment",
    "arena_ratingrequest",
)


def database_url(server: str, name: str) -> str:
    return f"{server.rstrip('/')}/{name}"


def ensure_database(server: str, name: str) -> bool:
    """Create the database if it is missing; True when it was created."""
    with psycopg.connect(database_url(server, "postgres"), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return True


def drop_database(server: str, name: str) -> None:
    with psycopg.connect(database_url(server, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def bench_settings(n_models: int, n_judgments: int, seed: int) -> dict:
    return {"layout": LAYOUT, "models": n_models, "judgments": n_judgments, "seed": seed}


def find_study(url: str, n_models: int, n_judgments: int, seed: int) -> tuple[int, dict[str, float]] | None:
    """The bench study already loaded with these arguments: (study id, true Elo by model), or None."""
    wanted = bench_settings(n_models, n_judgments, seed)
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT id, generation_settings -> 'bench' FROM annotation_study WHERE name = %s", [STUDY_NAME]
        ).fetchone()
        if row is None or row[1] is None or {k: row[1].get(k) for k in wanted} != wanted:
            return None
        (count,) = conn.execute("SELECT count(*) FROM annotation_judgment WHERE study_id = %s", [row[0]]).fetchone()
        if count != n_judgments:
            return None
        return row[0], {name: float(elo) for name, elo in row[1]["true"].items()}


# ---------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------


def _bool(values: np.ndarray) -> list[str]:
    return np.where(values, "t", "f").tolist()


def _stamp(values: np.ndarray) -> list[str]:
    """datetime64[ms] -> 'YYYY-MM-DDTHH:MM:SS.mmm' (COPY reads it with the '+00' added by the row format)."""
    return np.datetime_as_string(values, unit="ms").tolist()


def _tokens(rng: np.random.Generator, n: int) -> list[str]:
    # 33 random bytes are exactly 44 base64 characters; keep 43 like token_urlsafe(32)
    text = base64.urlsafe_b64encode(rng.bytes(33 * n)).decode("ascii")
    return [text[k : k + 43] for k in range(0, 44 * n, 44)]


def _corpus(rng: np.random.Generator, n_words: int = 60_000) -> str:
    letters = np.array(list("etaoinshrdlucmfwypvbgkjqxz"))
    freq = np.array([12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8, 2.4, 2.2, 2.4, 2.0, 1.9,
                     1.0, 1.5, 2.0, 0.8, 0.2, 0.1, 0.2, 0.1])
    vocab = ["".join(rng.choice(letters, size=int(k), p=freq / freq.sum())) for k in rng.integers(1, 11, 3000)]
    zipf = 1.0 / np.arange(1, len(vocab) + 1)
    words = rng.choice(np.array(vocab, dtype=object), size=n_words, p=zipf / zipf.sum())
    return " ".join(words)


def outcome_codes(
    true: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    rng: np.random.Generator,
    *,
    tie_rate: float = 0.3,
    both_bad_share: float = 0.3,
) -> np.ndarray:
    """Codes 0 A wins, 1 B wins, 2 tie, 3 both bad with P(win) + P(tie)/2 the Bradley-Terry probability.

    The same draw as ``ratings_bench.simulate_battles``.
    """
    p_a = 1.0 / (1.0 + 10.0 ** ((true[b] - true[a]) / 400.0))
    p_tie = tie_rate * 2.0 * np.minimum(p_a, 1.0 - p_a)
    u = rng.random(a.size)
    tie_code = np.where(rng.random(a.size) < both_bad_share, 3, 2)
    return np.where(u < p_a - p_tie / 2, 0, np.where(u < p_a + p_tie / 2, tie_code, 1))


def _pair_seq(pair: np.ndarray) -> np.ndarray:
    """Each element's rank among the equal elements before it: 0, 1, ... per value, in index order."""
    order = np.argsort(pair, kind="stable")
    ranks = np.arange(pair.size)
    start = np.r_[True, pair[order][1:] != pair[order][:-1]]
    seq = np.empty(pair.size, dtype=np.int64)
    seq[order] = ranks - np.maximum.accumulate(np.where(start, ranks, 0))
    return seq


def _drop_secondary_indexes(cur: psycopg.Cursor, tables: Sequence[str]) -> list[str]:
    """Drop the indexes COPY would otherwise update row by row; returns the statements that rebuild them.

    Indexes that back no constraint (plain, partial or unique: ``unit_open``,
    ``assignment_one_open_lease``), and unique constraints that no foreign key depends on,
    are rebuilt in one sort each after the load (several times faster than 1,000,000
    random inserts into, say, the unique index on the random assignment token). Primary
    keys stay.
    """
    rebuild = []
    for table in tables:
        cur.execute(
            """SELECT c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c
               WHERE c.conrelid = %s::regclass AND c.contype = 'u'
                 AND NOT EXISTS (SELECT 1 FROM pg_constraint f WHERE f.contype = 'f' AND f.conindid = c.conindid)""",
            [table],
        )
        for name, definition in cur.fetchall():
            cur.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                sql.Identifier(table), sql.Identifier(name)))
            rebuild.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                sql.Identifier(table), sql.Identifier(name), sql.SQL(definition)))
        cur.execute(
            """SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i
               WHERE i.indrelid = %s::regclass
                 AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)""",
            [table],
        )
        for name, definition in cur.fetchall():
            cur.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
            rebuild.append(sql.SQL(definition))
    return rebuild


class _Copier:
    def __init__(self, cur: psycopg.Cursor) -> None:
        self.cur = cur
        self.rows: dict[str, int] = {}
        self.seconds: dict[str, float] = {}

    def __call__(self, table: str, columns: Sequence[str], chunks: Iterator[str]) -> None:
        start = time.perf_counter()
        statement = sql.SQL("COPY {} ({}) FROM STDIN WITH (FREEZE)").format(
            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        with self.cur.copy(statement) as copy:
            for chunk in chunks:
                copy.write(chunk)
        self.rows[table] = self.cur.rowcount
        self.seconds[table] = time.perf_counter() - start


def _rows(fmt: str, n: int, columns: Callable[[int, int], Sequence[Sequence]]) -> Iterator[str]:
    """Text-format COPY data in chunks: ``columns(lo, hi)`` gives the column lists of rows lo..hi."""
    line = fmt + "\n"
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        yield "".join(map(line.format, *columns(lo, hi)))


def load_study(url: str, *, n_models: int, n_judgments: int, seed: int) -> tuple[int, dict[str, float], dict]:
    """Empty the bench tables and write the study; returns (study id, true Elo by model, timings and sizes)."""
    t0 = time.perf_counter()
    rng = np.random.default_rng([seed, 7919])
    M, A = n_models, N_ANNOTATORS
    true = rng.normal(1000.0, 150.0, M)
    width = max(2, len(str(M - 1)))
    names = [f"model-{k:0{width}d}" for k in range(M)]
    n_units = math.ceil(n_judgments / OVERLAP)
    n_pairs = M * (M - 1) // 2
    P = max(N_PROMPTS, math.ceil(n_units / n_pairs))
    per_prompt = math.ceil(n_units / P)

    # prompts and tags
    topic = rng.integers(0, len(TOPICS), P)
    difficulty = rng.choice(np.array(["", "easy", "hard"], dtype=object), P, p=[0.4, 0.3, 0.3])
    escalation = rng.random(P) < 0.1
    tags = [[TOPICS[t]] + ([d] if d else []) + (["escalation"] if e else [])
            for t, d, e in zip(topic.tolist(), difficulty.tolist(), escalation.tolist())]
    corpus = _corpus(rng)
    prompt_len = rng.integers(40, 400, P)
    prompt_off = rng.integers(0, len(corpus) - 400, P)
    prompt_text = [f"Customer question {p + 1}: {corpus[o:o + n]}?" for p, (o, n) in
                   enumerate(zip(prompt_off.tolist(), prompt_len.tolist()))]

    # outputs: slot s of prompt p holds candidate perm[p, s]; id 1 + p*M + s
    perm = np.argsort(rng.random((P, M)), axis=1)
    verbosity = rng.lognormal(0.0, 0.35, M)
    length = np.clip(rng.lognormal(math.log(600.0), 0.7, (P, M)) * verbosity[perm], 20, 8000).astype(np.int64)
    maxlen = int(length.max())
    if len(corpus) < 2 * maxlen:
        corpus = corpus * (2 * maxlen // len(corpus) + 1)
    text_off = rng.integers(0, len(corpus) - maxlen, (P, M))
    tokens = np.maximum(1, length // 4)
    latency = (150.0 + tokens * rng.lognormal(math.log(12.0), 0.3, (P, M))).round(1)

    # units: per prompt, distinct random pairs of slots (s < t)
    iu, ju = np.triu_indices(M, 1)
    chosen = np.argpartition(rng.random((P, n_pairs)), per_prompt - 1, axis=1)[:, :per_prompt]
    unit_prompt = np.repeat(np.arange(P), per_prompt)[:n_units]
    chosen = chosen.ravel()[:n_units]
    slot_a, slot_b = iu[chosen], ju[chosen]
    unit_out_a = 1 + unit_prompt * M + slot_a
    unit_out_b = 1 + unit_prompt * M + slot_b
    unit_cand_a = perm[unit_prompt, slot_a]
    unit_cand_b = perm[unit_prompt, slot_b]
    unit_lo = np.minimum(unit_cand_a, unit_cand_b)
    unit_hi = np.maximum(unit_cand_a, unit_cand_b)
    unit_a_is_lo = unit_cand_a < unit_cand_b
    unit_pair_seq = _pair_seq(unit_lo * M + unit_hi)

    # judgments: OVERLAP different annotators per unit, cast in a random order
    first = rng.integers(0, A, n_units)
    second = (first + rng.integers(1, A, n_units)) % A
    j_unit = np.repeat(np.arange(n_units), OVERLAP)[:n_judgments]
    j_annot = np.stack([first, second], axis=1).ravel()[:n_judgments]
    order = rng.permutation(n_judgments)
    j_unit, j_annot = j_unit[order], j_annot[order]
    code = outcome_codes(true, unit_cand_a[j_unit], unit_cand_b[j_unit], rng)
    left = rng.random(n_judgments) < 0.5
    seconds = np.sort(rng.uniform(0, 60 * 86400, n_judgments))
    submitted = START + (seconds * 1000).astype("timedelta64[ms]")
    active = np.clip(rng.lognormal(math.log(20_000), 0.6, n_judgments), 1500, 600_000).astype(np.int64)
    served = submitted - active.astype("timedelta64[ms]")
    expires = served + np.timedelta64(30 * 60 * 1000, "ms")
    rationale_pick = np.where(rng.random(n_judgments) < 0.05, rng.integers(1, 4, n_judgments), 0)
    rationales = ("", "More complete answer.", "The other one ignores the question.", "Shorter and correct.")
    outcome_names = ("a", "b", "tie", "both_bad")
    token = _tokens(rng, n_judgments)
    unit_shuffle = rng.integers(0, 2**31, n_units)
    unit_taken = np.bincount(j_unit, minlength=n_units)  # every assignment is submitted and none released
    member_done = np.bincount(j_annot, minlength=A)
    t_generate = time.perf_counter() - t0

    study_id, owner = 1, 1
    created = "2025-02-28T12:00:00+00"
    truth = {names[k]: float(true[k]) for k in range(M)}
    settings = {"max_new_tokens": 512, "temperature": 0.0, "seed": seed,
                "bench": {**bench_settings(M, n_judgments, seed), "true": truth}}

    t1 = time.perf_counter()
    with psycopg.connect(url) as conn:
        cur = conn.cursor()
        cur.execute("SET session_replication_role = replica")  # no FK triggers; consistent by construction
        cur.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(
            sql.SQL(", ").join(map(sql.Identifier, TABLES))))
        cur.execute("SET maintenance_work_mem = '512MB'")
        deferred = _drop_secondary_indexes(cur, BIG_TABLES)
        copy = _Copier(cur)
        copy("auth_user",
             ("id", "password", "last_login", "is_superuser", "username", "first_name", "last_name", "email",
              "is_staff", "is_active", "date_joined"),
             iter(["1\t!\t\\N\tf\tbench-owner\t\t\t\tf\tt\t" + created + "\n"
                   + "".join(f"{u + 2}\t!\t\\N\tf\tbench-annotator-{u:03d}\t\t\t\tf\tt\t{created}\n"
                             for u in range(A))]))
        copy("annotation_study",
             ("id", "name", "description", "created_at", "overlap", "samples_per_prompt", "generation_settings",
              "adaptive_sampling", "created_by_id", "units_total", "version", "lease_sweep_at",
              # the task settings at their defaults: blind pairs, no checks, no quiz
              "task_kinds", "likert_criteria", "failure_tags", "ask_rationale", "instructions", "check_rate",
              "gold_pass", "quiz_size", "quiz_pass", "quiz_attempts"),
             iter([f"{study_id}\t{STUDY_NAME}\tSynthetic study written by bench/ratings_bench.py --db.\t{created}\t"
                   f"{OVERLAP}\t1\t{json.dumps(settings)}\tf\t{owner}\t{n_units}\t0\t\\N\t"
                   "pairwise\t[]\t[]\toptional\t\t0\t70\t0\t80\t2\n"]))
        copy("annotation_studymember", ("id", "role", "group", "excluded", "study_id", "user_id", "done"),
             iter([f"1\tevaluator\t\tf\t{study_id}\t{owner}\t0\n"
                   + "".join(f"{u + 2}\tannotator\t{GROUPS[u % len(GROUPS)]}\tf\t{study_id}\t{u + 2}\t{done}\n"
                             for u, done in enumerate(member_done.tolist()))]))
        copy("annotation_prompt",
             ("id", "external_id", "text", "reference", "tags", "image", "is_gold", "gold_answer", "position",
              "study_id"),
             _rows("{}\tq{:05d}\t{}\t\t{}\t\tf\t\t{}\t" + str(study_id), P,
                   lambda lo, hi: (range(lo + 1, hi + 1), range(lo + 1, hi + 1), prompt_text[lo:hi],
                                   [json.dumps(t) for t in tags[lo:hi]], range(lo, hi))))
        tag_rows = [(p + 1, t) for p in range(P) for t in tags[p]]
        copy("annotation_prompttag", ("id", "tag", "prompt_id", "study_id"),
             iter(["".join(f"{k + 1}\t{t}\t{p}\t{study_id}\n" for k, (p, t) in enumerate(tag_rows))]))
        copy("annotation_candidate", ("id", "name", "backend", "spec", "created_at", "study_id", "check_state",
                                      "check_error", "hidden"),
             iter(["".join(f"{k + 1}\t{names[k]}\timported\t{{}}\t{created}\t{study_id}\t\t\tf\n"
                           for k in range(M))]))

        flat_len, flat_off = length.ravel(), text_off.ravel()
        flat_cand, flat_tok, flat_lat = perm.ravel() + 1, tokens.ravel(), latency.ravel()
        copy("annotation_output",
             ("id", "study_id", "prompt_id", "candidate_id", "sample_index", "status", "text", "error",
              "latency_ms", "prompt_tokens", "completion_tokens", "cost", "seed", "settings", "claim",
              "claimed_at", "attempts", "created_at", "finished_at", "claimed_by", "identity"),
             _rows("{}\t" + str(study_id) + "\t{}\t{}\t0\tdone\t{}\t\t{}\t{}\t{}\t{}\t\\N\t{{}}\t\t\\N\t1\t"
                   + created + "\t" + created + "\t\t", P * M,
                   lambda lo, hi: (range(lo + 1, hi + 1),
                                   (np.arange(lo, hi) // M + 1).tolist(),
                                   flat_cand[lo:hi].tolist(),
                                   [corpus[o:o + n]
                                    for o, n in zip(flat_off[lo:hi].tolist(), flat_len[lo:hi].tolist())],
                                   flat_lat[lo:hi].tolist(),
                                   (prompt_len[np.arange(lo, hi) // M] // 4).tolist(),
                                   flat_tok[lo:hi].tolist(),
                                   (flat_tok[lo:hi] * 6e-7).round(8).tolist())))
        copy("annotation_unit",
             ("id", "kind", "needed", "is_gold", "created_at", "output_a_id", "output_b_id", "prompt_id", "study_id",
              "taken", "cand_lo_id", "cand_hi_id", "a_is_lo", "pair_seq", "shuffle", "rule_tie"),
             _rows("{}\tpairwise\t" + str(OVERLAP) + "\tf\t" + created + "\t{}\t{}\t{}\t" + str(study_id)
                   + "\t{}\t{}\t{}\t{}\t{}\t{}\tf", n_units,
                   lambda lo, hi: (range(lo + 1, hi + 1), unit_out_a[lo:hi].tolist(), unit_out_b[lo:hi].tolist(),
                                   (unit_prompt[lo:hi] + 1).tolist(), unit_taken[lo:hi].tolist(),
                                   (unit_lo[lo:hi] + 1).tolist(), (unit_hi[lo:hi] + 1).tolist(),
                                   _bool(unit_a_is_lo[lo:hi]), unit_pair_seq[lo:hi].tolist(),
                                   unit_shuffle[lo:hi].tolist())))
        copy("annotation_assignment",
             ("id", "token", "left_is_a", "leased_at", "expires_at", "submitted_at", "annotator_id", "unit_id",
              "study_id", "released"),
             _rows("{}\t{}\t{}\t{}+00\t{}+00\t{}+00\t{}\t{}\t" + str(study_id) + "\tf", n_judgments,
                   lambda lo, hi: (range(lo + 1, hi + 1), token[lo:hi], _bool(left[lo:hi]), _stamp(served[lo:hi]),
                                   _stamp(expires[lo:hi]), _stamp(submitted[lo:hi]),
                                   (j_annot[lo:hi] + 2).tolist(), (j_unit[lo:hi] + 1).tolist())))
        copy("annotation_judgment",
             ("id", "assignment_id", "study_id", "unit_id", "annotator_id", "outcome", "left_is_a", "rationale",
              "served_at", "submitted_at", "active_ms"),
             _rows("{}\t{}\t" + str(study_id) + "\t{}\t{}\t{}\t{}\t{}\t{}+00\t{}+00\t{}", n_judgments,
                   lambda lo, hi: (range(lo + 1, hi + 1), range(lo + 1, hi + 1), (j_unit[lo:hi] + 1).tolist(),
                                   (j_annot[lo:hi] + 2).tolist(), [outcome_names[c] for c in code[lo:hi].tolist()],
                                   _bool(left[lo:hi]), [rationales[r] for r in rationale_pick[lo:hi].tolist()],
                                   _stamp(served[lo:hi]), _stamp(submitted[lo:hi]), active[lo:hi].tolist())))
        copy("arena_ratingrequest", ("id", "study_id", "slice_key", "pending", "requested_at", "started_at"),
             iter([f"1\t{study_id}\tall\tf\t\\N\t\\N\n"]))
        t_index = time.perf_counter()
        for statement in deferred:
            cur.execute(statement)
        t_index = time.perf_counter() - t_index
        for table in TABLES:
            cur.execute(sql.SQL("SELECT setval(pg_get_serial_sequence({t}, 'id'), max(id)) FROM {i}").format(
                t=sql.Literal(table), i=sql.Identifier(table)))
        conn.commit()
        t_copy = time.perf_counter() - t1
        t2 = time.perf_counter()
        conn.autocommit = True
        for table in TABLES:
            cur.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))
        t_analyze = time.perf_counter() - t2
        (size,) = cur.execute("SELECT pg_database_size(current_database())").fetchone()
    info = {"generate_s": t_generate, "copy_s": t_copy, "index_s": t_index, "analyze_s": t_analyze,
            "total_s": time.perf_counter() - t0, "rows": copy.rows, "copy_table_s": copy.seconds,
            "database_bytes": size,
            "prompts": P, "units": n_units}
    return study_id, truth, info

