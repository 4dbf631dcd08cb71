"""What a candidate spec may ask of the shared workers: each refusal, with its setting off and on.

In-process tests change the web's settings with pytest-django's ``settings`` fixture. The
worker tests use the real Celery worker of tests/conftest.py, whose environment holds the
default policy with pytest's base temporary directory as its one model root; the web side
is set differently where a test needs the two to disagree.
"""
import os
from pathlib import Path

import pytest
from django.db import transaction
from django.urls import reverse

from annotation import services
from annotation.generation import BackendError, SpecPolicy, validate_spec
from annotation.generation.openai_backend import url_allowed
from annotation.generation.tiny_models import build_tiny_model
from annotation.generation.transformers_backend import load_model
from annotation.models import Candidate, Output
from tests.conftest import PROMPTS_CSV, wait_for
from tests.helpers.fake_openai import FakeOpenAIServer

ENDPOINT = {"base_url": "http://127.0.0.1:9/v1", "model": "m"}


def _study(evaluator):
    return services.study_create(name="Policy", created_by=evaluator, prompts_data=PROMPTS_CSV,
                                 prompts_filename="p.csv", generation_settings={"max_new_tokens": 6})


def add(study, backend, spec, name="cand"):
    return services.candidate_create(study=study, name=name, backend=backend, spec=spec)


def refusal(study, backend, spec) -> str:
    """The message a refused candidate gets; nothing is written."""
    with pytest.raises(services.ServiceError) as caught:
        add(study, backend, spec)
    assert not study.candidates.exists()
    return str(caught.value)


@pytest.fixture
def study(db, evaluator):
    return _study(evaluator)


