"""Adjudication: units sent to more annotators or reserved for a named expert, originals kept."""
import html

import pytest
from django.urls import reverse

from annotation import adjudication, services
from annotation.models import Adjudication, AuditEntry, Judgment, Study, Unit
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


def _judge_all(study, annotator, choice: str = "left") -> list[int]:
    """The annotator judges every unit they are served; the units, in the order served."""
    served = []
    while (a := services.assignment_next(study=study, annotator=annotator)) is not None:
        served.append(a.unit_id)
        services.judgment_submit(assignment=a, choice=choice)
    return served


def _originals(study):
    return sorted(Judgment.objects.filter(study=study).values_list("pk", "unit_id", "annotator_id", "outcome"))


def test_units_sent_for_more_are_served_again_to_new_annotators_only(study_factory, annotators, evaluator):
    study = study_factory(overlap=1)
    first = _judge_all(study, annotators[0])
    assert len(first) == Unit.objects.filter(study=study, is_gold=False).count() == 12
    before = _originals(study)
    target = first[:2]
    assert adjudication.units_send_for_more(study=study, unit_ids=target, extra=1, actor=evaluator) == 2
    assert services.assignment_next(study=study, annotator=annotators[0]) is None  # judged them already
    second = _judge_all(study, annotators[1], choice="right")
    assert sorted(second) == sorted(target)
    assert _judge_all(study, annotators[2]) == []  # one more each, and they have it
    after = _originals(study)
    assert [row for row in after if row in before] == before  # nothing deleted or changed
    assert len(after) == len(before) + 2
    entry = AuditEntry.objects.get(study=study, action=AuditEntry.Action.UNITS_SENT_FOR_MORE)
    assert entry.detail == {"units": sorted(target), "extra": 1} and entry.actor == evaluator


def test_an_overlap_change_keeps_the_extra_places(study_factory, annotators, evaluator):
    study = study_factory(overlap=1)
    unit = Unit.objects.filter(study=study).first()
    adjudication.units_send_for_more(study=study, unit_ids=[unit.pk], extra=2, actor=evaluator)
    services.study_update_settings(study=study, overlap=2, adaptive_sampling=False)
    unit.refresh_from_db()
    other = Unit.objects.filter(study=study).exclude(pk=unit.pk).first()
    assert (unit.needed, unit.extra, other.needed) == (4, 2, 2)


def test_bad_units_are_named_and_nothing_changes(study_factory, evaluator, annotators):
    study = study_factory(overlap=1)
    other = study_factory(overlap=1)
    ours = list(Unit.objects.filter(study=study).order_by("pk").values_list("pk", flat=True)[:2])
    theirs = Unit.objects.filter(study=other).order_by("pk").first().pk
    needed = dict(Unit.objects.values_list("pk", "needed"))
    with pytest.raises(services.ServiceError, match=f"no unit {theirs} in this study"):
        adjudication.units_send_for_more(study=study, unit_ids=[*ours, theirs], extra=1, actor=evaluator)
    with pytest.raises(services.ServiceError, match="no unit 99999999 in this study"):
        adjudication.units_send_to_expert(study=study, unit_ids=[ours[0], 99999999], expert=annotators[1])
    for extra in (0, 11):
        with pytest.raises(services.ServiceError, match="extra must be a whole number from 1 to 10"):
            adjudication.units_send_for_more(study=study, unit_ids=ours, extra=extra)
    assert dict(Unit.objects.values_list("pk", "needed")) == needed
    assert not Adjudication.objects.exists()
    assert not AuditEntry.objects.filter(action__startswith="units_sent").exists()


def test_the_expert_is_served_the_reserved_units_first_and_nobody_else_is(study_factory, annotators, evaluator):
    study = study_factory(overlap=1)
    first = _judge_all(study, annotators[0])
    before = _originals(study)
    reserved = [first[5], first[2]]
    expert = annotators[1]
    assert adjudication.units_send_to_expert(study=study, unit_ids=reserved, expert=expert, actor=evaluator) == 2
    assert Study.objects.get(pk=study.pk).adjudications_open == 2
    study.refresh_from_db()
    assert services.assignment_next(study=study, annotator=annotators[2]) is None  # not theirs
    served = _judge_all(study, expert, choice="tie")
    assert served == sorted(reserved)  # in the order asked (row order), then nothing: the units are closed
    after = _originals(study)
    assert [row for row in after if row in before] == before
    verdicts = {u: (o, a) for _, u, a, o in after if a == expert.pk}
    assert verdicts == {u: ("tie", expert.pk) for u in reserved}
    labels = adjudication.adjudicated_labels(study.pk)
    assert {u: (v["expert"], v["outcome"]) for u, v in labels.items()} == {u: (expert.username, "tie")
                                                                        for u in reserved}
    # the reservations are closed once answered; the study stops looking for them
    assert Study.objects.get(pk=study.pk).adjudications_open == 0
    assert Adjudication.objects.filter(closed_at__isnull=True).count() == 0


