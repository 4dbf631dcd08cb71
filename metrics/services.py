"""Every state change of metric runs: start, retry, and the body of the run's task."""
from __future__ import annotations

import hashlib
import json
import math
import zlib
from datetime import timedelta

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from annotation.generation import base as generation_base
from annotation.models import Candidate, Output, PromptTag, Study
from annotation.services import ServiceError, spec_policy

from . import text
from .models import CandidateScore, MetricRun, OutputScore, SummaryBudget
from .result import mean_interval

# Corpus-level metrics: one number per set of outputs, no per-output score (sacrebleu).
CORPUS_METRICS = frozenset({"bleu", "chrf"})
# Metrics that load a model: they run on the generation queue (the machines with the models).
MODEL_METRICS = frozenset({"bertscore", "perplexity", "nli", "hallucination_rate"})
# Of those, the ones with no default model (bertscore has the shipped all-MiniLM-L6-v2).
NEEDS_MODEL = MODEL_METRICS - {"bertscore"}
# Image metrics (text-to-image studies): over the outputs that have an image.  FID, KID and the
# Inception Score are per candidate (and slice), CLIP Score per image against its prompt's text,
# CLIP retrieval per image against every prompt of the study (a hit when its own is in the top K).
IMAGE_METRICS = ("fid", "kid", "clip_score", "inception_score", "clip_retrieval")
SET_METRICS = frozenset({"fid", "kid", "inception_score"})
# Metrics where a lower value is the better one (every other metric: higher is better).  The one
# place that says so: runs store it in their config, the summary sorts and labels columns by it.
LOWER_IS_BETTER = frozenset({"fid", "kid", "perplexity", "hallucination_rate"})


def better(metric: str) -> str:
    """"lower" or "higher": which direction of ``metric`` is the better one."""
    return "lower" if metric in LOWER_IS_BETTER else "higher"


# What a metric reports about the items of one call (one batch of a run), not its configuration:
# counts, and the bootstrap of that call (a run draws its intervals later, per candidate and slice).
BATCH_COUNTS = ("scored_tokens", "truncated_items", "bootstrap")
AGGREGATE = ("per candidate and slice: mean of the per-output values, "
             "95% percentile bootstrap interval over outputs (1000 resamples)")
PERPLEXITY_AGGREGATE = ("per candidate and slice: token-weighted corpus perplexity exp(sum of the outputs' token "
                        "NLL / sum of their scored tokens), 95% percentile bootstrap interval over outputs "
                        "(1000 resamples of outputs, the ratio recomputed); per output: exp(mean token NLL)")
# The text metrics with optional settings, and their defaults: filled in before the
# options are hashed, so leaving an option out and giving its default are the same run.
TEXT_OPTION_DEFAULTS = {
    "nli": {"premise": text.DEFAULT_NLI_PREMISE},
    "hallucination_rate": {"premise": text.DEFAULT_NLI_PREMISE, "threshold": text.DEFAULT_NLI_THRESHOLD},
}
BATCH_SIZE = 64
ERROR_LIMIT = generation_base.ERROR_TEXT_LIMIT


def metric_queue(metric: str) -> str:
    """The queue a metric's run goes to: models on ``generation``, the light ones on ``aggregation``."""
    heavy = metric in MODEL_METRICS or metric in IMAGE_METRICS
    return settings.QUEUE_GENERATION if heavy else settings.QUEUE_AGGREGATION


