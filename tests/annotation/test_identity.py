"""The identity-leak guard: outputs naming a model or maker, kept or excluded by the evaluator."""
import pytest
from django.urls import reverse

from annotation import identity, services
from annotation.models import AuditEntry, Output, Unit
from tests.conftest import client_for, imported_jsonl

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("text, found", [
    ("I am ChatGPT, a model", ["ChatGPT"]),
    ("As an AI developed by OpenAI, I cannot", ["As an AI developed by", "OpenAI"]),
    ("Llamas are animals", ["Llamas"]),  # plurals hit: a false alarm is one click, a leak is not
    ("The Geminid meteor shower", []),
    ("Visit the Googleplex", []),
    ("claude's answer", ["claude"]),
    ("I was built with alpha-model weights", ["alpha-model"]),
    ("alpha model here", ["alpha model"]),
    ("the alphabet", []),
])
def test_the_pattern_matches_whole_words_only(text, found):
    pattern = identity.matcher(["alpha-model"])
    assert [h.name for h in identity.hits(text, pattern)] == found


@pytest.fixture
def leaky(study_factory):
    study = study_factory(candidates=("beta-model", "gamma-model"))
    alpha = services.candidate_create(study=study, name="alpha-model", backend="imported", spec={})
    services.outputs_import(candidate=alpha, data=imported_jsonl({"p1": "As an AI developed by Anthropic, I think"}),
                            filename="o.jsonl")
    services.units_build(study=study)
    return study


def test_import_flags_outputs_naming_a_maker_and_the_study_page_says_so(leaky, evaluator):
    flagged = Output.objects.get(study=leaky, identity=Output.Identity.FLAGGED)
    assert flagged.prompt.external_id == "p1" and flagged.candidate.name == "alpha-model"
    assert Output.objects.filter(study=leaky, identity=Output.Identity.CLEAN).count() == 8
    page = client_for(evaluator).get(reverse("annotation:study", args=[leaky.pk])).content.decode()
    assert "1 output names a model or its maker" in page
    html = client_for(evaluator).get(reverse("annotation:identity", args=[leaky.pk])).content.decode()
    assert "<mark>As an AI developed by</mark>" in html and "<mark>Anthropic</mark>" in html


def test_excluding_closes_its_pairs_and_keeping_opens_them_again_with_audit(leaky, evaluator):
    out = Output.objects.get(study=leaky, identity=Output.Identity.FLAGGED)
    client = client_for(evaluator)
    url = reverse("annotation:output_identity", args=[leaky.pk, out.pk])
    assert client.post(url, {"decision": "excluded"}).status_code == 302
    units = Unit.objects.filter(output_a=out) | Unit.objects.filter(output_b=out)
    assert units.exists() and set(units.values_list("needed", flat=True)) == {0}
    # an overlap change leaves the excluded output's pairs closed
    services.study_update_settings(study=leaky, overlap=2, adaptive_sampling=False)
    assert set(units.values_list("needed", flat=True)) == {0}
    assert client.post(url, {"decision": "kept"}).status_code == 302
    assert set(units.values_list("needed", flat=True)) == {2}
    actions = list(AuditEntry.objects.filter(study=leaky).values_list("action", "target").order_by("pk"))[-3:]
    assert (AuditEntry.Action.OUTPUT_IDENTITY_EXCLUDED, "alpha-model on prompt p1") in actions
    assert actions[-1] == (AuditEntry.Action.OUTPUT_IDENTITY_KEPT, "alpha-model on prompt p1")
    out.refresh_from_db()
    assert out.identity == Output.Identity.KEPT
    page = client.get(reverse("annotation:study", args=[leaky.pk])).content.decode()
    assert "names a model" not in page


def test_a_bad_decision_is_refused_with_the_allowed_values(leaky, evaluator):
    out = Output.objects.get(study=leaky, identity=Output.Identity.FLAGGED)
    resp = client_for(evaluator).post(reverse("annotation:output_identity", args=[leaky.pk, out.pk]),
                                      {"decision": "maybe"}, follow=True)
    assert "decision must be one of: kept, excluded" in resp.content.decode()
    out.refresh_from_db()
    assert out.identity == Output.Identity.FLAGGED


def test_checking_again_finds_a_renamed_candidates_name(leaky, evaluator):
    beta = services.candidate_create(study=leaky, name="delta-model", backend="imported", spec={})
    services.outputs_import(candidate=beta, data=imported_jsonl({"p2": "Answer from Zorblax here"}), filename="o.jsonl")
    services.units_build(study=leaky)
    assert Output.objects.filter(study=leaky, identity=Output.Identity.FLAGGED).count() == 1
    services.candidate_rename(candidate=beta, name="Zorblax")
    resp = client_for(evaluator).post(reverse("annotation:identity", args=[leaky.pk]))
    assert resp.status_code == 302
    assert Output.objects.filter(study=leaky, identity=Output.Identity.FLAGGED).count() == 2


def test_identity_pages_by_role(leaky, evaluator, manager, annotators, make_user):
    out = Output.objects.get(study=leaky, identity=Output.Identity.FLAGGED)
    page = reverse("annotation:identity", args=[leaky.pk])
    decide = reverse("annotation:output_identity", args=[leaky.pk, out.pk])
    assert client_for(evaluator).get(page).status_code == 200
    for user in (manager, annotators[0]):
        assert client_for(user).get(page).status_code == 403
        assert client_for(user).post(decide, {"decision": "excluded"}).status_code == 403
    stranger = make_user("stranger")
    assert client_for(stranger).get(page).status_code == 404
    assert client_for(stranger).post(decide, {"decision": "excluded"}).status_code == 404
    assert client_for(evaluator).get(decide).status_code == 405
    out.refresh_from_db()
    assert out.identity == Output.Identity.FLAGGED


def test_a_reimported_text_is_checked_again_and_decisions_stay(leaky):
    gamma = leaky.candidates.get(name="gamma-model")
    services.outputs_import(candidate=gamma, data=imported_jsonl({"p3": "I am Claude, made by Anthropic"}),
                            filename="o.jsonl")
    redone = Output.objects.get(candidate=gamma, prompt__external_id="p3")
    assert redone.identity == Output.Identity.FLAGGED
    services.output_identity_decide(output=redone, decision=Output.Identity.KEPT)
    services.outputs_import(candidate=gamma, data=imported_jsonl({"p3": "I am Claude, again"}), filename="o.jsonl")
    redone.refresh_from_db()
    assert redone.identity == Output.Identity.KEPT
    entry = AuditEntry.objects.filter(study=leaky, action=AuditEntry.Action.OUTPUT_IDENTITY_KEPT).get()
    assert entry.detail["decision"] == {"from": "Names a model: awaiting a decision", "to": "Kept"}


def test_outputs_never_checked_are_announced_and_checked_on_request(leaky, evaluator):
    Output.objects.filter(study=leaky).update(identity=Output.Identity.UNCHECKED)  # as after the upgrade
    client = client_for(evaluator)
    page = client.get(reverse("annotation:study", args=[leaky.pk])).content.decode()
    assert "9 finished outputs have not been checked for" in page
    client.post(reverse("annotation:identity", args=[leaky.pk]))
    page = client.get(reverse("annotation:study", args=[leaky.pk])).content.decode()
    assert "not been checked" not in page and "1 output names a model or its maker" in page