def test_the_expert_gets_reserved_units_before_open_ones(study_factory, annotators, evaluator):
    study = study_factory(overlap=2)
    units = list(Unit.objects.filter(study=study).order_by("-shuffle").values_list("pk", flat=True))
    adjudication.units_send_to_expert(study=study, unit_ids=units[:1], expert=annotators[2], actor=evaluator)
    study.refresh_from_db()
    lease = services.assignment_next(study=study, annotator=annotators[2])
    assert lease.unit_id == units[0]
    # on a unit still open the expert's verdict fills one of its two places: one more annotator judges it
    services.judgment_submit(assignment=lease, choice="left")
    assert units[0] in _judge_all(study, annotators[0]) and units[0] not in _judge_all(study, annotators[1])
    assert Unit.objects.get(pk=units[0]).taken == 2


def test_the_expert_must_be_an_annotator_who_has_not_answered(study_factory, annotators, evaluator, manager):
    study = study_factory(overlap=1)
    first = _judge_all(study, annotators[0])
    for who in (evaluator, manager):
        with pytest.raises(services.ServiceError, match=f"{who.username} is not an annotator of this study"):
            adjudication.units_send_to_expert(study=study, unit_ids=first[:1], expert=who)
    with pytest.raises(services.ServiceError, match="no user named 'nobody'"):
        adjudication.units_send_to_expert(study=study, unit_ids=first[:1], expert="nobody")
    with pytest.raises(services.ServiceError, match=f"ann1 has already answered unit {first[0]}"):
        adjudication.units_send_to_expert(study=study, unit_ids=first[:1], expert=annotators[0])
    assert not Adjudication.objects.exists() and Study.objects.get(pk=study.pk).adjudications_open == 0


def test_the_page_action_sends_units_and_comes_back_to_the_agreement_page(study_factory, annotators, evaluator):
    study = study_factory(overlap=1)
    first = _judge_all(study, annotators[0])
    url = reverse("annotation:adjudicate", args=[study.pk])
    client = client_for(evaluator)
    response = client.post(url, {"units": f"{first[0]}, {first[1]}", "action": "more", "extra": "2"})
    assert response.status_code == 302 and response["Location"] == reverse("metrics:agreement", args=[study.pk])
    assert sorted(Unit.objects.filter(extra=2).values_list("pk", flat=True)) == sorted(first[:2])
    response = client.post(url, {"units": str(first[3]), "action": "expert", "expert": "ann2"})
    assert response.status_code == 302
    assert list(Adjudication.objects.values_list("unit_id", "expert__username")) == [(first[3], "ann2")]


@pytest.mark.parametrize("data, error", [
    ({"units": "99999999", "action": "more", "extra": "1"}, "no unit 99999999 in this study"),
    ({"units": "{u}", "action": "more", "extra": "11"}, "extra must be a whole number from 1 to 10"),
    ({"units": "{u}", "action": "more", "extra": "-1"}, "extra must be a whole number from 1 to 10"),
    ({"units": "{u}, x", "action": "more", "extra": "1"}, "unit id 'x' is not a whole number"),
    ({"units": "{u}", "action": "expert", "expert": "manny"}, "manny is not an annotator of this study"),
    ({"units": "{u}", "action": "expert", "expert": "ann1"}, "ann1 has already answered unit"),
    ({"units": "{u}", "action": "delete"}, "action must be 'more'"),
    ({"units": "", "action": "more", "extra": "1"}, "no unit ids given"),
])
def test_the_page_action_refuses_bad_input_by_name_and_writes_nothing(study_factory, annotators, evaluator, data,
                                                                      error):
    study = study_factory(overlap=1)
    first = _judge_all(study, annotators[0])
    data = {k: v.format(u=first[0]) for k, v in data.items()}
    needed = dict(Unit.objects.values_list("pk", "needed"))
    response = client_for(evaluator).post(reverse("annotation:adjudicate", args=[study.pk]), data)
    assert response.status_code == 400 and error in html.unescape(response.content.decode())
    assert dict(Unit.objects.values_list("pk", "needed")) == needed and not Adjudication.objects.exists()


