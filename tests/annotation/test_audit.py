"""Every change to a study leaves one audit entry naming who made it; only its evaluators read the log."""
import json

import pytest
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from annotation import audit, services
from annotation.models import AuditEntry, Candidate, Output, Study, StudyMember
from tests.conftest import PROMPTS_CSV, imported_jsonl

Action = AuditEntry.Action
SECRET = "sk-live-9f8e7d6c5b4a"


@pytest.fixture
def study(study_factory):
    return study_factory(candidates=("alpha-model", "beta-model"))


@pytest.fixture
def owner(client, study):
    client.force_login(study.created_by)
    return study.created_by


def _new_entries(study, since: int) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(study=study, pk__gt=since).order_by("pk"))


def _last_id() -> int:
    return AuditEntry.objects.order_by("-pk").values_list("pk", flat=True).first() or 0


def _one_entry(study, since: int, *, actor, action: str, target: str) -> AuditEntry:
    entries = _new_entries(study, since)
    assert [(e.action, e.target, e.actor_id, e.actor_name) for e in entries] == [
        (action, target, actor.pk, actor.username)
    ]
    return entries[0]


# --- each change, through the pages -------------------------------------------------


def _may_create_studies(user) -> None:
    user.user_permissions.add(Permission.objects.get(codename="add_study", content_type__app_label="annotation"))


def test_creating_a_study_records_who_created_it_with_its_people(client, evaluator, annotators, manager):
    _may_create_studies(evaluator)
    client.force_login(evaluator)
    response = client.post(reverse("annotation:study_create"), {
        "name": "Audited study", "overlap": 2, "max_new_tokens": 64, "temperature": 0.0, "seed": 0,
        "annotators": [a.pk for a in annotators[:2]], "managers": [manager.pk],
        "prompts": SimpleUploadedFile("prompts.csv", PROMPTS_CSV),
    })
    assert response.status_code == 302
    study = Study.objects.get(name="Audited study")
    entry = _one_entry(study, 0, actor=evaluator, action=Action.STUDY_CREATED, target="Audited study")
    assert entry.detail["prompts"] == 4 and entry.detail["overlap"] == 2
    assert entry.detail["annotators"] == ["ann1", "ann2"] and entry.detail["managers"] == ["manny"]
    assert entry.detail["generation_settings"]["max_new_tokens"] == 64


def test_a_refused_prompt_file_creates_no_study_and_no_entry(client, evaluator):
    _may_create_studies(evaluator)
    client.force_login(evaluator)
    response = client.post(reverse("annotation:study_create"), {
        "name": "Bad", "overlap": 1, "max_new_tokens": 64, "temperature": 0.0, "seed": 0,
        "prompts": SimpleUploadedFile("prompts.csv", b"id,prompt\np1,Fine\np2,\n"),
    })
    assert response.status_code == 400
    assert not Study.objects.exists() and not AuditEntry.objects.exists()


def test_changing_settings_records_old_and_new_values_and_a_resave_records_nothing(client, study, owner):
    since = _last_id()
    url = reverse("annotation:settings", args=[study.pk])
    assert client.post(url, {"overlap": 3, "adaptive_sampling": "on"}).status_code == 302
    entry = _one_entry(study, since, actor=owner, action=Action.SETTINGS_CHANGED, target=study.name)
    assert entry.detail == {"adaptive_sampling": {"from": False, "to": True}, "overlap": {"from": 1, "to": 3}}
    since = entry.pk
    assert client.post(url, {"overlap": 3, "adaptive_sampling": "on"}).status_code == 302
    assert _new_entries(study, since) == []


def test_adding_a_candidate_records_its_spec_with_secrets_hidden(client, study, owner):
    since = _last_id()
    spec = {"base_url": "http://127.0.0.1:9/v1", "model": "served-llm", "max_retries": 1,
            "extra_body": {"api_key": SECRET, "top_k": 5}}
    response = client.post(reverse("annotation:candidate_add", args=[study.pk]),
                           {"name": "remote", "backend": "openai", "spec": json.dumps(spec)})
    assert response.status_code == 302, response.content.decode()[:2000]
    entry = _one_entry(study, since, actor=owner, action=Action.CANDIDATE_ADDED, target="remote")
    assert entry.detail["backend"] == "openai"
    assert entry.detail["spec"]["extra_body"] == {"api_key": "(set)", "top_k": 5}
    assert entry.detail["spec"]["model"] == "served-llm"
    assert SECRET not in json.dumps(entry.detail)


