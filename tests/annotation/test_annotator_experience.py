"""The annotator's experience: the study's instructions before the first task."""
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from annotation import services
from annotation.models import AuditEntry, Study, StudyMember

pytestmark = pytest.mark.django_db

INSTRUCTIONS = "# How to judge\n\nPrefer the **correct** answer.\n\n<script>alert(1)</script>\n"


def _token(html: str) -> str | None:
    m = re.search(r'action="/tasks/([^"/]+)/"', html)
    return m.group(1) if m else None


@pytest.fixture
def study(study_factory, evaluator):
    study = study_factory()
    return services.study_set_instructions(study=study, text=INSTRUCTIONS, actor=evaluator)


def test_instructions_are_stored_sanitised_and_audited(study, evaluator):
    assert study.instructions == INSTRUCTIONS.strip()
    assert "<strong>correct</strong>" in study.instructions_html and "<script" not in study.instructions_html
    entry = AuditEntry.objects.filter(study=study, action=AuditEntry.Action.SETTINGS_CHANGED).latest("id")
    assert entry.actor == evaluator and "instructions" in entry.detail


def test_evaluator_sets_instructions_on_the_study_page(client, study_factory, evaluator):
    study = study_factory()
    client.force_login(evaluator)
    page = client.get(reverse("annotation:study", args=[study.pk])).content.decode()
    assert 'id="instructions-form"' in page
    response = client.post(reverse("annotation:instructions_edit", args=[study.pk]), {"instructions": "Be *kind*."})
    assert response.status_code == 302
    study.refresh_from_db()
    assert study.instructions == "Be *kind*." and "<em>kind</em>" in study.instructions_html
    page = client.get(response.url).content.decode()
    assert "Instructions saved." in page and "Be *kind*." in page


def test_instructions_too_long_are_refused_with_the_field_named(client, study_factory, evaluator):
    study = study_factory()
    client.force_login(evaluator)
    response = client.post(reverse("annotation:instructions_edit", args=[study.pk]), {"instructions": "x" * 20_001},
                           follow=True)
    assert "Instructions not saved: instructions:" in response.content.decode()
    study.refresh_from_db()
    assert study.instructions == ""


def test_only_the_evaluator_sets_instructions(client, study, annotators, manager):
    for user in (annotators[0], manager):
        client.force_login(user)
        response = client.post(reverse("annotation:instructions_edit", args=[study.pk]), {"instructions": "Mine"})
        assert response.status_code == 403
    study.refresh_from_db()
    assert study.instructions == INSTRUCTIONS.strip()


def test_create_form_takes_instructions(client, evaluator):
    from tests.conftest import PROMPTS_CSV
    from django.core.files.uploadedfile import SimpleUploadedFile
    client.force_login(evaluator)
    response = client.post(reverse("annotation:study_create"), {
        "name": "With instructions", "overlap": "1", "max_new_tokens": "16", "temperature": "0", "seed": "0",
        "task_kinds": "pairwise", "ask_rationale": "optional", "instructions": "Read *carefully*.",
        "prompts": SimpleUploadedFile("p.csv", PROMPTS_CSV)})
    assert response.status_code == 302, response.content.decode()[:2000]
    study = Study.objects.get(name="With instructions")
    assert study.instructions == "Read *carefully*." and "<em>carefully</em>" in study.instructions_html


def test_first_visit_shows_instructions_and_start_leads_to_the_task(client, study, annotators):
    client.force_login(annotators[0])
    annotate = reverse("annotation:annotate", args=[study.pk])
    response = client.get(annotate)
    assert response.status_code == 302 and response.url == reverse("annotation:instructions", args=[study.pk])
    page = client.get(response.url).content.decode()
    assert "<h1>How to judge</h1>" in page and "<script>alert" not in page
    assert ">Start <kbd>Enter</kbd></button>" in page
    assert _token(page) is None  # no task before Start
    start = client.post(response.url)
    assert start.status_code == 302 and start.url == annotate
    member = StudyMember.objects.get(study=study, user=annotators[0])
    assert member.instructions_seen_at is not None
    page = client.get(annotate).content.decode()
    assert _token(page) and 'id="instructions-link"' in page


