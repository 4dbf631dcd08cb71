"""An evaluator sets up a study through the web pages."""
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from annotation import services
from annotation.models import Candidate, Output, Prompt, Study, Unit
from tests.conftest import PROMPTS_CSV, imported_jsonl


def _create(client, data: bytes, filename: str = "prompts.csv", **extra):
    form = {"name": "My study", "overlap": 1, "max_new_tokens": 64, "temperature": 0.0, "seed": 0, **extra}
    form["prompts"] = SimpleUploadedFile(filename, data)
    return client.post(reverse("annotation:study_create"), form)


def test_an_evaluator_creates_a_study_from_a_csv(client, evaluator, annotators):
    client.force_login(evaluator)
    response = _create(client, PROMPTS_CSV, annotators=[a.pk for a in annotators])
    assert response.status_code == 302
    study = Study.objects.get()
    assert response["Location"] == reverse("annotation:study", args=[study.pk])
    prompts = list(study.prompts.order_by("position"))
    assert [p.external_id for p in prompts] == ["p1", "p2", "p3", "p4"]
    assert prompts[0].tags == ["account", "easy"]
    assert prompts[2].reference == "Yes within 30 days."
    assert study.generation_settings["max_new_tokens"] == 64
    assert study.members.filter(role="annotator").count() == 3


def test_a_bad_row_names_line_and_field_and_saves_nothing(client, evaluator):
    client.force_login(evaluator)
    bad = b"id,prompt\np1,Fine\np2,\np1,Duplicate\n"
    response = _create(client, bad)
    assert response.status_code == 400
    html = response.content.decode()
    assert "line 3" in html and "prompt" in html
    assert "duplicate id" in html and "line 4" in html
    assert "nothing was saved" in html
    assert Study.objects.count() == 0 and Prompt.objects.count() == 0


def test_a_jsonl_upload_with_a_broken_line_is_refused(client, evaluator):
    client.force_login(evaluator)
    bad = b'{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": \n'
    response = _create(client, bad, filename="p.jsonl")
    assert response.status_code == 400
    assert "line 2" in response.content.decode()
    assert Study.objects.count() == 0


def test_only_evaluators_can_create_studies(client, annotators):
    client.force_login(annotators[0])
    assert _create(client, PROMPTS_CSV).status_code == 403
    assert Study.objects.count() == 0


def test_anonymous_users_are_sent_to_sign_in(client):
    response = client.get(reverse("annotation:study_create"))
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_an_imported_candidate_gets_its_outputs_and_pairs(client, study_factory):
    study = study_factory(candidates=("alpha-model",))
    client.force_login(study.created_by)
    ids = list(study.prompts.values_list("external_id", flat=True))
    response = client.post(
        reverse("annotation:candidate_add", args=[study.pk]),
        {"name": "beta-model", "backend": "imported", "spec": "",
         "outputs": SimpleUploadedFile("o.jsonl", imported_jsonl({i: f"b {i}" for i in ids}))},
    )
    assert response.status_code == 302
    beta = Candidate.objects.get(study=study, name="beta-model")
    assert beta.outputs.filter(status=Output.Status.DONE).count() == 4
    assert study.units.count() == 4  # one pair per prompt


def test_imported_outputs_for_unknown_prompts_are_refused_whole(client, study_factory):
    study = study_factory(candidates=("alpha-model",))
    client.force_login(study.created_by)
    data = imported_jsonl({"p1": "ok", "nope": "bad"})
    response = client.post(
        reverse("annotation:candidate_add", args=[study.pk]),
        {"name": "beta-model", "backend": "imported", "spec": "", "outputs": SimpleUploadedFile("o.jsonl", data)},
    )
    assert response.status_code == 400
    assert "unknown prompt id" in response.content.decode() and "line 2" in response.content.decode()
    assert not Candidate.objects.filter(name="beta-model").exists()
    assert Output.objects.filter(candidate__study=study).count() == 4


def test_a_bad_candidate_spec_names_the_field(client, study_factory):
    study = study_factory(candidates=())
    client.force_login(study.created_by)
    response = client.post(
        reverse("annotation:candidate_add", args=[study.pk]),
        {"name": "api-model", "backend": "openai", "spec": '{"model": "x"}'},
    )
    assert response.status_code == 400
    assert "base_url" in response.content.decode()
    assert not Candidate.objects.filter(study=study).exists()