def test_a_refused_spec_records_nothing(client, study, owner):
    since = _last_id()
    response = client.post(reverse("annotation:candidate_add", args=[study.pk]),
                           {"name": "remote", "backend": "openai", "spec": '{"model": "m", "bogus": 1}'})
    assert response.status_code == 400
    assert not Candidate.objects.filter(name="remote").exists()
    assert _new_entries(study, since) == []


def test_an_imported_candidate_records_the_candidate_and_its_outputs(client, study, owner):
    since = _last_id()
    ids = list(study.prompts.values_list("external_id", flat=True))
    response = client.post(reverse("annotation:candidate_add", args=[study.pk]), {
        "name": "gamma-model", "backend": "imported", "spec": "",
        "outputs": SimpleUploadedFile("gamma.jsonl", imported_jsonl({i: f"g {i}" for i in ids})),
    })
    assert response.status_code == 302
    added, imported = _new_entries(study, since)
    assert (added.action, added.target, added.actor_id) == (Action.CANDIDATE_ADDED, "gamma-model", owner.pk)
    assert (imported.action, imported.target, imported.actor_id) == (Action.OUTPUTS_IMPORTED, "gamma-model", owner.pk)
    assert imported.detail == {"outputs": 4, "file": "gamma.jsonl"}


def test_a_refused_outputs_file_leaves_neither_the_candidate_nor_an_entry(client, study, owner):
    since = _last_id()
    response = client.post(reverse("annotation:candidate_add", args=[study.pk]), {
        "name": "gamma-model", "backend": "imported", "spec": "",
        "outputs": SimpleUploadedFile("gamma.jsonl", imported_jsonl({"p1": "ok", "nope": "bad"})),
    })
    assert response.status_code == 400
    assert not Candidate.objects.filter(study=study, name="gamma-model").exists()
    assert _new_entries(study, since) == []


def test_adding_a_person_and_changing_their_role_are_each_recorded(client, study, owner, make_user):
    newcomer = make_user("newcomer")
    since = _last_id()
    url = reverse("annotation:member_add", args=[study.pk])
    assert client.post(url, {"username": "newcomer", "role": "annotator", "group": "night"}).status_code == 302
    entry = _one_entry(study, since, actor=owner, action=Action.MEMBER_ADDED, target="newcomer")
    assert entry.detail == {"role": "annotator", "group": "night"}
    # adding again with another role is refused: a role changes only by its own action
    assert client.post(url, {"username": "newcomer", "role": "manager", "group": "night"}).status_code == 409
    assert _new_entries(study, entry.pk) == []
    change = reverse("annotation:member_change", args=[study.pk, newcomer.pk])
    assert client.post(change, {"role": "manager", "group": "night"}).status_code == 302
    entry = _one_entry(study, entry.pk, actor=owner, action=Action.MEMBER_ROLE_CHANGED, target="newcomer")
    assert entry.detail == {"role": {"from": "annotator", "to": "manager"}}
    assert client.post(url, {"username": "newcomer", "role": "manager", "group": "night"}).status_code == 302
    assert _new_entries(study, entry.pk) == []
    assert StudyMember.objects.get(study=study, user=newcomer).role == "manager"


def test_an_unknown_username_records_nothing(client, study, owner):
    since = _last_id()
    response = client.post(reverse("annotation:member_add", args=[study.pk]),
                           {"username": "ghost", "role": "annotator"})
    assert response.status_code == 400 and "no user named" in response.content.decode()
    assert _new_entries(study, since) == []


def _judge_once(study, annotator) -> None:
    assignment = services.assignment_next(study=study, annotator=annotator)
    services.judgment_submit(assignment=assignment, choice="left")