def test_htmx_request_before_start_is_redirected_by_htmx(client, study, annotators):
    client.force_login(annotators[0])
    response = client.get(reverse("annotation:annotate", args=[study.pk]), HTTP_HX_REQUEST="true")
    assert response.headers["HX-Redirect"] == reverse("annotation:instructions", args=[study.pk])


def test_instructions_stay_reachable_after_start(client, study, annotators):
    client.force_login(annotators[0])
    url = reverse("annotation:instructions", args=[study.pk])
    client.post(url)
    page = client.get(url).content.decode()
    assert "<h1>How to judge</h1>" in page and "Back to the task" in page
    first = StudyMember.objects.get(study=study, user=annotators[0]).instructions_seen_at
    client.post(url)  # a second press keeps the first acknowledgement
    assert StudyMember.objects.get(study=study, user=annotators[0]).instructions_seen_at == first


def test_annotator_who_already_judged_goes_straight_to_the_task(client, study_factory, annotators, evaluator):
    study = study_factory()
    client.force_login(annotators[0])
    annotate = reverse("annotation:annotate", args=[study.pk])
    token = _token(client.get(annotate).content.decode())
    assert client.post(reverse("annotation:submit", args=[token]), {"choice": "left"}).status_code == 200
    services.study_set_instructions(study=study, text="New rules", actor=evaluator)
    response = client.get(annotate)
    assert response.status_code == 200 and _token(response.content.decode())


def test_study_without_instructions_goes_straight_to_the_task(client, study_factory, annotators):
    study = study_factory()
    client.force_login(annotators[0])
    response = client.get(reverse("annotation:annotate", args=[study.pk]))
    assert response.status_code == 200 and _token(response.content.decode())
    page = client.get(reverse("annotation:instructions", args=[study.pk])).content.decode()
    assert "This study has no instructions" in page


# The annotate page for an annotator holding a task (the session comes from the cache): the
# user, the membership with its study (where the acknowledgement is read), the held lease
# with the task's texts, and the task fetched ahead with its texts.  Instructions add no
# query once acknowledged.
ANNOTATE_QUERIES = 4


def _annotate_queries(client, study) -> int:
    url = reverse("annotation:annotate", args=[study.pk])
    client.get(url)  # take the lease
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200 and _token(response.content.decode())
    return len(ctx.captured_queries)


def test_later_visits_cost_the_same_queries_as_a_study_without_instructions(client, study, study_factory,
                                                                           annotators):
    client.force_login(annotators[0])
    client.post(reverse("annotation:instructions", args=[study.pk]))
    with_instructions = _annotate_queries(client, study)
    plain = study_factory()
    assert with_instructions == _annotate_queries(client, plain) == ANNOTATE_QUERIES


def test_instructions_page_is_for_the_study_annotators(client, study, evaluator, manager, make_user):
    url = reverse("annotation:instructions", args=[study.pk])
    client.force_login(evaluator)
    assert client.get(url).status_code == 403
    client.force_login(manager)
    assert client.get(url).status_code == 403
    client.force_login(make_user("stranger"))
    assert client.get(url).status_code == 404 and client.post(url).status_code == 404


# --- skip with a reason ---------------------------------------------------------------------

from datetime import timedelta  # noqa: E402

from django.utils import timezone  # noqa: E402

from annotation.models import Assignment, Judgment, Skip, Unit  # noqa: E402
from arena.models import RatingRequest  # noqa: E402


def _assert_counters(study) -> None:
    """Unit.taken equals the assignments holding a place; done equals the judgments."""
    for unit in Unit.objects.filter(study=study):
        assert unit.taken == Assignment.objects.filter(unit=unit, released=False).count() <= unit.needed
    for member in StudyMember.objects.filter(study=study, role="annotator"):
        assert member.done == Judgment.objects.filter(study=study, annotator=member.user).count()


def _task(client, study) -> str:
    return _token(client.get(reverse("annotation:annotate", args=[study.pk])).content.decode())