def model_dir(path: Path) -> str:
    """A directory that looks like a saved model to the existence check (config.json)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return str(path)


# --- api_key_env ----------------------------------------------------------------------


def test_a_key_variable_outside_the_allowed_names_is_refused_naming_the_setting(study):
    message = refusal(study, "openai", {**ENDPOINT, "api_key_env": "DATABASE_URL"})
    assert message == (
        "candidate 'cand': api_key_env: DATABASE_URL is not an allowed key variable; "
        "the operator allows EVALSITE_KEY_* (setting EVALSITE_API_KEY_ENVS)"
    )


def test_the_refusal_reaches_the_evaluator_as_a_400_on_the_form(client, study, evaluator):
    client.force_login(evaluator)
    response = client.post(reverse("annotation:candidate_add", args=[study.pk]), {
        "name": "leak", "backend": "openai", "spec": '{"base_url": "http://any-host/", "model": "m", '
                                                     '"api_key_env": "DATABASE_URL"}'})
    assert response.status_code == 400
    assert "DATABASE_URL is not an allowed key variable" in response.content.decode()
    assert "EVALSITE_API_KEY_ENVS" in response.content.decode()
    assert not study.candidates.exists()


def test_a_name_under_the_default_prefix_is_allowed(study):
    assert add(study, "openai", {**ENDPOINT, "api_key_env": "EVALSITE_KEY_VLLM"}).spec["api_key_env"] == "EVALSITE_KEY_VLLM"


def test_the_operator_chooses_the_allowed_names_and_prefixes(study, settings):
    settings.EVALSITE_API_KEY_ENVS = ["VLLM_API_KEY", "TEAM_*"]
    add(study, "openai", {**ENDPOINT, "api_key_env": "VLLM_API_KEY"}, name="exact")
    add(study, "openai", {**ENDPOINT, "api_key_env": "TEAM_A_KEY"}, name="prefix")
    with pytest.raises(services.ServiceError, match=r"EVALSITE_KEY_X is not an allowed key variable; the operator "
                                                    r"allows VLLM_API_KEY, TEAM_\* \(setting EVALSITE_API_KEY_ENVS\)"):
        add(study, "openai", {**ENDPOINT, "api_key_env": "EVALSITE_KEY_X"}, name="default-no-longer")
    with pytest.raises(services.ServiceError, match="VLLM_API_KEY_2 is not an allowed"):  # exact means exact
        add(study, "openai", {**ENDPOINT, "api_key_env": "VLLM_API_KEY_2"}, name="longer")


# --- trust_remote_code --------------------------------------------------------------------


def test_remote_code_is_refused_unless_the_operator_allows_it(study, tiny_models):
    message = refusal(study, "transformers", {"model": tiny_models["causal"], "trust_remote_code": True})
    assert "trust_remote_code: is off on this site" in message
    assert "(setting EVALSITE_TRUST_REMOTE_CODE=1)" in message
    # also for a hub id, which the worker would otherwise fetch code for
    assert "EVALSITE_TRUST_REMOTE_CODE" in refusal(study, "transformers", {"model": "org/name", "trust_remote_code": True})


def test_remote_code_is_accepted_when_the_operator_allows_it(study, tiny_models, settings):
    settings.EVALSITE_TRUST_REMOTE_CODE = True
    cand = add(study, "transformers", {"model": tiny_models["causal"], "trust_remote_code": True})
    assert cand.spec["trust_remote_code"] is True and cand.check_state == Candidate.Check.OK


def test_the_loader_refuses_remote_code_under_a_policy_that_forbids_it(tiny_models):
    spec = validate_spec("transformers", {"model": tiny_models["causal"], "trust_remote_code": True},
                         SpecPolicy(trust_remote_code=True, model_roots=(str(Path(tiny_models["causal"]).parent),)))
    with pytest.raises(BackendError) as caught:
        load_model(spec, SpecPolicy(model_roots=(str(Path(tiny_models["causal"]).parent),)))
    assert caught.value.field == "trust_remote_code"


# --- model paths ----------------------------------------------------------------------------


def test_a_model_path_outside_the_roots_is_refused_naming_the_setting(study, tmp_path, settings):
    settings.EVALSITE_MODEL_ROOTS = [str(tmp_path / "root")]
    (tmp_path / "root").mkdir()
    outside = model_dir(tmp_path / "elsewhere" / "m")
    message = refusal(study, "transformers", {"model": outside})
    assert f"model: {outside} is not inside a model root" in message
    assert f"the operator allows paths under {tmp_path / 'root'} (setting EVALSITE_MODEL_ROOTS)" in message
    # the operator adds the directory as a root: the same spec is accepted and found
    settings.EVALSITE_MODEL_ROOTS = [str(tmp_path / "root"), str(tmp_path / "elsewhere")]
    assert add(study, "transformers", {"model": outside}).check_state == Candidate.Check.OK


@pytest.mark.parametrize("value", ["/etc", "relative/dir/model", "../escape", "~/models/x", "./m"])
def test_paths_that_are_not_absolute_or_not_under_a_root_are_refused(study, value):
    message = refusal(study, "transformers", {"model": value})
    assert message.startswith("candidate 'cand': model: ") and "(setting EVALSITE_MODEL_ROOTS)" in message


def test_dot_dot_cannot_climb_out_of_a_root(study, tmp_path, settings):
    (tmp_path / "root").mkdir()
    model_dir(tmp_path / "outside")
    settings.EVALSITE_MODEL_ROOTS = [str(tmp_path / "root")]
    message = refusal(study, "transformers", {"model": f"{tmp_path}/root/../outside"})
    assert "is not inside a model root" in message and f"resolves to {tmp_path / 'outside'}" in message


def test_a_symlink_cannot_lead_out_of_a_root(study, tmp_path, settings):
    (tmp_path / "root").mkdir()
    target = model_dir(tmp_path / "secret-models" / "m")
    os.symlink(target, tmp_path / "root" / "link")
    settings.EVALSITE_MODEL_ROOTS = [str(tmp_path / "root")]
    message = refusal(study, "transformers", {"model": str(tmp_path / "root" / "link")})
    assert f"resolves to {target}" in message and "EVALSITE_MODEL_ROOTS" in message
    # nor through the tokenizer field
    inside = model_dir(tmp_path / "root" / "real")
    assert "tokenizer: " in refusal(study, "transformers", {"model": inside,
                                                            "tokenizer": str(tmp_path / "root" / "link")})


def test_a_root_prefix_is_not_a_root(study, tmp_path, settings):
    settings.EVALSITE_MODEL_ROOTS = [str(tmp_path / "models")]
    (tmp_path / "models").mkdir()
    sibling = model_dir(tmp_path / "models-evil" / "m")
    assert "is not inside a model root" in refusal(study, "transformers", {"model": sibling})


def test_a_missing_model_under_a_visible_root_is_refused_at_once(study, tmp_path):
    message = refusal(study, "transformers", {"model": str(tmp_path / "no-such-model")})
    assert message == f"candidate 'cand': model: no such model directory: {tmp_path / 'no-such-model'}"
    (tmp_path / "empty").mkdir()
    assert "has no config.json" in refusal(study, "transformers", {"model": str(tmp_path / "empty")})
    assert "tokenizer: no such model directory" in refusal(
        study, "transformers", {"model": model_dir(tmp_path / "m"), "tokenizer": str(tmp_path / "no-tok")})


def test_a_model_under_a_visible_root_is_checked_and_ok_at_once(study, tiny_models, client, evaluator):
    cand = add(study, "transformers", {"model": tiny_models["causal"]})
    assert cand.check_state == Candidate.Check.OK and cand.checked_at is not None
    client.force_login(evaluator)
    html = client.get(reverse("annotation:study", args=[study.pk])).content.decode()
    assert 'data-check="ok"' in html and "model found" in html


def test_hub_ids_are_allowed_by_default_and_wait_for_a_worker(study):
    cand = add(study, "transformers", {"model": "org/model-name"})
    assert cand.check_state == Candidate.Check.PENDING


def test_hub_ids_are_refused_when_the_operator_turns_them_off(study, settings):
    settings.EVALSITE_ALLOW_HUB_IDS = False
    message = refusal(study, "transformers", {"model": "org/model-name"})
    assert "model: org/model-name is a hub id" in message and "(setting EVALSITE_ALLOW_HUB_IDS=1)" in message


def test_a_root_the_web_cannot_see_leaves_the_check_to_a_worker_and_generation_waits(study, tmp_path, settings,
                                                                                      client, evaluator):
    settings.EVALSITE_MODEL_ROOTS = [str(tmp_path / "gpu-only-mount")]  # not on this machine
    cand = add(study, "transformers", {"model": str(tmp_path / "gpu-only-mount" / "llama")})
    assert cand.check_state == Candidate.Check.PENDING and cand.checked_at is None
    with pytest.raises(services.ServiceError, match="'cand' is waiting for a worker on the generation queue"):
        services.generation_start(study=study)
    assert not study.outputs.exists()
    client.force_login(evaluator)
    page = client.post(reverse("annotation:generate", args=[study.pk]), follow=True).content.decode()
    assert "generation cannot start yet" in page and 'data-check="pending"' in page
    assert "waiting for a generation worker to check its model" in page


def test_a_failed_check_blocks_generation_with_its_reason_and_is_queued_again(study, tmp_path, settings, client,
                                                                              evaluator):
    settings.EVALSITE_MODEL_ROOTS = [str(tmp_path / "gpu-only-mount")]
    cand = add(study, "transformers", {"model": str(tmp_path / "gpu-only-mount" / "llama")})
    # the check as a worker without that mount runs it (the worker's code, in this process)
    assert services.candidate_check_run(candidate_id=cand.pk, worker="w1") == Candidate.Check.FAILED
    cand.refresh_from_db()
    assert cand.check_error == f"model: the model root {tmp_path / 'gpu-only-mount'} does not exist on this worker " \
                               "(checked on worker w1)"
    client.force_login(evaluator)
    html = client.get(reverse("annotation:progress", args=[study.pk])).content.decode()
    assert 'data-check="failed"' in html and "does not exist on this worker" in html
    with pytest.raises(services.ServiceError) as caught:
        services.generation_start(study=study)
    assert "'cand' failed its model check: model: the model root" in str(caught.value)
    assert "checking again now" in str(caught.value)
    cand.refresh_from_db()
    assert cand.check_state == Candidate.Check.PENDING  # a fixed mount is found by the next check
    assert services.candidate_check_run(candidate_id=cand.pk) == Candidate.Check.FAILED
    assert services.candidate_check_run(candidate_id=cand.pk) == ""  # only a pending check is run


def test_imported_and_endpoint_candidates_need_no_check(study):
    assert add(study, "openai", ENDPOINT, name="api").check_state == Candidate.Check.NOT_NEEDED
    assert add(study, "imported", {}, name="imp").check_state == Candidate.Check.NOT_NEEDED


# --- base_url ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://internal-host/admin?x=", "must not have a query"),
        ("http://internal-host/v1?", "must not have a query"),
        ("http://internal-host/v1#", "must not have a fragment"),
        ("http://internal-host/v1#frag", "must not have a fragment"),
        ("http://user:pass@internal-host/v1", "must not hold a user name or password"),
        ("http://token@internal-host/v1", "must not hold a user name or password"),
        ("http://internal-host/v1/%2e%2e/admin", "must not contain '.' or '..' path segments"),
        ("http://internal-host/v1/../admin", "must not contain '.' or '..' path segments"),
        ("http://internal-host/v1\\@evil/", "must not contain a backslash"),
        ("http://internal-host/v 1", "must not contain spaces or control characters"),
        ("http://internal-host:99999/v1", "invalid port"),
        ("file:///etc/passwd", "must start with http:// or https://"),
    ],
)
def test_a_base_url_that_could_reach_elsewhere_is_refused(study, url, why):
    message = refusal(study, "openai", {"base_url": url, "model": "m"})
    assert message.startswith("candidate 'cand': base_url: ") and why in message


def test_a_query_is_refused_even_under_an_allowed_prefix(study, settings):
    settings.EVALSITE_BASE_URLS = ["http://internal-host/v1"]
    assert "must not have a query" in refusal(study, "openai", {"base_url": "http://internal-host/v1?", "model": "m"})


def test_without_an_allowlist_any_http_endpoint_is_accepted(study):
    assert add(study, "openai", {"base_url": "http://any-host:8000/v1/", "model": "m"}).spec["base_url"] == \
        "http://any-host:8000/v1"


def test_the_allowlist_compares_scheme_host_port_and_whole_path_segments(study, settings):
    settings.EVALSITE_BASE_URLS = ["http://vllm.internal:8000/v1", "https://api.openai.com/v1"]
    for n, ok in enumerate(["http://vllm.internal:8000/v1", "http://VLLM.internal:8000/v1/",
                            "http://vllm.internal:8000/v1/team-a", "https://api.openai.com:443/v1"]):
        add(study, "openai", {"base_url": ok, "model": "m"}, name=f"ok{n}")
    for bad in ["http://vllm.internal:8000/v1evil", "http://vllm.internal.evil:8000/v1", "http://vllm.internal/v1",
                "https://vllm.internal:8000/v1", "http://vllm.internal:8000/", "http://api.openai.com/v1"]:
        with pytest.raises(services.ServiceError) as caught:
            add(study, "openai", {"base_url": bad, "model": "m"}, name="bad")
        assert str(caught.value) == (
            f"candidate 'bad': base_url: {bad.rstrip('/')} is not under an allowed endpoint; the operator allows "
            "http://vllm.internal:8000/v1, https://api.openai.com/v1 (setting EVALSITE_BASE_URLS)"
        )
    assert study.candidates.count() == 4


def test_url_allowed_reads_default_ports_and_ignores_broken_entries():
    assert url_allowed("http://a/v1/x", ("http://a:80/v1",))
    assert not url_allowed("http://a/v1", ("not a url", "http://a/v2"))
    assert url_allowed("http://a/v1", ())


# --- through a real worker -------------------------------------------------------------------


def _finished(study):
    return not study.outputs.filter(status__in=[Output.Status.PENDING, Output.Status.QUEUED,
                                                Output.Status.RUNNING]).exists()


@pytest.mark.django_db(transaction=True)
def test_a_model_only_a_worker_can_see_is_checked_there_and_then_generated(celery_worker_process, evaluator,
                                                                          tmp_path, settings, client):
    # How a GPU-only mount is simulated on one machine: each side decides whether a model
    # root is visible by whether that directory exists on its machine. The web sees no
    # root at the moment it checks; the check task is sent only when the candidate's
    # transaction commits, and by then the root exists, as the mount does on a GPU worker
    # (whose EVALSITE_MODEL_ROOTS, from tests/conftest.py, contains this directory).
    mount = tmp_path / "gpu-only-mount"
    settings.EVALSITE_MODEL_ROOTS = [str(mount)]
    study = _study(evaluator)
    with transaction.atomic():
        cand = add(study, "transformers", {"model": str(mount / "tiny")})
        assert cand.check_state == Candidate.Check.PENDING
        build_tiny_model(mount / "tiny", kind="causal", seed=4)
    wait_for(lambda: Candidate.objects.get(pk=cand.pk).check_state != Candidate.Check.PENDING,
             what="the worker's model check", worker=celery_worker_process)
    cand.refresh_from_db()
    assert (cand.check_state, cand.check_error) == (Candidate.Check.OK, "") and cand.checked_at is not None
    client.force_login(evaluator)
    assert "model found" in client.get(reverse("annotation:progress", args=[study.pk])).content.decode()
    assert services.generation_start(study=study) == 4
    wait_for(lambda: _finished(study), what="generation", worker=celery_worker_process)
    assert set(study.outputs.values_list("status", flat=True)) == {Output.Status.DONE}


@pytest.mark.django_db(transaction=True)
def test_a_worker_that_cannot_find_the_model_fails_the_check_and_generation_waits_for_a_fix(
        celery_worker_process, evaluator, tmp_path, settings, client):
    mount = tmp_path / "gpu-only-mount"
    settings.EVALSITE_MODEL_ROOTS = [str(mount)]
    study = _study(evaluator)
    cand = add(study, "transformers", {"model": str(mount / "tiny")})

    def state():
        return Candidate.objects.get(pk=cand.pk).check_state

    wait_for(lambda: state() == Candidate.Check.FAILED, what="a failed check", worker=celery_worker_process)
    cand.refresh_from_db()
    assert cand.check_error.startswith(f"model: no such model directory: {mount / 'tiny'} (checked on worker test-")
    client.force_login(evaluator)
    url = reverse("annotation:generate", args=[study.pk])
    page = client.post(url, follow=True).content.decode()
    assert "&#x27;cand&#x27; failed its model check: model: no such model directory" in page
    assert not study.outputs.exists()
    wait_for(lambda: state() == Candidate.Check.FAILED, what="the second check", worker=celery_worker_process)
    # the operator puts the model on the mount; the next press checks again, the one after starts
    build_tiny_model(mount / "tiny", kind="causal", seed=5)
    client.post(url)
    wait_for(lambda: state() == Candidate.Check.OK, what="a passing check", worker=celery_worker_process)
    assert "4 outputs queued for generation" in client.post(url, follow=True).content.decode()
    wait_for(lambda: _finished(study), what="generation", worker=celery_worker_process)
    assert set(study.outputs.values_list("status", flat=True)) == {Output.Status.DONE}


@pytest.mark.django_db(transaction=True)
def test_a_hub_id_missing_from_the_offline_workers_cache_fails_its_check(celery_worker_process, evaluator):
    study = _study(evaluator)
    cand = add(study, "transformers", {"model": "evalsite-tests/not-in-any-cache"})
    wait_for(lambda: Candidate.objects.get(pk=cand.pk).check_state == Candidate.Check.FAILED,
             what="the hub id check", worker=celery_worker_process)
    cand.refresh_from_db()
    assert "evalsite-tests/not-in-any-cache is not in this worker's Hugging Face cache" in cand.check_error


@pytest.mark.django_db(transaction=True)
def test_a_worker_refuses_remote_code_that_the_web_allowed(celery_worker_process, evaluator, tiny_models, settings):
    settings.EVALSITE_TRUST_REMOTE_CODE = True  # on the web only; the worker's environment keeps it off
    study = _study(evaluator)
    add(study, "transformers", {"model": tiny_models["causal"], "trust_remote_code": True})
    services.generation_start(study=study)
    wait_for(lambda: _finished(study), what="the worker's refusal", worker=celery_worker_process)
    errors = set(study.outputs.values_list("error", flat=True))
    assert len(errors) == 1
    error = errors.pop()
    assert error.startswith("BackendError: trust_remote_code: is off on this site")
    assert "(setting EVALSITE_TRUST_REMOTE_CODE=1)" in error


@pytest.mark.django_db(transaction=True)
def test_a_worker_refuses_a_key_variable_that_the_web_allowed(celery_worker_process, evaluator, settings):
    settings.EVALSITE_API_KEY_ENVS = ["EVALSITE_KEY_*", "LEGACY_*"]  # on the web only
    study = _study(evaluator)
    with FakeOpenAIServer() as server:
        add(study, "openai", {"base_url": server.base_url, "model": "m", "api_key_env": "LEGACY_TOKEN"})
        services.generation_start(study=study)
        wait_for(lambda: _finished(study), what="the worker's refusal", worker=celery_worker_process)
        assert server.request_count == 0  # nothing was sent anywhere
    assert set(study.outputs.values_list("error", flat=True)) == {
        "BackendError: api_key_env: LEGACY_TOKEN is not an allowed key variable; the operator allows "
        "EVALSITE_KEY_* (setting EVALSITE_API_KEY_ENVS)"
    }
