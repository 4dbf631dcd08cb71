"""Reads that span relations, turned into plain data for templates and the API."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Avg, Count, DurationField, ExpressionWrapper, F, Q, Sum
from django.utils import timezone

from .models import Candidate, Invitation, Output, Prompt, Study, WorkerHeartbeat


@dataclass(frozen=True)
class CandidateProgress:
    candidate_id: int
    name: str
    backend: str
    total: int
    done: int
    failed: int
    running: int
    pending: int
    mean_latency_ms: float | None
    tokens: int
    cost: float | None
    stuck: int = 0  # running longer than the task time limit, or held by a worker that is gone
    expected: int = 0  # outputs the study asks of every candidate: prompts x samples per prompt
    prompts: int = 0  # the study's prompts
    prompts_covered: int = 0  # prompts with at least one finished output of this candidate
    missing_prompts: tuple[str, ...] = ()  # the first few prompts without one, when nothing is in flight
    hidden: bool = False  # hidden from new pairs

    @property
    def missing(self) -> int:
        return self.prompts - self.prompts_covered

    @property
    def missing_more(self) -> int:
        """Missing prompts beyond those named."""
        return max(0, self.missing - len(self.missing_prompts))


def workers_gone(now: datetime):
    """Worker starts that are over: stopped, replaced under their node name, or silent too long."""
    dead_after = timedelta(seconds=settings.EVALSITE_WORKER_DEAD_SECONDS)
    return WorkerHeartbeat.objects.filter(Q(stopped_at__isnull=False) | Q(beat_at__lt=now - dead_after))


def workers_alive(now: datetime | None = None) -> int:
    """How many worker processes have beaten within ``EVALSITE_WORKER_DEAD_SECONDS``."""
    dead_after = timedelta(seconds=settings.EVALSITE_WORKER_DEAD_SECONDS)
    now = now or timezone.now()
    return WorkerHeartbeat.objects.filter(stopped_at__isnull=True, beat_at__gte=now - dead_after).count()


def stuck_q(now: datetime, prefix: str = "") -> Q:
    """Outputs that are stuck: running for longer than the hard task time limit (the task was
    killed), or held (received or running) by a worker that is gone.  A live worker's sweep
    queues them again within a heartbeat or so (a minute past the limit, for clock skew); the
    page offers Retry meanwhile."""
    limit = timedelta(seconds=settings.EVALSITE_GENERATION_TIME_LIMIT)
    status, claimed_at, claimed_by = (f"{prefix}status", f"{prefix}claimed_at", f"{prefix}claimed_by")
    return (Q(**{status: Output.Status.RUNNING, f"{claimed_at}__lt": now - limit})) | (
        Q(**{f"{status}__in": [Output.Status.RUNNING, Output.Status.QUEUED]})
        & ~Q(**{claimed_by: ""})
        & Q(**{f"{claimed_by}__in": workers_gone(now).values("worker_id")})
    )


MISSING_SHOWN = 5


def generation_progress(study: Study) -> list[CandidateProgress]:
    """Per candidate: outputs by state, and coverage of the study's prompts.

    ``done / expected`` counts against every prompt of the study (times samples per
    prompt), so an imported file that covers 50 of 166 prompts reads 50 / 166; once
    nothing is queued or running for a candidate, the first few prompts it lacks are named.
    """
    now = timezone.now()
    n_prompts = study.prompts.count()
    stuck = stuck_q(now, prefix="outputs__")
    rows = (
        Candidate.objects.filter(study=study)
        .annotate(
            total=Count("outputs"),
            done=Count("outputs", filter=Q(outputs__status=Output.Status.DONE)),
            failed=Count("outputs", filter=Q(outputs__status=Output.Status.FAILED)),
            running=Count("outputs", filter=Q(outputs__status=Output.Status.RUNNING) & ~stuck),
            stuck=Count("outputs", filter=stuck),
            pending=Count("outputs", filter=Q(outputs__status__in=[Output.Status.PENDING, Output.Status.QUEUED])
                          & ~stuck),
            mean_latency=Avg("outputs__latency_ms", filter=Q(outputs__status=Output.Status.DONE)),
            tokens=Sum("outputs__completion_tokens"),
            cost=Sum("outputs__cost"),
            covered=Count("outputs__prompt", filter=Q(outputs__status=Output.Status.DONE), distinct=True),
        )
        .order_by("name")
    )
    result = []
    for c in rows:
        missing: tuple[str, ...] = ()
        idle = not (c.pending or c.running or c.stuck)
        if c.covered < n_prompts and idle and (c.total or c.backend == Candidate.Backend.IMPORTED):
            missing = _missing_prompts(study, c.pk)
        result.append(CandidateProgress(
            candidate_id=c.pk, name=c.name, backend=c.backend, total=c.total, done=c.done,
            failed=c.failed, running=c.running, pending=c.pending,
            mean_latency_ms=c.mean_latency, tokens=c.tokens or 0, cost=c.cost, stuck=c.stuck,
            expected=n_prompts * study.samples_per_prompt, prompts=n_prompts, prompts_covered=c.covered,
            missing_prompts=missing, hidden=c.hidden,
        ))
    return result


def _missing_prompts(study: Study, candidate_id: int) -> tuple[str, ...]:
    """The ids of the first prompts (in upload order) with no finished output of the candidate."""
    covered = Output.objects.filter(candidate_id=candidate_id, status=Output.Status.DONE).values("prompt_id")
    return tuple(
        Prompt.objects.filter(study=study).exclude(pk__in=covered).order_by("position")
        .values_list("external_id", flat=True)[:MISSING_SHOWN]
    )


def failed_outputs(study: Study, limit: int = 50):
    return list(
        Output.objects.filter(study=study, status=Output.Status.FAILED)
        .select_related("candidate", "prompt")
        .order_by("candidate__name", "prompt__position")[:limit]
    )


def stuck_outputs(study: Study, limit: int = 50):
    return list(
        Output.objects.filter(Q(study=study) & stuck_q(timezone.now()))
        .select_related("candidate", "prompt")
        .order_by("candidate__name", "prompt__position")[:limit]
    )


def generation_finished(progress: list[CandidateProgress]) -> bool:
    return bool(progress) and all(p.pending == 0 and p.running == 0 and p.stuck == 0 for p in progress)


def generation_pending(study_id: int) -> bool:
    """Whether any output of the study is still to be generated (one indexed EXISTS)."""
    return Output.objects.filter(
        study_id=study_id, status__in=[Output.Status.PENDING, Output.Status.QUEUED, Output.Status.RUNNING]
    ).exists()



def invitation_for_token(token: str) -> Invitation | None:
    """The invitation a link's token opens (with its study), or ``None``."""
    return Invitation.objects.select_related("study").filter(token_hash=Invitation.hash_token(token)).first()