def test_excluding_and_readmitting_an_annotator_are_recorded_with_their_judgments(client, study, owner, annotators):
    _judge_once(study, annotators[0])
    since = _last_id()
    url = reverse("annotation:member_exclude", args=[study.pk, annotators[0].pk])
    response = client.post(url, {"excluded": "1"}, follow=True)
    assert "ann1 is excluded" in response.content.decode()
    entry = _one_entry(study, since, actor=owner, action=Action.MEMBER_EXCLUDED, target="ann1")
    assert entry.detail == {"judgments": 1}
    assert StudyMember.objects.get(study=study, user=annotators[0]).excluded
    client.post(url, {"excluded": "1"})  # already excluded: no change, no entry
    assert _new_entries(study, entry.pk) == []
    client.post(url, {"excluded": "0"})
    entry = _one_entry(study, entry.pk, actor=owner, action=Action.MEMBER_READMITTED, target="ann1")
    assert not StudyMember.objects.get(study=study, user=annotators[0]).excluded


def test_excluding_a_manager_is_refused_and_records_nothing(client, study, owner, manager):
    since = _last_id()
    response = client.post(reverse("annotation:member_exclude", args=[study.pk, manager.pk]), {"excluded": "1"},
                           follow=True)
    assert "only annotators can be excluded" in response.content.decode()
    assert _new_entries(study, since) == []


def test_removing_a_person_is_recorded_but_an_annotator_with_judgments_must_be_excluded(
        client, study, owner, annotators):
    since = _last_id()
    response = client.post(reverse("annotation:member_remove", args=[study.pk, annotators[1].pk]))
    assert response.status_code == 302
    entry = _one_entry(study, since, actor=owner, action=Action.MEMBER_REMOVED, target="ann2")
    assert entry.detail == {"role": "annotator", "group": ""}
    assert not StudyMember.objects.filter(study=study, user=annotators[1]).exists()

    _judge_once(study, annotators[0])
    response = client.post(reverse("annotation:member_remove", args=[study.pk, annotators[0].pk]), follow=True)
    assert "exclude them instead" in response.content.decode()
    assert StudyMember.objects.filter(study=study, user=annotators[0]).exists()
    assert _new_entries(study, entry.pk) == []


def test_adding_prompts_is_recorded_and_a_clashing_file_is_not(client, study, owner):
    since = _last_id()
    url = reverse("annotation:prompts_add", args=[study.pk])
    good = SimpleUploadedFile("more.csv", b"id,prompt\np5,Fifth question\np6,Sixth question\n")
    assert client.post(url, {"prompts": good}).status_code == 302
    entry = _one_entry(study, since, actor=owner, action=Action.PROMPTS_ADDED, target="more.csv")
    assert entry.detail == {"prompts": 2, "file": "more.csv"}
    clash = SimpleUploadedFile("again.csv", b"id,prompt\np1,Already there\n")
    assert client.post(url, {"prompts": clash}).status_code == 400
    assert _new_entries(study, entry.pk) == []


def _generating_candidate(study) -> Candidate:
    # written directly: what is under test is the Start button, not the spec policy
    return Candidate.objects.create(study=study, name="remote", backend="openai",
                                    spec={"base_url": "http://127.0.0.1:9/v1", "model": "m"})


def test_starting_generation_records_what_was_queued_and_a_second_press_records_nothing(client, study, owner):
    _generating_candidate(study)
    since = _last_id()
    url = reverse("annotation:generate", args=[study.pk])
    assert client.post(url).status_code == 302
    entry = _one_entry(study, since, actor=owner, action=Action.GENERATION_STARTED, target=study.name)
    assert entry.detail == {"queued": 4, "candidates": {"remote": 4}}
    assert client.post(url).status_code == 302  # everything is queued already
    assert _new_entries(study, entry.pk) == []