def test_the_api_key_itself_is_never_stored(client, study_factory):
    study = study_factory(candidates=())
    client.force_login(study.created_by)
    spec = '{"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "EVALSITE_KEY_MINE"}'
    response = client.post(reverse("annotation:candidate_add", args=[study.pk]),
                           {"name": "api-model", "backend": "openai", "spec": spec})
    assert response.status_code == 302
    assert Candidate.objects.get(name="api-model").spec["api_key_env"] == "EVALSITE_KEY_MINE"


def test_another_evaluators_study_is_not_found(client, study_factory, make_user):
    study = study_factory()
    other = make_user("mallory", staff=True)
    client.force_login(other)
    assert client.get(reverse("annotation:study", args=[study.pk])).status_code == 404
    assert client.get(reverse("annotation:study", args=[99999])).status_code == 404


def test_the_progress_fragment_counts_outputs_per_candidate(client, study_factory):
    study = study_factory(candidates=("alpha-model", "beta-model"))
    client.force_login(study.created_by)
    response = client.get(reverse("annotation:progress", args=[study.pk]), HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html
    assert 'data-candidate="alpha-model"' in html and "Generation finished" in html
    full = client.get(reverse("annotation:study", args=[study.pk]))
    assert "<html" in full.content.decode() and "progress-table" in full.content.decode()


def test_generation_start_refuses_get(client, study_factory):
    study = study_factory()
    client.force_login(study.created_by)
    assert client.get(reverse("annotation:generate", args=[study.pk])).status_code == 405


def test_more_prompts_can_be_added_but_not_twice(client, study_factory):
    study = study_factory(candidates=("alpha-model",))
    client.force_login(study.created_by)
    url = reverse("annotation:prompts_add", args=[study.pk])
    more = b"id,prompt,tags\np5,How do I change plan?,billing\n"
    assert client.post(url, {"prompts": SimpleUploadedFile("more.csv", more)}).status_code == 302
    assert study.prompts.count() == 5
    assert study.prompts.get(external_id="p5").tag_rows.get().tag == "billing"
    again = client.post(url, {"prompts": SimpleUploadedFile("more.csv", more)})
    assert again.status_code == 400 and "&#x27;p5&#x27; already exists" in again.content.decode()
    assert study.prompts.count() == 5


def test_retry_all_failed_requeues_only_failed_outputs(client, study_factory, evaluator):
    study = study_factory(candidates=("alpha-model",))
    cand = services.candidate_create(study=study, name="broken", backend="openai",
                                     spec={"base_url": "http://127.0.0.1:9/v1", "model": "m"})
    for p in study.prompts.all()[:2]:
        Output.objects.create(study=study, prompt=p, candidate=cand, status=Output.Status.FAILED, error="refused")
    client.force_login(evaluator)
    response = client.post(reverse("annotation:retry_failed", args=[study.pk]))
    assert response.status_code == 302
    queued = study.outputs.filter(status=Output.Status.QUEUED)
    assert queued.count() == 2
    assert len(set(queued.values_list("claim", flat=True))) == 1  # one batch for the candidate, not one per output
    assert study.outputs.filter(status=Output.Status.DONE).count() == 4


def test_pressing_start_generation_twice_queues_each_output_once(client, study_factory, evaluator):
    study = study_factory(candidates=("alpha-model",))
    services.candidate_create(study=study, name="remote", backend="openai",
                              spec={"base_url": "http://127.0.0.1:9/v1", "model": "m"})
    client.force_login(evaluator)
    url = reverse("annotation:generate", args=[study.pk])
    first = client.post(url, follow=True)
    assert "4 outputs queued for generation" in first.content.decode()
    second = client.post(url, follow=True)
    assert "0 outputs queued for generation" in second.content.decode()
    assert study.outputs.filter(status=Output.Status.QUEUED).count() == 4
    assert services.generation_start(study=study) == 0


def test_building_units_for_some_prompts_leaves_the_others_alone(study_factory):
    study = study_factory(candidates=("alpha-model", "beta-model"))
    Unit.objects.filter(study=study).delete()
    p1 = study.prompts.get(external_id="p1")
    assert services.units_build(study=study, prompt_ids=[p1.pk]) == 1
    assert list(Unit.objects.filter(study=study).values_list("prompt__external_id", flat=True)) == ["p1"]
    assert services.units_build(study=study) == 4