def study_invitations(study: Study, limit: int = 50) -> list[Invitation]:
    """The study's newest invitations, each with ``state`` set ("open", or why it is not)."""
    now = timezone.now()
    invitations = list(Invitation.objects.filter(study=study).select_related("created_by")[:limit])
    for inv in invitations:
        inv.current_state = inv.state(now)
    return invitations


# --- quality: ties by rule, identity guard, annotator quality, judgments --------------


def rule_tie_count(study: Study) -> int:
    from .models import Unit

    return Unit.objects.filter(study=study, rule_tie=True).count()


def rule_ties(study: Study):
    """The pairs recorded as ties by rule, for a paginated list."""
    from .models import Unit

    return (Unit.objects.filter(study=study, rule_tie=True)
            .select_related("prompt", "cand_lo", "cand_hi", "output_a", "output_b").order_by("prompt__position", "pk"))


def rule_ties_per_pair(study: Study) -> list[tuple[str, str, int]]:
    """How many ties by rule each candidate pair has, most first (one grouped query)."""
    from .models import Unit

    names = dict(Candidate.objects.filter(study=study).values_list("pk", "name"))
    rows = (Unit.objects.filter(study=study, rule_tie=True).values_list("cand_lo", "cand_hi")
            .annotate(n=Count("id")).order_by("-n", "cand_lo", "cand_hi"))
    return [(names.get(lo, "?"), names.get(hi, "?"), n) for lo, hi, n in rows]


