"""Renaming, removing and hiding candidates; the progress table's coverage of the study's prompts."""
import re
import threading

import pytest
from django.db import connections
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db.models import F, Q
from django.test import Client
from django.urls import reverse

from annotation import services
from annotation.models import Assignment, AuditEntry, Candidate, Judgment, Output, Study, Unit
from arena.services import ratings_recompute
from tests.conftest import client_for, PROMPTS_CSV, grant_study_creation, imported_jsonl

Action = AuditEntry.Action
pytestmark = pytest.mark.django_db


@pytest.fixture
def study(study_factory):
    return study_factory(candidates=("alpha-model", "beta-model", "gamma-model"))


@pytest.fixture
def owner(study):
    client = Client()
    client.force_login(study.created_by)
    return client


def cand(study, name) -> Candidate:
    return Candidate.objects.get(study=study, name=name)


def url(name, study, candidate) -> str:
    return reverse(f"annotation:{name}", args=[study.pk, candidate.pk])


def entries(study, action) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(study=study, action=action).order_by("pk"))


def _token(html: str) -> str | None:
    found = re.search(r'action="/tasks/([^"/]+)/"', html)
    return found.group(1) if found else None


def vote_through_pages(client, study, *, limit: int = 1000, leases: list | None = None) -> list[tuple[int, int]]:
    """Judge every pair the site serves this annotator, as a browser would; the candidate pairs served
    (and, in ``leases``, the assignment ids)."""
    served = []
    html = client.get(reverse("annotation:annotate", args=[study.pk])).content.decode()
    while (token := _token(html)) is not None and len(served) < limit:
        assignment = Assignment.objects.select_related("unit").get(token=token)
        unit = assignment.unit
        served.append((unit.cand_lo_id, unit.cand_hi_id))
        if leases is not None:
            leases.append(assignment.pk)
        response = client.post(reverse("annotation:submit", args=[token]), {"choice": "left"}, HTTP_HX_REQUEST="true")
        assert response.status_code == 200
        html = response.content.decode()
    return served


def judge_one_pair_of(study, candidate, annotator) -> None:
    """An annotator votes until a pair involving the candidate has a judgment."""
    client = client_for(annotator)
    html = client.get(reverse("annotation:annotate", args=[study.pk])).content.decode()
    while (token := _token(html)) is not None:
        unit = Assignment.objects.select_related("unit").get(token=token).unit
        html = client.post(reverse("annotation:submit", args=[token]), {"choice": "left"},
                           HTTP_HX_REQUEST="true").content.decode()
        if candidate.pk in (unit.cand_lo_id, unit.cand_hi_id):
            return
    raise AssertionError(f"no pair of {candidate.name} was served")


# --- rename ----------------------------------------------------------------------------


def test_renaming_a_candidate_keeps_its_votes_and_renames_it_on_the_leaderboard(owner, study, annotators):
    gamma = cand(study, "gamma-model")
    judge_one_pair_of(study, gamma, annotators[0])
    ratings_recompute(study_id=study.pk, rounds=20)
    version = Study.objects.get(pk=study.pk).version
    response = owner.post(url("candidate_rename", study, gamma), {"name": "  gamma-v2  "}, follow=True)
    assert "Candidate &#x27;gamma-model&#x27; is now called &#x27;gamma-v2&#x27;." in response.content.decode()
    gamma.refresh_from_db()
    assert gamma.name == "gamma-v2" and Output.objects.filter(candidate=gamma).count() == 4
    (entry,) = entries(study, Action.CANDIDATE_RENAMED)
    assert (entry.target, entry.actor, entry.detail) == (
        "gamma-v2", study.created_by, {"name": {"from": "gamma-model", "to": "gamma-v2"}})
    # every leaderboard is redone under the new name
    assert Study.objects.get(pk=study.pk).version == version + 1
    models = [r["model"] for r in ratings_recompute(study_id=study.pk, rounds=20).payload["rows"]]
    assert "gamma-v2" in models and "gamma-model" not in models