def test_retrying_failed_outputs_is_recorded_once_per_press(client, study, owner):
    cand = _generating_candidate(study)
    services.generation_start(study=study)
    Output.objects.filter(candidate=cand).update(status=Output.Status.FAILED, error="boom", claim="")
    since = _last_id()
    url = reverse("annotation:retry_failed", args=[study.pk])
    assert client.post(url).status_code == 302
    entry = _one_entry(study, since, actor=owner, action=Action.OUTPUTS_RETRIED, target=study.name)
    assert entry.detail == {"outputs": 4, "candidates": ["remote"]}
    assert client.post(url).status_code == 302  # nothing failed any more
    assert _new_entries(study, entry.pk) == []


def test_retrying_one_output_is_recorded_and_retrying_a_done_one_is_refused(client, study, owner):
    cand = _generating_candidate(study)
    services.generation_start(study=study)
    failed = Output.objects.filter(candidate=cand).order_by("pk").first()
    Output.objects.filter(pk=failed.pk).update(status=Output.Status.FAILED, error="boom", claim="")
    since = _last_id()
    assert client.post(reverse("annotation:output_retry", args=[study.pk, failed.pk])).status_code == 302
    entry = _one_entry(study, since, actor=owner, action=Action.OUTPUTS_RETRIED, target=str(failed))
    assert entry.detail == {"outputs": 1, "candidates": ["remote"]}
    done = Output.objects.filter(study=study, status=Output.Status.DONE).first()
    response = client.post(reverse("annotation:output_retry", args=[study.pk, done.pk]), follow=True)
    assert "only a failed output can be retried" in response.content.decode()
    assert _new_entries(study, entry.pk) == []


def test_a_service_run_without_a_user_is_recorded_as_the_system(study):
    since = _last_id()
    services.study_update_settings(study=study, overlap=2, adaptive_sampling=False)
    (entry,) = _new_entries(study, since)
    assert entry.actor is None and entry.actor_name == "system"


# --- reading the log ----------------------------------------------------------------