def candidate_pairs(study: Study) -> list[tuple[str, str]]:
    """Every pair of the study's candidates as (value "lo-hi", label), for the judgments filter."""
    from itertools import combinations

    cands = list(Candidate.objects.filter(study=study).order_by("name").values_list("pk", "name"))
    return [(f"{min(a, b)}-{max(a, b)}", f"{na} vs {nb}") for (a, na), (b, nb) in combinations(cands, 2)]


def identity_counts(study: Study) -> dict[str, int]:
    """How many finished outputs are in each state of the identity guard (one grouped query)."""
    rows = (Output.objects.filter(study=study, status=Output.Status.DONE)
            .values_list("identity").annotate(n=Count("id")))
    counts = {state: 0 for state in Output.Identity.values}
    counts.update(dict(rows))
    return counts


def identity_awaiting(study: Study) -> int:
    """Outputs that name a model or maker and wait for the evaluator's decision."""
    return Output.objects.filter(study=study, identity=Output.Identity.FLAGGED).count()


def identity_outputs(study: Study, state: str):
    """The study's outputs in one identity state (flagged, kept or excluded), for a paginated list."""
    return (Output.objects.filter(study=study, status=Output.Status.DONE, identity=state)
            .select_related("candidate", "prompt").order_by("prompt__position", "candidate__name", "sample_index"))


@dataclass(frozen=True)
class IdentityRow:
    output: Output
    snippets: list  # (before, match, after)


def identity_rows(study: Study, outputs, pattern) -> list[IdentityRow]:
    from . import identity

    rows = []
    for output in outputs:
        text = output.text or ""
        rows.append(IdentityRow(output=output, snippets=identity.snippets(text, identity.hits(text, pattern)[:10])))
    return rows


@dataclass(frozen=True)
class QualityRow:
    user_id: int
    name: str
    group: str
    excluded: bool
    stats: dict | None  # metrics.quality.AnnotatorQuality as stored by the worker; None: not in the snapshot
    # checks answered right and in all, the share with its Wilson interval, and whether it is under the
    # study's pass mark (read live: a new pass mark needs no recompute); None: no check answered
    gold: dict | None = None


@dataclass(frozen=True)
class QualityTable:
    """The quality page: live members beside the statistics the worker stored.

    ``computed_at`` is None while no snapshot exists (the page says the table is being
    computed); ``behind`` says the snapshot misses judgments, an exclusion or new thresholds.
    """

    rows: list[QualityRow]
    computed_at: datetime | None
    n_judgments: int
    behind: bool


def _thresholds():
    from metrics import quality

    return quality.Thresholds(
        speeding_seconds=settings.EVALSITE_SPEEDING_SECONDS,
        straightline_share=settings.EVALSITE_STRAIGHTLINE_SHARE / 100,
        straightline_run=settings.EVALSITE_STRAIGHTLINE_RUN,
        min_judgments=settings.EVALSITE_QUALITY_MIN_JUDGMENTS,
    )


def quality_thresholds() -> dict:
    """The flag thresholds in force, as stored with the statistics they produced."""
    from dataclasses import asdict

    return asdict(_thresholds())


def quality_marker(study_id: int) -> tuple[int, int]:
    """(count, newest id) of the study's pairwise judgments: the worker redoes the table when it moves."""
    from django.db.models import Max

    from .models import Judgment

    # pairwise judgments, and Likert answers to checks (they move the gold accuracy column)
    row = (Judgment.objects.filter(study_id=study_id).filter(~Q(outcome="") | Q(unit__is_gold=True))
           .aggregate(n=Count("id"), last=Max("id")))
    return row["n"], row["last"] or 0