def test_a_rename_to_a_taken_or_empty_name_is_refused_and_changes_nothing(owner, study):
    gamma = cand(study, "gamma-model")
    taken = owner.post(url("candidate_rename", study, gamma), {"name": "alpha-model"}, follow=True)
    assert ("Candidate &#x27;gamma-model&#x27; keeps its name: this study already has a candidate named "
            "&#x27;alpha-model&#x27;.") in taken.content.decode()
    empty = owner.post(url("candidate_rename", study, gamma), {"name": "   "}, follow=True)
    assert "Candidate &#x27;gamma-model&#x27; keeps its name: name: This field is required." in empty.content.decode()
    nul = owner.post(url("candidate_rename", study, gamma), {"name": "g\x00"}, follow=True)
    assert "keeps its name: name:" in nul.content.decode()
    gamma.refresh_from_db()
    assert gamma.name == "gamma-model" and not entries(study, Action.CANDIDATE_RENAMED)


# --- remove ----------------------------------------------------------------------------


def test_a_candidate_without_votes_is_removed_with_its_outputs_and_pairs(owner, study):
    gamma = cand(study, "gamma-model")
    assert Unit.objects.filter(study=study).count() == 12  # 4 prompts x 3 pairs
    response = owner.post(url("candidate_remove", study, gamma), follow=True)
    assert "Candidate &#x27;gamma-model&#x27; removed, with its outputs and pairs." in response.content.decode()
    assert not Candidate.objects.filter(pk=gamma.pk).exists()
    assert not Output.objects.filter(candidate_id=gamma.pk).exists()
    assert Unit.objects.filter(study=study).count() == 4
    assert not Unit.objects.filter(Q(cand_lo_id=gamma.pk) | Q(cand_hi_id=gamma.pk)).exists()
    assert Study.objects.get(pk=study.pk).units_total == 4
    (entry,) = entries(study, Action.CANDIDATE_REMOVED)
    assert (entry.target, entry.detail) == ("gamma-model", {"backend": "imported", "outputs": 4, "pairs": 8})
    progress = owner.get(reverse("annotation:progress", args=[study.pk])).content.decode()
    assert 'data-candidate="gamma-model"' not in progress


def test_removing_a_candidate_with_a_vote_is_refused_and_leaves_everything(owner, study, annotators):
    gamma = cand(study, "gamma-model")
    judge_one_pair_of(study, gamma, annotators[0])
    needed = dict(Unit.objects.filter(study=study).values_list("pk", "needed"))
    judgments = Judgment.objects.count()
    response = owner.post(url("candidate_remove", study, gamma), follow=True)
    assert ("candidate &#x27;gamma-model&#x27; cannot be removed: a judgment already involves it. Hide it from new "
            "pairs instead; its ratings from those votes stay.") in response.content.decode()
    assert Candidate.objects.filter(pk=gamma.pk).exists() and Output.objects.filter(candidate=gamma).count() == 4
    assert dict(Unit.objects.filter(study=study).values_list("pk", "needed")) == needed  # its pairs still open
    assert Judgment.objects.count() == judgments and not entries(study, Action.CANDIDATE_REMOVED)


def test_a_lease_on_a_removed_candidates_pair_goes_and_its_annotator_gets_another(owner, study, annotators):
    client = client_for(annotators[0])
    token = _token(client.get(reverse("annotation:annotate", args=[study.pk])).content.decode())
    unit = Assignment.objects.get(token=token).unit
    lo = Candidate.objects.get(pk=unit.cand_lo_id)
    assert owner.post(url("candidate_remove", study, lo)).status_code == 302
    assert client.post(reverse("annotation:submit", args=[token]), {"choice": "left"}).status_code == 404
    served = vote_through_pages(client, study)
    assert len(served) == 4 and all(lo.pk not in pair for pair in served)