def test_skip_gives_the_place_to_someone_else_and_serves_the_next_task(client, study_factory, annotators):
    study = study_factory()
    client.force_login(annotators[0])
    token = _task(client, study)
    held = Assignment.objects.get(token=token)
    response = client.post(reverse("annotation:skip", args=[token]), {"reason": "broken", "note": ""},
                           HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    nxt = _token(response.content.decode())
    assert nxt and nxt != token  # the next task, in the same round trip
    skip = Skip.objects.get()
    assert (skip.unit_id, skip.annotator_id, skip.reason) == (held.unit_id, annotators[0].pk, "broken")
    assert Unit.objects.get(pk=held.unit_id).taken == 0  # the place was given back
    assert StudyMember.objects.get(study=study, user=annotators[0]).done == 0
    assert not Judgment.objects.exists()
    _assert_counters(study)
    # another annotator gets the unit (overlap 1, so it is the only one that can take it)
    Unit.objects.filter(study=study, taken=0).exclude(pk=held.unit_id).update(needed=0)
    client.force_login(annotators[1])
    assert Assignment.objects.get(token=_task(client, study)).unit_id == held.unit_id
    _assert_counters(study)


def test_a_skipped_unit_is_never_served_to_the_same_annotator_again(client, study_factory, annotators, settings):
    settings.EVALSITE_FETCH_AHEAD = False  # one lease at a time: closing the other units leaves only this one
    study = study_factory()
    client.force_login(annotators[0])
    token = _task(client, study)
    unit_id = Assignment.objects.get(token=token).unit_id
    Unit.objects.filter(study=study).exclude(pk=unit_id).update(needed=0)  # it is the only open unit
    response = client.post(reverse("annotation:skip", args=[token]), {"reason": "cant_judge"})
    assert "All done" in response.content.decode() and _token(response.content.decode()) is None
    assert "All done" in client.get(reverse("annotation:annotate", args=[study.pk])).content.decode()
    # even once its lease time is long past and swept
    services.leases_release_expired(study_id=study.pk, now=timezone.now() + timedelta(days=1))
    assert _task(client, study) is None
    _assert_counters(study)


def test_other_needs_words_and_a_bad_reason_is_refused_naming_the_field(client, study_factory, annotators):
    study = study_factory()
    client.force_login(annotators[0])
    token = _task(client, study)
    response = client.post(reverse("annotation:skip", args=[token]), {"reason": "other", "note": "  "})
    assert response.status_code == 400 and "note:" in response.content.decode()
    assert _token(response.content.decode()) == token  # the same task stays on screen
    response = client.post(reverse("annotation:skip", args=[token]), {"reason": "bored"})
    assert response.status_code == 400 and "reason:" in response.content.decode()
    assert not Skip.objects.exists() and Assignment.objects.get(token=token).submitted_at is None
    response = client.post(reverse("annotation:skip", args=[token]), {"reason": "other", "note": "garbled"})
    assert response.status_code == 200 and Skip.objects.get().note == "garbled"


def test_a_skipped_task_takes_no_vote_and_a_judged_task_no_skip(client, study_factory, annotators):
    study = study_factory()
    client.force_login(annotators[0])
    token = _task(client, study)
    client.post(reverse("annotation:skip", args=[token]), {"reason": "offensive"})
    response = client.post(reverse("annotation:submit", args=[token]), {"choice": "left"})
    assert response.status_code == 409 and "You skipped this task" in response.content.decode()
    # the same skip again changes nothing
    assert client.post(reverse("annotation:skip", args=[token]), {"reason": "offensive"}).status_code == 200
    assert Skip.objects.count() == 1
    judged = _task(client, study)
    client.post(reverse("annotation:submit", args=[judged]), {"choice": "tie"})
    response = client.post(reverse("annotation:skip", args=[judged]), {"reason": "broken"})
    assert response.status_code == 409 and "already judged" in response.content.decode()
    assert Skip.objects.count() == 1 and Judgment.objects.count() == 1
    _assert_counters(study)


def test_skipping_an_expired_lease_records_it_without_touching_the_units_places(client, study_factory, annotators):
    study = study_factory()
    client.force_login(annotators[0])
    token = _task(client, study)
    services.leases_release_expired(study_id=study.pk, now=timezone.now() + timedelta(days=1))
    unit_id = Assignment.objects.get(token=token).unit_id
    assert client.post(reverse("annotation:skip", args=[token]), {"reason": "cant_judge"}).status_code == 200
    assert Unit.objects.get(pk=unit_id).taken == 0 and Skip.objects.filter(unit_id=unit_id).exists()
    _assert_counters(study)


def test_exclusion_and_readmission_keep_a_skipped_place_given_back(client, study_factory, annotators, evaluator):
    study = study_factory()
    client.force_login(annotators[0])
    skipped = _task(client, study)
    client.post(reverse("annotation:skip", args=[skipped]), {"reason": "broken"})
    _vote(client, _task(client, study))
    services.member_exclude(study=study, user=annotators[0], actor=evaluator)
    _assert_counters(study)
    services.member_exclude(study=study, user=annotators[0], excluded=False, actor=evaluator)
    _assert_counters(study)
    assert Unit.objects.get(pk=Assignment.objects.get(token=skipped).unit_id).taken == 0


def test_someone_elses_task_cannot_be_skipped_or_undone(client, study_factory, annotators):
    study = study_factory()
    client.force_login(annotators[0])
    token = _task(client, study)
    client.force_login(annotators[1])
    assert client.post(reverse("annotation:skip", args=[token]), {"reason": "broken"}).status_code == 404
    assert client.post(reverse("annotation:undo", args=[token])).status_code == 404
    assert not Skip.objects.exists()


def test_evaluator_sees_skips_per_candidate_with_reasons(client, study_factory, annotators, evaluator, manager):
    study = study_factory(candidates=("alpha-model", "beta-model"))
    client.force_login(annotators[0])
    client.post(reverse("annotation:skip", args=[_task(client, study)]), {"reason": "other", "note": "in French"})
    client.post(reverse("annotation:skip", args=[_task(client, study)]), {"reason": "broken"})
    client.force_login(evaluator)
    page = client.get(reverse("annotation:judgments", args=[study.pk])).content.decode()
    assert "2 skips" in page and "in French" in page and "Broken output" in page
    table = page.split('id="skips-per-candidate"', 1)[1].split("</table>", 1)[0]
    # both skips were of the one pair: each candidate counts 2 (Can't judge 0, Offensive 0, Broken 1, Other 1)
    assert "<td>alpha-model</td><td>2</td><td>0</td><td>0</td><td>1</td><td>1</td>" in table
    assert "<td>beta-model</td><td>2</td>" in table
    assert "ann1" in page.split('id="skips-latest"', 1)[1]
    client.force_login(manager)
    page = client.get(reverse("annotation:judgments", args=[study.pk])).content.decode()
    assert "in French" in page and "ann1" not in page.split('id="skips-latest"', 1)[1]  # pseudonyms for managers


# --- undo the last judgment ---------------------------------------------------------------


def _vote(client, token, choice="left"):
    return client.post(reverse("annotation:submit", args=[token]), {"choice": choice}, HTTP_HX_REQUEST="true")


def test_undo_within_the_window_restores_the_task_and_the_counters(client, study_factory, annotators):
    study = study_factory()
    client.force_login(annotators[0])
    token = _task(client, study)
    unit_id = Assignment.objects.get(token=token).unit_id
    response = _vote(client, token)
    page = response.content.decode()
    assert 'id="undo-form"' in page and f"/tasks/{token}/undo/" in page
    nxt = _token(page.split('id="task-form"', 1)[1])
    nxt_unit = Assignment.objects.get(token=nxt).unit_id
    version = Study.objects.get(pk=study.pk).version
    RatingRequest.objects.filter(study_id=study.pk).update(pending=False)
    response = client.post(reverse("annotation:undo", args=[token]), HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    page = response.content.decode()
    assert _token(page) == token and 'id="undo-form"' not in page  # the same task again
    assert not Judgment.objects.exists()
    assert StudyMember.objects.get(study=study, user=annotators[0]).done == 0
    assert Unit.objects.get(pk=unit_id).taken == 1  # still theirs
    assert Unit.objects.get(pk=nxt_unit).taken == 0  # the task served next went back
    assert Study.objects.get(pk=study.pk).version == version + 1
    assert RatingRequest.objects.filter(study_id=study.pk, pending=True).exists()
    _assert_counters(study)
    # vote again: recorded once, counters right
    assert _vote(client, token, "right").status_code == 200
    assert Judgment.objects.get().assignment.token == token
    _assert_counters(study)


def test_a_second_undo_is_refused(client, study_factory, annotators):
    study = study_factory()
    client.force_login(annotators[0])
    token = _task(client, study)
    _vote(client, token)
    assert client.post(reverse("annotation:undo", args=[token])).status_code == 200
    response = client.post(reverse("annotation:undo", args=[token]))
    assert response.status_code == 409 and "no judgment on this task to undo" in response.content.decode()
    _assert_counters(study)


def test_undo_after_the_window_is_refused_naming_the_setting(client, study_factory, annotators, settings):
    study = study_factory()
    client.force_login(annotators[0])
    token = _task(client, study)
    _vote(client, token)
    Judgment.objects.update(submitted_at=timezone.now() - timedelta(seconds=31))
    response = client.post(reverse("annotation:undo", args=[token]))
    assert response.status_code == 409
    assert "within 30 seconds (EVALSITE_UNDO_SECONDS)" in response.content.decode()
    assert Judgment.objects.count() == 1 and StudyMember.objects.get(study=study, user=annotators[0]).done == 1
    settings.EVALSITE_UNDO_SECONDS = 0  # undo off: no button after a vote
    assert 'id="undo-form"' not in _vote(client, _task(client, study)).content.decode()


def test_only_the_latest_judgment_can_be_undone(client, study_factory, annotators):
    study = study_factory()
    client.force_login(annotators[0])
    first = _task(client, study)
    _vote(client, first)
    second = _task(client, study)
    _vote(client, second)
    response = client.post(reverse("annotation:undo", args=[first]))
    assert response.status_code == 409 and "Only your latest judgment" in response.content.decode()
    assert Judgment.objects.count() == 2


# --- skip and undo while others lease (run on PostgreSQL in CI; SQLite serialises writers) ---


@pytest.mark.django_db(transaction=True)
def test_skips_and_undos_among_concurrent_annotators_never_overfill_a_unit(study_factory, make_user):
    from django.db.models import Count as _Count

    from tests.annotation.test_vote_path import _in_threads, _prompts

    study = study_factory(candidates=("alpha-model", "beta-model", "gamma-model"), prompts=_prompts(6), overlap=2)
    crowd = [make_user(f"crowd{i}") for i in range(6)]
    for user in crowd:
        services.member_set(study=study, user=user, role="annotator")

    def annotate(i):
        n = 0
        while (a := services.assignment_next(study=study, annotator=crowd[i])) is not None:
            n += 1
            if (n + i) % 3 == 0:
                services.task_skip(assignment=a, reason="cant_judge")
                continue
            services.judgment_submit(assignment=a, choice="left")
            if (n + i) % 4 == 0:  # think again: undo (while others lease) and vote the other way
                services.judgment_undo(assignment=a)
                services.judgment_submit(assignment=a, choice="right")
        return n

    _in_threads(len(crowd), annotate)
    _assert_counters(study)
    # a place given back after the others had stopped asking goes to whoever asks next
    for user in crowd:
        while (a := services.assignment_next(study=study, annotator=user)) is not None:
            services.judgment_submit(assignment=a, choice="tie")
    _assert_counters(study)
    judged = dict(Judgment.objects.filter(study=study).values_list("unit").annotate(n=_Count("id")))
    for unit in Unit.objects.filter(study=study):
        assert judged.get(unit.pk, 0) == unit.taken <= unit.needed
        if unit.taken < unit.needed:  # a place left open only when everyone judged or skipped it
            seen = set(Judgment.objects.filter(unit=unit).values_list("annotator_id", flat=True)) | set(
                Skip.objects.filter(unit=unit).values_list("annotator_id", flat=True))
            assert seen == {u.pk for u in crowd}
    assert not Judgment.objects.filter(study=study, assignment__skip__isnull=False).exists()
    assert Skip.objects.filter(study=study).exists()
    assert not Judgment.objects.values("unit", "annotator").annotate(n=_Count("id")).filter(n__gt=1).exists()
