"""Generation through a real Celery worker process, on the configured broker and database."""
import pytest
from django.urls import reverse

from annotation import markdown, services
from annotation.models import Output, Unit
from annotation.tasks import generate_outputs
from tests.conftest import PROMPTS_CSV, WORKER_API_KEY, WORKER_KEY_ENV, wait_for
from tests.helpers.fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.django_db(transaction=True)


def _study(evaluator, annotators, **settings):
    return services.study_create(
        name="Worker study", created_by=evaluator, prompts_data=PROMPTS_CSV, prompts_filename="p.csv",
        generation_settings={"max_new_tokens": 12, "temperature": 0.0, "seed": 7, **settings},
        annotators=annotators,
    )


def _finished(study):
    return not study.outputs.filter(status__in=[Output.Status.PENDING, Output.Status.QUEUED, Output.Status.RUNNING]).exists()


def test_a_worker_generates_with_transformers_models(celery_worker_process, tiny_models, evaluator, annotators):
    study = _study(evaluator, annotators)
    services.candidate_create(study=study, name="tiny-causal", backend="transformers",
                              spec={"model": tiny_models["causal"], "batch_size": 3})
    services.candidate_create(study=study, name="tiny-seq2seq", backend="transformers",
                              spec={"model": tiny_models["seq2seq"], "price_per_1k_input": 0.5,
                                    "price_per_1k_output": 1.5})
    assert services.generation_start(study=study) == 8
    wait_for(lambda: _finished(study), what="transformers generation", worker=celery_worker_process)
    outputs = list(study.outputs.select_related("candidate", "prompt"))
    assert len(outputs) == 8
    assert all(o.status == Output.Status.DONE for o in outputs), [o.error for o in outputs]
    for o in outputs:
        assert o.latency_ms > 0 and o.prompt_tokens > 0 and 0 < o.completion_tokens <= 12
        assert o.seed == 7 + o.prompt.position and o.settings["max_new_tokens"] == 12  # a seed per prompt
        if o.candidate.name == "tiny-seq2seq":
            assert o.cost == pytest.approx((o.prompt_tokens * 0.5 + o.completion_tokens * 1.5) / 1000)
        else:
            assert o.cost is None
    # the worker builds the units right after it records a batch's outputs, in its own statements
    # (a batch of another candidate may commit in between), so they can trail the last output
    wait_for(lambda: Unit.objects.filter(study=study).count() == 4, what="units built by the worker",
             worker=celery_worker_process)
    assert Unit.objects.filter(study=study).count() == 4  # one pair per prompt, never more


def test_a_worker_generates_from_an_openai_compatible_server(celery_worker_process, evaluator, annotators):
    # the worker process was started with WORKER_KEY_ENV (an allowed name) in its environment
    with FakeOpenAIServer(fail_first=1, fail_status=500, require_token=WORKER_API_KEY) as server:
        study = _study(evaluator, annotators)
        services.candidate_create(study=study, name="served", backend="openai", spec={
            "base_url": server.base_url, "model": "served-7b", "api_key_env": WORKER_KEY_ENV,
            "max_retries": 3, "backoff_s": 0.05,
            "max_concurrency": 2, "price_per_1k_input": 1.0, "price_per_1k_output": 2.0,
        })
        services.generation_start(study=study)
        wait_for(lambda: _finished(study), what="openai generation", worker=celery_worker_process)
        outputs = list(study.outputs.select_related("prompt").order_by("prompt__position"))
        assert [o.status for o in outputs] == ["done"] * 4, [o.error for o in outputs]
        first = outputs[0]
        assert first.text == "echo: How do I reset my password? (model served-7b)"
        # the worker stores each text's sanitised HTML with it: the annotate page prints that
        assert all(o.html == markdown.render(o.text) and o.html.startswith("<p>") for o in outputs)
        assert first.completion_tokens == 9 and first.prompt_tokens == 6  # words, as the server counts
        assert first.cost == pytest.approx((6 * 1.0 + 9 * 2.0) / 1000)
        assert server.request_count == 5  # four prompts plus one retried 500
        assert server.max_in_flight <= 2
        assert all(h.get("Authorization", h.get("authorization")) == f"Bearer {WORKER_API_KEY}"
                   for h in server.headers)
        assert WORKER_API_KEY not in str(study.candidates.get().spec)


def test_a_failed_output_shows_its_error_and_can_be_retried(celery_worker_process, evaluator, annotators, client,
                                                            tmp_path):
    study = _study(evaluator, annotators)
    # a directory that passes the web's check (it holds a config.json) but is no model
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    services.candidate_create(study=study, name="broken", backend="transformers", spec={"model": str(broken)})
    services.generation_start(study=study)
    wait_for(lambda: _finished(study), what="failure", worker=celery_worker_process)
    failed = list(study.outputs.filter(status=Output.Status.FAILED))
    assert len(failed) == 4 and "cannot load a model config" in failed[0].error and "broken-model" in failed[0].error
    client.force_login(evaluator)
    html = client.get(reverse("annotation:progress", args=[study.pk])).content.decode()
    assert "cannot load a model config" in html and "Retry" in html
    # the model is put in place; a retry re-queues the output, which the worker now generates
    import shutil

    from annotation.generation.tiny_models import build_tiny_model

    shutil.rmtree(broken)
    build_tiny_model(broken, kind="causal", seed=3)
    response = client.post(reverse("annotation:output_retry", args=[study.pk, failed[0].pk]))
    assert response.status_code == 302
    wait_for(lambda: Output.objects.get(pk=failed[0].pk).status == Output.Status.DONE, what="retry",
             worker=celery_worker_process)
    assert Output.objects.get(pk=failed[0].pk).error == ""


def test_running_the_same_task_twice_writes_no_duplicate(evaluator, annotators, tiny_models):
    study = _study(evaluator, annotators)
    cand = services.candidate_create(study=study, name="tiny", backend="transformers",
                                     spec={"model": tiny_models["causal"]})
    Output.objects.bulk_create([Output(study=study, prompt=p, candidate=cand, seed=7) for p in study.prompts.all()])
    ids = list(study.outputs.values_list("pk", flat=True))
    # a task killed halfway: its claim holds two outputs, still "running"
    services.generation_claim(output_ids=ids[:2], claim="task-1")
    assert generate_outputs.apply(args=[cand.pk, ids], task_id="task-1").get() == 4
    texts = dict(study.outputs.values_list("pk", "text"))
    assert generate_outputs.apply(args=[cand.pk, ids], task_id="task-1").get() == 0  # redelivered
    assert generate_outputs.apply(args=[cand.pk, ids], task_id="task-2").get() == 0  # enqueued twice
    assert study.outputs.count() == 4
    assert dict(study.outputs.values_list("pk", "text")) == texts
    assert set(study.outputs.values_list("attempts", flat=True)) == {1, 2}
    # pressing "Start generation" again creates and queues nothing new
    assert services.generation_start(study=study) == 0
    assert study.outputs.count() == 4