def _options_hash(options: dict) -> str:
    return hashlib.sha256(json.dumps(options, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _clean_options(metric: str, options: dict | None, *, on_worker: bool = False, study_id: int | None = None) -> dict:
    """The options a metric takes, checked: a model path must lie in a model root (the same
    policy candidate specs follow, EVALSITE_MODEL_ROOTS) and is required by the model metrics
    without a default; a threshold lies in [0, 1]."""
    options = dict(options or {})
    if metric in IMAGE_METRICS:
        from .image_runs import clean_image_options

        return clean_image_options(metric, options, on_worker=on_worker, study_id=study_id)
    unknown = set(options) - {"model", "threshold", "premise"}
    if unknown:
        raise ServiceError(f"unknown metric options: {', '.join(sorted(unknown))}")
    clean: dict = {}
    model = options.get("model")
    if model not in (None, ""):
        if metric not in MODEL_METRICS:
            raise ServiceError(f"{metric} takes no model; only {', '.join(sorted(MODEL_METRICS))} do")
        if not isinstance(model, str):
            raise ServiceError("model: a path to a local model directory")
        try:
            generation_base.check_model_dir("model", model, spec_policy(), marker="config.json", on_worker=on_worker)
        except generation_base.BackendError as exc:
            raise ServiceError(f"{metric}: {exc}") from None
        clean["model"] = model
    elif metric in NEEDS_MODEL:
        raise ServiceError(f"{metric} needs a model: the path of a local model directory inside a model root "
                           "(EVALSITE_MODEL_ROOTS)")
    threshold = options.get("threshold")
    if threshold is not None:
        if metric != "hallucination_rate":
            raise ServiceError(f"{metric} takes no threshold; only hallucination_rate does")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise ServiceError("threshold: a number from 0 to 1")
        clean["threshold"] = float(threshold)
    premise = options.get("premise")
    if premise not in (None, ""):
        if metric not in TEXT_OPTION_DEFAULTS:
            raise ServiceError(f"{metric} takes no premise; only nli and hallucination_rate do")
        try:
            clean["premise"] = text.check_premise(premise)
        except ValueError as exc:
            raise ServiceError(str(exc)) from None
    return {**TEXT_OPTION_DEFAULTS.get(metric, {}), **clean}


def _enqueue(run: MetricRun) -> None:
    from .tasks import compute_metric_run

    transaction.on_commit(lambda: compute_metric_run.apply_async(args=[run.pk], queue=metric_queue(run.metric)))


def metric_run_start(*, study: Study, metric: str, options: dict | None = None, actor=None) -> MetricRun:
    """Start (or start again) a metric over the study's finished outputs; one task is queued.

    The same metric with the same options reuses its run: a finished or failed run is queued
    again and its task scores only the outputs that have no score yet; a queued or running
    one is left as it is (its task will find the new outputs too, or the next start will).
    """
    if metric not in text.TEXT_METRICS and metric not in IMAGE_METRICS:
        raise ServiceError(f"unknown metric {metric!r}; use one of {', '.join((*text.TEXT_METRICS, *IMAGE_METRICS))}")
    options = _clean_options(metric, options, study_id=study.pk)
    with transaction.atomic():
        run, created = MetricRun.objects.select_for_update().get_or_create(
            study=study, metric=metric, options_hash=_options_hash(options),
            defaults={"options": options, "created_by": actor if actor and actor.is_authenticated else None},
        )
        if created:
            _enqueue(run)
        elif run.status in (MetricRun.Status.DONE, MetricRun.Status.FAILED):
            MetricRun.objects.filter(pk=run.pk).update(status=MetricRun.Status.QUEUED, error="", claim="",
                                                       finished_at=None)
            run.refresh_from_db()
            _enqueue(run)
    return run


def _retryable() -> Q:
    """The one rule for which runs can be retried: failed ones, and running ones started longer
    ago than the task time limit (a worker died, or the broker lost the message)."""
    stale_before = timezone.now() - timedelta(seconds=settings.EVALSITE_GENERATION_TIME_LIMIT)
    return Q(status=MetricRun.Status.FAILED) | Q(status=MetricRun.Status.RUNNING, started_at__lt=stale_before)


def metric_runs_retryable(study: Study) -> set[int]:
    """Ids of the study's runs that :func:`metric_run_retry` would accept now."""
    return set(MetricRun.objects.filter(_retryable(), study=study).values_list("pk", flat=True))


def skipped_reason(metric: str, options: dict) -> str:
    """Why a run leaves a finished output out (what ``n_skipped`` counts), in words for the page."""
    if metric in IMAGE_METRICS:
        return "they have no image"
    if metric == "perplexity":
        return "they have no text"
    if options.get("premise") == "prompt":
        return ""  # every output has a prompt to be checked against
    return "their prompt has no reference"


def metric_run_retry(*, run: MetricRun, actor=None) -> MetricRun:
    """Queue a failed run again (or one left running past the task time limit by a worker that died)."""
    with transaction.atomic():
        updated = MetricRun.objects.filter(_retryable(), pk=run.pk).update(
            status=MetricRun.Status.QUEUED, error="", claim="", finished_at=None)
        if not updated:
            raise ServiceError("only a failed run (or one stuck past the task time limit) can be retried")
        run.refresh_from_db()
        _enqueue(run)
    return run


def _rng(run_id: int, *parts) -> np.random.Generator:
    """A generator seeded from the run id and what is being computed, so a recomputation
    gives the same interval whatever order it happens in."""
    return np.random.default_rng([run_id, *(zlib.crc32(str(p).encode()) for p in parts)])


def _finite(x) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _outputs(run: MetricRun):
    return Output.objects.filter(study_id=run.study_id, status=Output.Status.DONE)


def _scorable(run: MetricRun):
    """The finished outputs the metric can score (:func:`skipped_reason` says why the others are not):
    those with an image for image metrics, with text for perplexity, and with a reference for the
    metrics that compare with one (NLI with the prompt as premise takes every output)."""
    outputs = _outputs(run)
    if run.metric in IMAGE_METRICS:
        return outputs.exclude(image="")
    if run.metric == "perplexity":
        return outputs.exclude(text="")
    if _premise_is_prompt(run):
        return outputs
    return outputs if run.metric not in text.NEEDS_REFERENCE else outputs.exclude(prompt__reference="")


def _premise_is_prompt(run: MetricRun) -> bool:
    return run.metric in TEXT_OPTION_DEFAULTS and run.options.get("premise") == "prompt"


def metric_run_execute(*, run_id: int, claim: str) -> str:
    """The body of the run's task: claim the run, score what is missing, then the aggregates.

    The claim is a conditional UPDATE (queued -> running); a second delivery of the same
    message finds nothing queued and does nothing, unless it is a redelivery of the same task
    id after its worker died (the claim is that id).  Scores are written under their unique
    constraints and the aggregates are recomputed from the stored rows, never incremented.
    """
    now = timezone.now()
    claimed = MetricRun.objects.filter(
        Q(status=MetricRun.Status.QUEUED) | Q(status=MetricRun.Status.RUNNING, claim=claim), pk=run_id,
    ).update(status=MetricRun.Status.RUNNING, claim=claim, started_at=now)
    if not claimed:
        return "not claimed"
    run = MetricRun.objects.get(pk=run_id)
    try:
        _score(run)
        _aggregate(run)
    except Exception as exc:  # any failure of a metric library ends the run failed, with its reason
        policy = spec_policy()
        model = f" with the model {run.options['model']}" if run.options.get("model") else ""
        error = generation_base.scrub_error(f"{run.metric}{model} failed: {type(exc).__name__}: {exc}",
                                            generation_base.environment_secrets(policy), limit=ERROR_LIMIT)
        MetricRun.objects.filter(pk=run_id, claim=claim).update(
            status=MetricRun.Status.FAILED, error=error, finished_at=timezone.now())
        return "failed"
    if MetricRun.objects.filter(pk=run_id, claim=claim).update(status=MetricRun.Status.DONE,
                                                                finished_at=timezone.now()):
        from arena.services import ratings_request

        ratings_request(study_id=run.study_id)  # the summary shows finished runs
    return "done"


def _options_for_compute(run: MetricRun) -> dict:
    # the worker checks the model path again under its own policy before loading anything
    return _clean_options(run.metric, run.options, on_worker=True, study_id=run.study_id)


def _score(run: MetricRun) -> None:
    """Item-level metrics: score, in batches, the finished outputs with a reference and no score yet."""
    with_ref = _scorable(run)
    n_total = with_ref.count()
    n_skipped = _outputs(run).count() - n_total
    MetricRun.objects.filter(pk=run.pk).update(n_total=n_total, n_skipped=n_skipped)
    if run.metric in IMAGE_METRICS:
        from .image_runs import score_images

        return score_images(run, with_ref)
    if run.metric in CORPUS_METRICS:
        MetricRun.objects.filter(pk=run.pk).update(n_done=n_total)
        return
    options = _options_for_compute(run)
    if run.metric == "perplexity":
        # scores from before the NLL sums and token counts were kept: scored again, so that every
        # candidate's corpus perplexity is made of the same figures
        OutputScore.objects.filter(run=run, tokens__isnull=True).delete()
    scored = OutputScore.objects.filter(run=run).values("output_id")
    premise = "prompt__text" if _premise_is_prompt(run) else "prompt__reference"
    missing = list(with_ref.exclude(pk__in=scored).order_by("pk").values_list("pk", "text", premise))
    for start in range(0, len(missing), BATCH_SIZE):
        batch = missing[start:start + BATCH_SIZE]
        texts = [t for _, t, _ in batch]
        if run.metric == "perplexity":
            nlls, counts, config = text.perplexity_items(texts, **options)
            rows = [OutputScore(run=run, output_id=pk, value=_finite(text.item_perplexity(nll, count)),
                                nll=_finite(nll), tokens=count) for (pk, _, _), nll, count in zip(batch, nlls, counts)]
        else:
            # per-item values only: the interval is drawn later over all of a candidate's items
            references = [r for _, _, r in batch] if run.metric in text.NEEDS_REFERENCE else None
            result = text.compute(run.metric, texts, references, rng=_rng(run.pk, "batch", batch[0][0]), rounds=1,
                                  **options)
            config = result.config
            values = result.per_item if result.per_item is not None else ()
            if len(values) != len(batch):
                raise RuntimeError(f"{run.metric} returned {len(values)} item scores for {len(batch)} outputs")
            rows = [OutputScore(run=run, output_id=pk, value=_finite(v)) for (pk, _, _), v in zip(batch, values)]
        OutputScore.objects.bulk_create(rows, ignore_conflicts=True)
        MetricRun.objects.filter(pk=run.pk).update(
            config=_run_config(config, run.metric), n_done=OutputScore.objects.filter(run=run).count())
    MetricRun.objects.filter(pk=run.pk).update(n_done=OutputScore.objects.filter(run=run).count())


def _run_config(config: dict, metric: str | None = None) -> dict:
    """What an item-level run stores: the metric's configuration, less the counts of the one batch
    it came with (a later batch would overwrite them), how the candidates' scores are made and,
    given the metric, which direction is better."""
    out = {**{k: v for k, v in config.items() if k not in BATCH_COUNTS},
           "aggregate": PERPLEXITY_AGGREGATE if metric == "perplexity" else AGGREGATE}
    if metric is not None:
        out["better"] = better(metric)
    return out


def _slices(run: MetricRun) -> dict[str, set[int] | None]:
    """``all`` and one slice per prompt tag of the study: slice key -> prompt ids (None: every prompt)."""
    slices: dict[str, set[int] | None] = {"all": None}
    for prompt_id, tag in PromptTag.objects.filter(study_id=run.study_id).values_list("prompt_id", "tag"):
        slices.setdefault(f"tag:{tag}", set()).add(prompt_id)
    return slices


def _aggregate(run: MetricRun) -> None:
    """Recompute every candidate's score for ``all`` and each tag, from the stored rows."""
    rows = []
    slices = _slices(run)
    candidates = list(Candidate.objects.filter(study_id=run.study_id).values_list("pk", flat=True))
    if run.metric in SET_METRICS:
        from .image_runs import aggregate_image_sets

        rows = aggregate_image_sets(run, _options_for_compute(run), _scorable(run), slices, candidates)
    elif run.metric in CORPUS_METRICS:
        options = _options_for_compute(run)
        items = list(_scorable(run).order_by("pk")
                     .values_list("candidate_id", "prompt_id", "text", "prompt__reference"))
        config = run.config
        for cand in candidates:
            for key, prompts in slices.items():
                chosen = [(t, r) for c, p, t, r in items if c == cand and (prompts is None or p in prompts)]
                if not chosen:
                    continue
                result = text.compute(run.metric, [t for t, _ in chosen], [r for _, r in chosen],
                                      rng=_rng(run.pk, cand, key), **options)
                config = result.config
                rows.append(CandidateScore(run=run, candidate_id=cand, slice_key=key, value=_finite(result.value),
                                           lower=_finite(result.lower), upper=_finite(result.upper), n=result.n))
        MetricRun.objects.filter(pk=run.pk).update(config=config)
    elif run.metric == "perplexity":
        items = list(OutputScore.objects.filter(run=run, value__isnull=False, tokens__gt=0)
                     .values_list("output__candidate_id", "output__prompt_id", "nll", "tokens"))
        for cand in candidates:
            for key, prompts in slices.items():
                chosen = [(nll, n) for c, p, nll, n in items if c == cand and (prompts is None or p in prompts)]
                if not chosen:
                    continue
                value, lower, upper = text.corpus_perplexity([nll for nll, _ in chosen], [n for _, n in chosen],
                                                             rng=_rng(run.pk, cand, key))
                rows.append(CandidateScore(run=run, candidate_id=cand, slice_key=key, value=_finite(value),
                                           lower=_finite(lower), upper=_finite(upper), n=len(chosen)))
    else:
        scores = list(OutputScore.objects.filter(run=run, value__isnull=False)
                      .values_list("output__candidate_id", "output__prompt_id", "value"))
        for cand in candidates:
            for key, prompts in slices.items():
                values = [v for c, p, v in scores if c == cand and (prompts is None or p in prompts)]
                if not values:
                    continue
                lower, upper = mean_interval(values, _rng(run.pk, cand, key))
                rows.append(CandidateScore(run=run, candidate_id=cand, slice_key=key,
                                           value=float(np.mean(values)), lower=_finite(lower),
                                           upper=_finite(upper), n=len(values)))
    with transaction.atomic():
        CandidateScore.objects.filter(run=run).delete()
        CandidateScore.objects.bulk_create(rows)
        # every run's configuration says which direction is better (the page and the summary read it)
        config = MetricRun.objects.filter(pk=run.pk).values_list("config", flat=True).get()
        MetricRun.objects.filter(pk=run.pk).update(config={**config, "better": better(run.metric)})


def summary_budget_set(*, study: Study, max_cost_per_1000: float | None, max_latency_p95_ms: float | None,
                       actor=None) -> SummaryBudget:
    """Set the cost and latency budget of a study's summary recommendation (None: no limit)."""
    budget, _ = SummaryBudget.objects.update_or_create(
        study=study, defaults={"max_cost_per_1000": max_cost_per_1000, "max_latency_p95_ms": max_latency_p95_ms,
                               "updated_by": actor})
    return budget