def test_only_the_study_evaluator_may_adjudicate(study_factory, annotators, manager):
    study = study_factory(overlap=1)
    url = reverse("annotation:adjudicate", args=[study.pk])
    unit = Unit.objects.filter(study=study).first()
    data = {"units": str(unit.pk), "action": "more", "extra": "1"}
    assert client_for(manager).post(url, data).status_code == 403
    assert client_for(annotators[0]).post(url, data).status_code == 403
    assert client_for(manager).get(url).status_code == 405
    unit.refresh_from_db()
    assert unit.extra == 0


def _lease_queries(study, annotator) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    study = Study.objects.get(pk=study.pk)  # as the annotate view reads it
    with CaptureQueriesContext(connection) as ctx:
        assert services.assignment_next(study=study, annotator=annotator) is not None
    return len(ctx.captured_queries)


def test_a_lease_costs_nothing_more_without_reservations_and_one_statement_with_them(study_factory, annotators,
                                                                                       evaluator):
    study = study_factory(overlap=3)
    _lease_queries(study, annotators[1])  # the first lease sweeps expired ones; measure later leases
    services.judgment_submit(assignment=services.lease_held(study=study, annotator=annotators[1]), choice="left")
    plain = _lease_queries(study, annotators[1])
    services.judgment_submit(assignment=services.lease_held(study=study, annotator=annotators[1]), choice="left")
    unit = Unit.objects.filter(study=study, taken=0).first()
    adjudication.units_send_to_expert(study=study, unit_ids=[unit.pk], expert=annotators[2], actor=evaluator)
    assert _lease_queries(study, annotators[1]) == plain + 1  # not the expert: one indexed look, nothing found


def test_the_agreement_page_form_sends_ticked_units_and_shows_the_experts_verdict(study_factory, annotators,
                                                                                  evaluator, manager):
    """The least-agreed units carry a tick box for evaluators; the expert's verdict comes back as the
    unit's adjudicated label, beside the original judgments, which stay."""
    from arena.services import ratings_refresh
    from metrics.agreement_service import agreement_recompute

    study = study_factory(overlap=2)
    _judge_all(study, annotators[0], choice="left")
    _judge_all(study, annotators[1], choice="right")  # every pair split: all are contested
    ratings_refresh(study_id=study.pk)
    agreement_recompute(study_id=study.pk)
    url = reverse("metrics:agreement", args=[study.pk])
    page = client_for(evaluator).get(url).content.decode()
    ticks = [int(v) for v in __import__("re").findall(r'name="units" value="(\d+)"', page)]
    assert len(ticks) == 12 and 'id="adjudicate"' in page
    assert 'name="units"' not in client_for(manager).get(url).content.decode()  # managers read only
    before = _originals(study)
    response = client_for(evaluator).post(reverse("annotation:adjudicate", args=[study.pk]),
                                          {"units": ticks[:2], "action": "expert", "expert": "ann3"})
    assert response.status_code == 302
    study.refresh_from_db()  # as the next request would load it (its open-reservation counter)
    assert _judge_all(study, annotators[2], choice="left") == ticks[:2]  # served the two, nothing else
    assert _originals(study)[:len(before)] == before
    agreement_recompute(study_id=study.pk)
    page = client_for(evaluator).get(url).content.decode()
    for unit in ticks[:2]:
        section = page.split(f'data-unit="{unit}"')[1].split("</section>")[0]
        assert "adjudicated:" in section and "ann3 <span class=\"muted\">(expert)</span>" in section
    bad = client_for(evaluator).post(reverse("annotation:adjudicate", args=[study.pk]),
                                     {"units": ticks[2:3], "action": "more", "extra": "0"})
    assert bad.status_code == 400
    text = html.unescape(bad.content.decode())
    assert 'id="adjudicate-error"' in text and "extra must be a whole number from 1 to 10" in text
    assert 'id="agreement-least"' in text  # the page again, not a bare message