def test_the_log_page_lists_entries_newest_first_without_secrets(client, study, owner, make_user):
    added = client.post(reverse("annotation:candidate_add", args=[study.pk]), {
        "name": "remote", "backend": "openai",
        "spec": json.dumps({"base_url": "http://127.0.0.1:9/v1", "model": "m", "extra_body": {"api_key": SECRET}}),
    })
    assert added.status_code == 302
    make_user("newcomer")
    joined = client.post(reverse("annotation:member_add", args=[study.pk]),
                         {"username": "newcomer", "role": "annotator"})
    assert joined.status_code == 302
    response = client.get(reverse("annotation:audit", args=[study.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert SECRET not in html and "api_key: (set)" in html
    rows = html[html.index("<tbody>"):]
    assert rows.index("newcomer") < rows.index("remote") < rows.index("Study created")
    assert "UTC" in html and "eve" in html
    assert reverse("annotation:audit", args=[study.pk]) in client.get(
        reverse("annotation:study", args=[study.pk])).content.decode()


def test_the_log_comes_in_pages_of_fifty(client, study, owner):
    for n in range(60):
        audit.record(study, owner, Action.PROMPTS_ADDED, f"file-{n:02}.csv", {"prompts": 1})
    url = reverse("annotation:audit", args=[study.pk])
    first = client.get(url).content.decode()
    assert "file-59.csv" in first and "file-10.csv" in first and "file-09.csv" not in first
    assert "Page 1 of 2" in first
    second = client.get(url, {"page": 2}).content.decode()
    assert "file-09.csv" in second and "Study created" in second and "file-59.csv" not in second
    api = client.get(f"/api/studies/{study.pk}/audit", {"page": 2}).json()
    assert api["pages"] == 2 and api["count"] == len(api["entries"]) + 50
    assert client.get(f"/api/studies/{study.pk}/audit", {"page": "x"}).status_code == 400


def test_the_api_returns_the_entries_as_json(client, study, owner):
    client.post(reverse("annotation:settings", args=[study.pk]), {"overlap": 2})
    response = client.get(f"/api/studies/{study.pk}/audit")
    assert response.status_code == 200
    data = response.json()
    latest = data["entries"][0]
    assert latest["action"] == "settings_changed" and latest["actor"] == "eve" and latest["actor_id"] == owner.pk
    assert latest["detail"] == {"overlap": {"from": 1, "to": 2}}
    assert latest["at"].endswith("Z")
    assert data["entries"][-1]["action"] == "study_created"


@pytest.mark.parametrize("who, status", [("manager", 403), ("annotator", 403), ("stranger", 404)])
def test_only_the_study_evaluators_read_the_log(client, study, manager, annotators, make_user, who, status):
    user = {"manager": manager, "annotator": annotators[0], "stranger": make_user("stranger")}[who]
    client.force_login(user)
    assert client.get(reverse("annotation:audit", args=[study.pk])).status_code == status
    assert client.get(f"/api/studies/{study.pk}/audit").status_code == status


def test_anonymous_users_are_sent_to_sign_in_and_refused_by_the_api(client, study):
    response = client.get(reverse("annotation:audit", args=[study.pk]))
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert client.get(f"/api/studies/{study.pk}/audit").status_code in (401, 403)


@pytest.mark.parametrize("who", ["manager", "annotator", "stranger"])
def test_other_people_cannot_change_members(client, study, manager, annotators, make_user, who):
    user = {"manager": manager, "annotator": annotators[0], "stranger": make_user("stranger")}[who]
    client.force_login(user)
    since = _last_id()
    exclude = client.post(reverse("annotation:member_exclude", args=[study.pk, annotators[1].pk]), {"excluded": "1"})
    remove = client.post(reverse("annotation:member_remove", args=[study.pk, annotators[1].pk]))
    assert exclude.status_code == remove.status_code == (404 if who == "stranger" else 403)
    assert not StudyMember.objects.get(study=study, user=annotators[1]).excluded
    assert _new_entries(study, since) == []


def test_the_member_actions_take_only_posts(client, study, owner, annotators):
    assert client.get(reverse("annotation:member_exclude", args=[study.pk, annotators[0].pk])).status_code == 405
    assert client.get(reverse("annotation:member_remove", args=[study.pk, annotators[0].pk])).status_code == 405


def test_the_admin_shows_entries_but_cannot_add_or_change_them(client, study, django_user_model):
    admin_user = django_user_model.objects.create_superuser("root", password="root-pw")
    client.force_login(admin_user)
    entry = AuditEntry.objects.filter(study=study).first()
    assert client.get(reverse("admin:annotation_auditentry_changelist")).status_code == 200
    assert client.get(reverse("admin:annotation_auditentry_change", args=[entry.pk])).status_code == 200
    assert client.get(reverse("admin:annotation_auditentry_add")).status_code == 403
    response = client.post(reverse("admin:annotation_auditentry_change", args=[entry.pk]), {"target": "forged"})
    assert response.status_code == 403
    entry.refresh_from_db()
    assert entry.target != "forged"


# --- the redaction itself -----------------------------------------------------------


def test_redaction_hides_credentials_but_keeps_variable_names_and_ordinary_keys():
    spec = {
        "api_key_env": "EVALSITE_KEY_OPENAI", "api_key": SECRET, "apiKey": SECRET, "access_token": SECRET,
        "client_secret": SECRET, "password": SECRET, "headers": {"Authorization": f"Bearer {SECRET}"},
        "tokenizer": "/models/tok", "max_new_tokens": 32, "base_url": f"http://user:{SECRET}@10.0.0.1/v1",
        "empty_token": "",
    }
    shown = audit.redact(spec)
    assert SECRET not in json.dumps(shown)
    assert shown["api_key_env"] == "EVALSITE_KEY_OPENAI"
    assert shown["tokenizer"] == "/models/tok" and shown["max_new_tokens"] == 32
    assert shown["api_key"] == shown["apiKey"] == shown["access_token"] == shown["client_secret"] == "(set)"
    assert shown["headers"] == {"Authorization": "(set)"}
    assert shown["base_url"] == "http://user:(set)@10.0.0.1/v1"
    assert shown["empty_token"] == ""


def test_details_read_as_lines():
    assert audit.describe({"overlap": {"from": 1, "to": 2}, "annotators": ["a", "b"], "adaptive": True}) == [
        "overlap: 1 → 2", "annotators: a, b", "adaptive: yes",
    ]