@pytest.mark.django_db(transaction=True)
def test_removing_a_candidate_while_its_pairs_are_being_voted_on_never_loses_a_vote(study_factory, make_user):
    """Votes on its pairs and Remove pressed at the same moment: either the removal is refused
    (a vote committed first) or it wins and those votes are refused; no recorded vote is deleted."""
    for round_ in range(3):
        study = study_factory(candidates=("alpha-model", "beta-model", "gamma-model"))
        gamma = cand(study, "gamma-model")
        voters = [make_user(f"r{round_}v{n}") for n in range(6)]
        tokens = []
        for user in voters:
            services.member_set(study=study, user=user, role="annotator")
            tokens.append(services.assignment_next(study=study, annotator=user).token)
        clients = [client_for(user) for user in voters]
        owner = client_for(study.created_by)
        start = threading.Barrier(len(voters) + 1)
        statuses = {}

        def act(n):
            try:
                start.wait()
                if n == len(voters):
                    statuses["remove"] = owner.post(url("candidate_remove", study, gamma)).status_code
                else:
                    statuses[n] = clients[n].post(reverse("annotation:submit", args=[tokens[n]]),
                                                  {"choice": "left"}, HTTP_HX_REQUEST="true").status_code
            finally:
                connections.close_all()

        threads = [threading.Thread(target=act, args=(n,)) for n in range(len(voters) + 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert statuses["remove"] == 302 and all(statuses[n] in (200, 404, 409) for n in range(len(voters)))
        recorded = sum(statuses[n] == 200 for n in range(len(voters)))
        assert Judgment.objects.filter(study=study).count() == recorded
        removed = not Candidate.objects.filter(pk=gamma.pk).exists()
        gamma_votes = Judgment.objects.filter(Q(unit__cand_lo_id=gamma.pk) | Q(unit__cand_hi_id=gamma.pk)).count()
        assert removed == (gamma_votes == 0)
        assert bool(entries(study, Action.CANDIDATE_REMOVED)) == removed


# --- hide ------------------------------------------------------------------------------


def test_a_hidden_candidate_is_never_leased_again_and_keeps_its_ratings(owner, study, annotators, make_user):
    gamma = cand(study, "gamma-model")
    judge_one_pair_of(study, gamma, annotators[0])
    judged_gamma = Judgment.objects.filter(Q(unit__cand_lo=gamma) | Q(unit__cand_hi=gamma)).count()
    open_gamma = Unit.objects.filter(Q(cand_lo=gamma) | Q(cand_hi=gamma), taken=0).count()
    response = owner.post(url("candidate_hide", study, gamma), {"hidden": "1"}, follow=True)
    html = response.content.decode()
    assert "Candidate &#x27;gamma-model&#x27; is hidden from new pairs; its votes and ratings stay." in html
    assert html.count("hidden from new pairs") >= 2  # in the candidates table and in the progress table
    (entry,) = entries(study, Action.CANDIDATE_HIDDEN)
    assert (entry.target, entry.detail) == ("gamma-model", {"open_pairs_closed": open_gamma})
    # many annotators lease everything there is: no new lease on a pair of gamma, the other pairs all go;
    # a lease already on an annotator's screen when it was hidden may still be answered
    on_screen = set(Assignment.objects.filter(study=study, submitted_at__isnull=True).values_list("pk", flat=True))
    held_gamma = Assignment.objects.filter(pk__in=on_screen).filter(
        Q(unit__cand_lo=gamma) | Q(unit__cand_hi=gamma)).count()
    # the other pairs still open now (how many depends on the random order annotators[0] was served in)
    other_open = Unit.objects.filter(study=study, taken__lt=F("needed")).exclude(
        Q(cand_lo=gamma) | Q(cand_hi=gamma)).count()
    crowd = annotators + [make_user(f"crowd{i}") for i in range(5)]
    for user in crowd[3:]:
        services.member_set(study=study, user=user, role="annotator")
    served, leases = [], []
    for user in crowd:
        served += vote_through_pages(client_for(user), study, leases=leases)
    new = [pair for pair, lease in zip(served, leases) if lease not in on_screen]
    assert len(new) == other_open and all(gamma.pk not in pair for pair in new)
    other = Unit.objects.filter(study=study).exclude(Q(cand_lo=gamma) | Q(cand_hi=gamma))
    assert all(u.taken == u.needed == 1 for u in other)
    gamma_judgments = Judgment.objects.filter(Q(unit__cand_lo=gamma) | Q(unit__cand_hi=gamma)).count()
    assert gamma_judgments == judged_gamma + held_gamma
    # its ratings from the votes it has stay on the leaderboard
    rows = ratings_recompute(study_id=study.pk, rounds=20).payload["rows"]
    assert "gamma-model" in [r["model"] for r in rows]


def test_changing_the_overlap_keeps_a_hidden_candidates_pairs_closed(owner, study, annotators):
    gamma = cand(study, "gamma-model")
    owner.post(url("candidate_hide", study, gamma), {"hidden": "1"})
    assert owner.post(reverse("annotation:settings", args=[study.pk]), {"overlap": 2}).status_code == 302
    units = Unit.objects.filter(study=study)
    assert set(units.filter(Q(cand_lo=gamma) | Q(cand_hi=gamma)).values_list("needed", flat=True)) == {0}
    assert set(units.exclude(Q(cand_lo=gamma) | Q(cand_hi=gamma)).values_list("needed", flat=True)) == {2}


def test_pairs_built_after_hiding_are_closed_too(owner, study):
    gamma = cand(study, "gamma-model")
    owner.post(url("candidate_hide", study, gamma), {"hidden": "1"})
    services.prompts_import(study=study, data=b"id,prompt\np5,One more?\n", filename="more.csv")
    for n, c in enumerate(Candidate.objects.filter(study=study).order_by("name")):
        services.outputs_import(candidate=c, data=imported_jsonl({"p5": f"Answer {n}"}), filename="p5.jsonl")
    new = Unit.objects.filter(study=study, prompt__external_id="p5")
    assert new.count() == 3
    assert {(u.cand_lo_id == gamma.pk or u.cand_hi_id == gamma.pk, u.needed) for u in new} == {(True, 0), (False, 1)}


def test_showing_a_candidate_again_reopens_its_pairs(owner, study, annotators):
    gamma, beta = cand(study, "gamma-model"), cand(study, "beta-model")
    owner.post(url("candidate_hide", study, gamma), {"hidden": "1"})
    owner.post(url("candidate_hide", study, beta), {"hidden": "1"})
    response = owner.post(url("candidate_hide", study, gamma), {"hidden": "0"}, follow=True)
    assert "Candidate &#x27;gamma-model&#x27; is in new pairs again." in response.content.decode()
    (entry,) = entries(study, Action.CANDIDATE_SHOWN)
    assert entry.detail == {"pairs_reopened": 4}  # alpha-gamma; beta-gamma stays closed: beta is hidden
    served = vote_through_pages(client_for(annotators[0]), study)
    alpha = cand(study, "alpha-model")
    assert sorted(served) == [tuple(sorted((alpha.pk, gamma.pk)))] * 4


def test_hiding_twice_changes_nothing_the_second_time_and_a_bad_flag_is_refused(owner, study):
    gamma = cand(study, "gamma-model")
    owner.post(url("candidate_hide", study, gamma), {"hidden": "1"})
    again = owner.post(url("candidate_hide", study, gamma), {"hidden": "1"}, follow=True)
    assert "was already hidden from new pairs" in again.content.decode()
    bad = owner.post(url("candidate_hide", study, gamma), {"hidden": "yes"}, follow=True)
    assert "hidden: send 1 to hide the candidate from new pairs or 0 to show it again." in bad.content.decode()
    assert len(entries(study, Action.CANDIDATE_HIDDEN)) == 1


def test_only_the_studys_evaluators_manage_candidates(study, annotators, manager, make_user):
    gamma = cand(study, "gamma-model")
    other = grant_study_creation(make_user("olga"))
    elsewhere = services.study_create(name="Olga's", created_by=other, prompts_data=PROMPTS_CSV,
                                      prompts_filename="p.csv")
    for name, data in (("candidate_rename", {"name": "x"}), ("candidate_remove", {}), ("candidate_hide",
                                                                                        {"hidden": "1"})):
        target = url(name, study, gamma)
        for user, status in ((annotators[0], 403), (manager, 403), (other, 404)):
            assert client_for(user).post(target, data).status_code == status
        assert Client().post(target, data).status_code == 302  # to sign in
        assert client_for(study.created_by).get(target).status_code == 405
        # a candidate of another study, through this study's URL
        assert client_for(other).post(reverse(f"annotation:{name}", args=[elsewhere.pk, gamma.pk]),
                                      data).status_code == 404
    gamma.refresh_from_db()
    assert (gamma.name, gamma.hidden) == ("gamma-model", False)
    assert not AuditEntry.objects.filter(study=study, action__in=[
        Action.CANDIDATE_RENAMED, Action.CANDIDATE_REMOVED, Action.CANDIDATE_HIDDEN]).exists()


# --- coverage ----------------------------------------------------------------------------


def test_a_partial_import_reads_as_done_over_the_studys_prompts_and_names_the_missing(client, evaluator):
    prompts = ("id,prompt\n" + "".join(f"q{i:03},Question {i}?\n" for i in range(166))).encode()
    study = services.study_create(name="Coverage", created_by=evaluator, prompts_data=prompts,
                                  prompts_filename="p.csv")
    client.force_login(evaluator)
    response = client.post(reverse("annotation:candidate_add", args=[study.pk]), {
        "name": "partial-model", "backend": "imported", "spec": "",
        "outputs": SimpleUploadedFile("o.jsonl", imported_jsonl({f"q{i:03}": f"A{i}" for i in range(50)})),
    })
    assert response.status_code == 302
    html = client.get(reverse("annotation:progress", args=[study.pk])).content.decode()
    row = html[html.index('<tr data-candidate="partial-model">'):]
    assert re.search(r'class="done-count">50</span> / <span class="expected-count">166</span>', row)
    sentence = " ".join(html[html.index('<p class="coverage"'):].split("</p>")[0].split())
    assert sentence.endswith("<strong>partial-model</strong> has outputs for 50 of the study's 166 prompts; "
                             "missing q050, q051, q052, q053, q054 and 111 more.")
    progress = client.get(reverse("api-progress", args=[study.pk])).json()["candidates"][0]
    assert (progress["done"], progress["expected"], progress["prompts_covered"]) == (50, 166, 50)


def test_a_full_import_needs_no_sentence_and_samples_multiply_what_is_expected(client, evaluator):
    study = services.study_create(name="Two samples", created_by=evaluator, prompts_data=PROMPTS_CSV,
                                  prompts_filename="p.csv", samples_per_prompt=2)
    full = services.candidate_create(study=study, name="full-model", backend="imported", spec={})
    services.outputs_import(candidate=full, data=imported_jsonl({f"p{i}": "x" for i in range(1, 5)}),
                            filename="o.jsonl")
    client.force_login(evaluator)
    html = client.get(reverse("annotation:progress", args=[study.pk])).content.decode()
    assert re.search(r'class="done-count">4</span> / <span class="expected-count">8</span>', html)
    assert 'class="coverage"' not in html  # every prompt has an output


def test_a_generating_candidate_not_started_yet_is_not_listed_as_missing_prompts(client, evaluator):
    study = services.study_create(name="Not yet", created_by=evaluator, prompts_data=PROMPTS_CSV,
                                  prompts_filename="p.csv")
    services.candidate_create(study=study, name="remote", backend="openai",
                              spec={"base_url": "http://127.0.0.1:9/v1", "model": "m"})
    client.force_login(evaluator)
    html = client.get(reverse("annotation:progress", args=[study.pk])).content.decode()
    assert re.search(r'class="done-count">0</span> / <span class="expected-count">4</span>', html)
    assert 'class="coverage"' not in html