def quality_stats(study: Study) -> dict[int, dict]:
    """Per annotator (user id): the statistics of :func:`metrics.quality.annotator_quality`
    over their pairwise judgments, as plain dicts (Likert judgments, which have no outcome,
    are left out).  Run by the aggregation worker; the page renders the stored dicts.

    Three reads: the members; every pairwise judgment's annotator, answer and times, in
    submission order (narrow columns, streamed); and the outcome counts of the units with at
    least three judgments, for agreement with peers.  Excluded annotators' votes do not make
    a majority; their own agreement is still measured against the others.  Judgments on gold
    units (known-answer and attention checks) count in every column but agreement: they
    make no majority and are not compared with one.
    """
    from dataclasses import asdict

    from metrics import quality

    from .models import Judgment, StudyMember

    members = list(StudyMember.objects.filter(study=study, role=StudyMember.Role.ANNOTATOR)
                   .values_list("user_id", "excluded"))
    excluded = {user_id for user_id, is_out in members if is_out}
    pairwise = Judgment.objects.filter(study=study).exclude(outcome="")
    answers: dict[int, list] = {}
    seconds: dict[int, list] = {}
    active: dict[int, list] = {}
    # the time on task is subtracted in SQL: one interval per row instead of two timestamps to parse
    took = ExpressionWrapper(F("submitted_at") - F("served_at"), output_field=DurationField())
    for user_id, outcome, left_is_a, duration, active_ms in (
            pairwise.order_by("annotator_id", "submitted_at", "pk").annotate(took=took)
            .values_list("annotator_id", "outcome", "left_is_a", "took", "active_ms")
            .iterator(chunk_size=5000)):
        answers.setdefault(user_id, []).append(_screen_choice(outcome, left_is_a))
        seconds.setdefault(user_id, []).append(duration.total_seconds())
        active.setdefault(user_id, []).append(active_ms / 1000 if active_ms is not None else None)
    peer = pairwise.filter(unit__is_gold=False)
    multi = (peer.values("unit_id").annotate(n=Count("id")).filter(n__gte=quality.MIN_PEER_JUDGMENTS)
             .values("unit_id"))
    unit_votes: dict[int, dict] = {}
    own_votes: dict[int, dict] = {}
    for unit_id, user_id, outcome in peer.filter(unit_id__in=multi).values_list("unit_id", "annotator_id",
                                                                                 "outcome"):
        own_votes.setdefault(user_id, {})[unit_id] = outcome
        if user_id not in excluded:
            votes = unit_votes.setdefault(unit_id, {})
            votes[outcome] = votes.get(outcome, 0) + 1
    thresholds = _thresholds()
    from .checks import check_accuracy

    checked = check_accuracy(study)  # answers to gold items and attention checks, right and in all
    stats = {}
    for user_id, _ in members:
        agree, compared = quality.peer_agreement(own_votes.get(user_id, {}), unit_votes,
                                                 own_in_votes=user_id not in excluded)
        row = quality.annotator_quality(answers.get(user_id, []), seconds.get(user_id, []),
                                        active.get(user_id, []), agree, compared, thresholds,
                                        describe=_CHOICE_WORDS.get)
        right, answered = checked.get(user_id, (0, 0))
        stats[user_id] = {**asdict(row), "flags": list(row.flags), "gold_right": right, "gold_answered": answered}
    return stats


def quality_table(study: Study, *, pseudonymize: bool = False) -> QualityTable:
    """The quality page's rows: the members read live (names, groups, excluded flags, so an
    exclusion shows at once) and the statistics from the worker's snapshot.  Three reads
    whatever the number of judgments: the members, the snapshot, the refresh marker."""
    from arena.models import RatingRequest, RatingSnapshot
    from arena.selectors import ALL
    from arena.services import QUALITY

    from .api.selectors import pseudonym
    from .models import StudyMember

    members = list(StudyMember.objects.filter(study=study, role=StudyMember.Role.ANNOTATOR)
                   .select_related("user").order_by("user__username"))
    snapshot = RatingSnapshot.objects.filter(study=study, slice_key=ALL, method=QUALITY).first()
    request = RatingRequest.objects.filter(study=study, slice_key=ALL).first()
    stored = snapshot.payload.get("annotators", {}) if snapshot else {}
    rows = [QualityRow(user_id=m.user_id, group=m.group, excluded=m.excluded, stats=stored.get(str(m.user_id)),
                       name=pseudonym(study.pk, m.user_id) if pseudonymize else m.user.get_username(),
                       gold=_gold_cell(stored.get(str(m.user_id)), study.gold_pass))
            for m in members]
    if snapshot is None:
        return QualityTable(rows=rows, computed_at=None, n_judgments=0, behind=True)
    # Pending, or claimed by a worker that has not confirmed the table since: O(1), no count.
    waiting = bool(request and (request.pending or (request.started_at and snapshot.computed_at < request.started_at)))
    behind = (waiting or snapshot.study_version != study.version
              or snapshot.payload.get("thresholds") != quality_thresholds())
    computed = snapshot.payload.get("computed_at")
    return QualityTable(rows=rows, computed_at=datetime.fromisoformat(computed) if computed else snapshot.computed_at,
                        n_judgments=snapshot.n_judgments, behind=behind)


def _gold_cell(stats: dict | None, pass_percent: int) -> dict | None:
    from metrics import gold

    if not stats or not stats.get("gold_answered"):
        return None
    right, answered = stats["gold_right"], stats["gold_answered"]
    share = gold.accuracy(right, answered)
    return {"right": right, "answered": answered, "percent": round(100 * share.share),
            "lower": round(100 * share.lower), "upper": round(100 * share.upper),
            "below": gold.below_pass(right, answered, pass_percent / 100)}


_CHOICE_WORDS = {"left": "left is better", "right": "right is better", "tie": "tie", "both_bad": "both bad"}


def _screen_choice(outcome: str, left_is_a: bool) -> str:
    """The button the annotator pressed (left/right/tie/both bad), from the stored outcome."""
    if outcome == "a":
        return "left" if left_is_a else "right"
    if outcome == "b":
        return "right" if left_is_a else "left"
    return outcome


def judgments_list(study: Study, *, pair: tuple[int, int] | None = None, annotator_id: int | None = None):
    """The study's judgments, newest first, with what a reader of rationales needs beside each."""
    from .models import Judgment

    qs = Judgment.objects.filter(study=study)
    if pair is not None:
        qs = qs.filter(unit__cand_lo_id=min(pair), unit__cand_hi_id=max(pair))
    if annotator_id is not None:
        qs = qs.filter(annotator_id=annotator_id)
    return (qs.select_related("annotator", "unit__prompt", "unit__cand_lo", "unit__cand_hi")
            .only("outcome", "left_is_a", "rationale", "served_at", "submitted_at", "active_ms", "annotator__username",
                  "unit__a_is_lo", "unit__kind", "unit__prompt__external_id", "unit__cand_lo__name",
                  "unit__cand_hi__name")
            .order_by("-submitted_at", "-pk"))


SKIPS_SHOWN = 50


def skip_summary(study: Study) -> dict:
    """Skipped tasks for the judgments page: how many per reason, per candidate (a pair's skip
    counts for both of its candidates) and per reason, and the latest ones with their words."""
    from .models import Skip

    labels = dict(Skip.Reason.choices)
    skips = Skip.objects.filter(study=study)
    by_reason = dict(skips.values_list("reason").annotate(n=Count("id")).values_list("reason", "n"))
    per_candidate: dict[int, dict[str, int]] = {}
    for field in ("unit__cand_lo", "unit__cand_hi"):
        for cand, reason, n in (skips.exclude(**{f"{field}__isnull": True}).values_list(field, "reason")
                                .annotate(n=Count("id")).values_list(field, "reason", "n")):
            row = per_candidate.setdefault(cand, {})
            row[reason] = row.get(reason, 0) + n
    names = dict(Candidate.objects.filter(study=study).values_list("pk", "name"))
    candidates = sorted(
        ({"name": names.get(cand, "?"), "total": sum(row.values()), "counts": [row.get(r, 0) for r in labels]}
         for cand, row in per_candidate.items()), key=lambda c: (-c["total"], c["name"]))
    latest = list(skips.select_related("unit__prompt", "unit__cand_lo", "unit__cand_hi", "annotator")
                  .order_by("-skipped_at", "-id")[:SKIPS_SHOWN])
    return {"total": sum(by_reason.values()), "reasons": [(labels[r], by_reason.get(r, 0)) for r in labels],
            "candidates": candidates, "latest": latest}
