"""Gold items, attention checks and the qualification quiz, through services and HTTP."""
from __future__ import annotations

import json
import random
import re

import pytest
from django.urls import reverse

from annotation import checks, services
from annotation.models import Assignment, AuditEntry, Judgment, Output, QuizAttempt, StudyMember, Unit
from arena import selectors as arena_selectors
from tests.conftest import client_for, on_screen

pytestmark = pytest.mark.django_db

LABELS = ["very poor", "poor", "fair", "good", "excellent"]
GOLD_CSV = (b"prompt,a,b,better,note\n"
            b"p1,alpha-model,beta-model,b,alpha ignores the question\n"
            b"p2,gamma-model,alpha-model,tie,both fine\n")


def _upload(client, study, content: bytes, name="checks.csv"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return client.post(reverse("annotation:checks_upload", args=[study.pk]),
                       {"checks": SimpleUploadedFile(name, content)})


def _answer_all(study, annotator, choose):
    """Lease and answer every task an annotator gets; returns the units in the order served."""
    served = []
    while (a := services.assignment_next(study=study, annotator=annotator)) is not None:
        served.append(Unit.objects.get(pk=a.unit_id))
        services.judgment_submit(assignment=a, choice=choose(a))
    return served


def test_an_uploaded_gold_pair_becomes_a_check_that_no_progress_or_rating_counts(client, study_factory, evaluator):
    study = study_factory()
    units_before = study.units.count()
    response = _upload(client_for(evaluator), study, GOLD_CSV)
    assert response.status_code == 302
    study.refresh_from_db()
    gold = list(Unit.objects.filter(study=study, is_gold=True).select_related("cand_lo", "cand_hi", "prompt"))
    assert len(gold) == 2
    assert study.units.count() == units_before  # the two pairs existed: they became the checks
    assert study.units_total == units_before - 2  # progress counts only what is left to measure
    by_prompt = {u.prompt.external_id: u for u in gold}
    p1 = by_prompt["p1"]
    better_output = p1.output_a if p1.expected["better"] == "a" else p1.output_b
    assert better_output.candidate.name == "beta-model"
    assert p1.expected == {"kind": "gold", "better": p1.expected["better"], "note": "alpha ignores the question"}
    assert by_prompt["p2"].expected["better"] == "tie"
    assert all(u.needed == 0 for u in gold)
    entry = AuditEntry.objects.get(study=study, action=AuditEntry.Action.CHECKS_ADDED)
    assert entry.detail == {"checks": 2, "from_existing_pairs": 2}


def test_a_bad_check_file_is_refused_whole_with_every_line_named(client, study_factory, evaluator):
    study = study_factory()
    client = client_for(evaluator)
    malformed = (b"prompt,a,b,better\n"
                 b"p1,alpha-model,beta-model,b\n"
                 b"p3,alpha-model,beta-model,left\n"
                 b"p4,alpha-model,alpha-model,a\n"
                 b"p2,alpha-model\n")
    response = _upload(client, study, malformed)
    assert response.status_code == 400
    html = response.content.decode()
    assert "nothing was saved" in html
    assert "line 3, field &#x27;better&#x27;: must be a, b or tie, got &#x27;left&#x27;" in html
    assert "line 4, field &#x27;b&#x27;: must name another candidate than a" in html
    assert "line 5, field &#x27;b&#x27;: is missing" in html
    unknown = (b"prompt,a,b,better\n"
               b"p1,alpha-model,beta-model,b\n"
               b"nope,alpha-model,beta-model,a\n"
               b"p2,alpha-model,delta-model,a\n"
               b"p1,beta-model,alpha-model,a\n")
    html = _upload(client, study, unknown).content.decode()
    assert "line 3, field &#x27;prompt&#x27;: no prompt with id &#x27;nope&#x27;" in html
    assert "line 4, field &#x27;b&#x27;: no candidate named &#x27;delta-model&#x27;" in html
    assert "line 5: the same check as line 2" in html
    assert not Unit.objects.filter(study=study, is_gold=True).exists()


def test_checks_are_served_at_the_rate_once_each_and_left_out_of_the_ratings(study_factory, annotators):
    study = study_factory(overlap=3)
    checks.checks_import(study=study, data=GOLD_CSV, filename="g.csv")
    checks.checks_settings_update(study=study, check_rate=50, gold_pass=70, quiz_size=0, quiz_pass=80,
                                  quiz_attempts=2)
    study.refresh_from_db()
    random.seed(7)
    served = _answer_all(study, annotators[0], lambda a: "left")
    gold_ids = set(Unit.objects.filter(study=study, is_gold=True).values_list("pk", flat=True))
    served_gold = [u.pk for u in served if u.pk in gold_ids]
    assert sorted(served_gold) == sorted(gold_ids)  # every check, each once
    assert len(served) == study.units_total + 2  # and every ordinary task too
    member = StudyMember.objects.get(study=study, user=annotators[0])
    assert member.done == len(served)  # a check counts as a task on the annotator's screen
    # the ratings' input leaves the check answers out; the checks page counts them
    counted = arena_selectors.study_judgments(study.pk).count()
    assert counted == len(served) - 2
    rows = {r.unit_id: r for r in checks.checks_list(study)}
    assert {r.answered for r in rows.values()} == {1}

    study.check_rate = 0
    study.save()
    other = _answer_all(study, annotators[1], lambda a: "left")
    assert not {u.pk for u in other} & gold_ids


def test_a_check_looks_like_any_task_on_the_page_and_in_the_api(client, study_factory, annotators):
    from rest_framework.authtoken.models import Token

    study = study_factory()
    checks.checks_import(study=study, data=GOLD_CSV, filename="g.csv")
    annotator = annotators[0]
    client = client_for(annotator)
    token = Token.objects.create(user=annotator).key

    def structure(html: str) -> list[str]:  # the page's tags and attributes, texts and tokens left out
        html = re.sub(r"[A-Za-z0-9_-]{43,}", "TOKEN", html)
        return re.findall(r"<[a-z]+[^>]*>", re.sub(r'value="[^"]*"', "", html))

    pages, payloads = {}, {}
    for rate in (100, 0):
        study.check_rate = rate
        study.save()
        Unit.objects.filter(study=study).update(taken=0)
        page = client.get(reverse("annotation:annotate", args=[study.pk])).content.decode()
        payload = client.get(f"/api/studies/{study.pk}/tasks/next", HTTP_AUTHORIZATION=f"Token {token}").json()
        held = services.lease_held(study=study, annotator=annotator)
        assert held.unit.is_gold == (rate == 100)
        pages[rate], payloads[rate] = on_screen(page), payload
        Assignment.objects.filter(annotator=annotator).delete()  # the task on screen and the one ahead
    assert structure(pages[100]) == structure(pages[0])
    assert sorted(payloads[100]) == sorted(payloads[0])
    assert sorted(payloads[100]["outputs"][0]) == sorted(payloads[0]["outputs"][0])
    for text in (pages[100], json.dumps(payloads[100])):
        for word in ("gold", "attention", "expected", "is_gold"):
            assert word not in text.lower(), text[max(0, text.lower().find(word) - 300):][:600]
        for name in ("alpha-model", "beta-model", "gamma-model"):
            assert name not in text


def test_check_accuracy_scores_answers_and_the_quality_table_flags_below_the_pass_mark(study_factory, annotators):
    study = study_factory(overlap=3)
    checks.checks_import(study=study, data=GOLD_CSV, filename="g.csv")
    made = checks.checks_make_attention(study=study, count=4, seed=3)
    assert made == 4
    expected = dict(Unit.objects.filter(study=study, is_gold=True).values_list("pk", "expected"))
    good, bad = annotators[0], annotators[1]
    for annotator, right in ((good, True), (bad, False)):
        for unit_id, exp in expected.items():
            assignment = services._lease_check(study, annotator, services.timezone.now())
            assert assignment is not None and assignment.unit_id in expected
            exp = expected[assignment.unit_id]
            better = exp["better"]
            if better == "tie":
                choice = "tie" if right else "left"
            else:
                shown_left = "a" if assignment.left_is_a else "b"
                wants_left = better == shown_left
                choice = ("left" if wants_left else "right") if right else ("right" if wants_left else "left")
            services.judgment_submit(assignment=assignment, choice=choice)
        assert services._lease_check(study, annotator, services.timezone.now()) is None  # each check once
    scores = checks.check_accuracy(study)
    assert scores[good.pk] == (6, 6)
    assert scores[bad.pk] == (0, 6)
    from metrics import gold

    assert not gold.below_pass(*scores[good.pk], 0.7)
    assert gold.below_pass(*scores[bad.pk], 0.7)
    rows = {r.unit_id: r for r in checks.checks_list(study)}
    assert all(r.answered == 2 and r.right == 1 for r in rows.values())


def test_attention_checks_pair_an_on_topic_answer_with_an_answer_to_another_prompt(study_factory):
    study = study_factory()
    assert checks.checks_make_attention(study=study, count=6, seed=11) == 6
    for unit in Unit.objects.filter(study=study, is_gold=True).select_related("output_a", "output_b"):
        exp = unit.expected
        assert exp["kind"] == "attention"
        on, off = (unit.output_a, unit.output_b) if exp["better"] == "a" else (unit.output_b, unit.output_a)
        assert on.prompt_id == unit.prompt_id and off.prompt_id != unit.prompt_id
        assert on.candidate_id != off.candidate_id
    assert Unit.objects.filter(study=study, is_gold=False).count() == study.units_total


def test_likert_gold_and_attention_checks_are_scored_on_their_criteria(study_factory, annotators):
    study = study_factory()
    services.study_update_tasks(study=study, tasks={
        "task_kinds": "likert",
        "likert_criteria": [{"key": "relevance", "name": "Relevance", "scale": 5, "labels": LABELS},
                            {"key": "factuality", "name": "Factuality", "scale": 5, "labels": LABELS}],
    })
    services.units_build(study=study)
    study.refresh_from_db()
    checks.checks_import(study=study, data=b"prompt,candidate,rating:relevance,rating:factuality\n"
                                           b"p1,alpha-model,4-5,5\n", filename="g.csv")
    with pytest.raises(checks.CheckError, match="criterion"):
        checks.checks_make_attention(study=study, count=2, criterion="style", at_most=2)
    assert checks.checks_make_attention(study=study, count=2, criterion="relevance", at_most=2, seed=5) == 2
    annotator = annotators[0]
    right = wrong = 0
    while (a := services._lease_check(study, annotator, services.timezone.now())) is not None:
        exp = Unit.objects.get(pk=a.unit_id).expected
        if exp["kind"] == "gold":
            ratings = {"relevance": 5, "factuality": 4}  # factuality must be 5: wrong
            wrong += 1
        else:
            ratings = {"relevance": 1, "factuality": 3}
            right += 1
        services.judgment_submit(assignment=a, ratings=ratings)
    assert (right, wrong) == (2, 1)
    assert checks.check_accuracy(study)[annotator.pk] == (2, 3)
    # each output keeps its own Likert unit (one of them now the gold item) beside the attention
    # checks that show it under another prompt; rebuilding makes no second one
    services.units_build(study=study)
    outputs = Output.objects.filter(study=study, status="done").count()
    own = Unit.objects.filter(study=study, kind="likert").exclude(is_gold=True, expected__kind="attention")
    assert own.count() == outputs and own.filter(is_gold=True).count() == 1


def test_removing_a_check_takes_its_answers_and_counts_back(client, study_factory, evaluator, annotators):
    study = study_factory()
    checks.checks_import(study=study, data=GOLD_CSV, filename="g.csv")
    unit = Unit.objects.filter(study=study, is_gold=True).first()
    a = services._lease_check(study, annotators[0], services.timezone.now())
    services.judgment_submit(assignment=a, choice="tie")
    assert StudyMember.objects.get(study=study, user=annotators[0]).done == 1
    check_unit = Unit.objects.get(pk=a.unit_id)
    response = client_for(evaluator).post(reverse("annotation:check_remove", args=[study.pk, check_unit.pk]))
    assert response.status_code == 302
    assert not Unit.objects.filter(pk=check_unit.pk).exists()
    assert not Judgment.objects.filter(study=study).exists()
    assert StudyMember.objects.get(study=study, user=annotators[0]).done == 0
    # an ordinary unit is not a check: 404
    ordinary = Unit.objects.filter(study=study, is_gold=False).first()
    assert client_for(evaluator).post(reverse("annotation:check_remove", args=[study.pk, ordinary.pk])).status_code == 404
    assert unit is not None


def _quiz_choice(attempt, index, right: bool) -> str:
    unit = Unit.objects.get(pk=attempt.items[index])
    better = unit.expected["better"]
    if better == "tie":
        return "tie" if right else "left"
    left_is_a = attempt.sides[index]
    wants = "left" if (better == "a") == left_is_a else "right"
    return wants if right else ("right" if wants == "left" else "left")


def test_the_quiz_comes_before_the_first_task_and_admits_at_the_pass_mark(client, study_factory, annotators):
    study = study_factory()
    checks.checks_import(study=study, data=GOLD_CSV, filename="g.csv")
    checks.checks_make_attention(study=study, count=2, seed=1)
    with pytest.raises(checks.CheckError, match="quiz_size: the quiz asks 3 gold items but the study has 2"):
        checks.checks_settings_update(study=study, check_rate=0, gold_pass=70, quiz_size=3, quiz_pass=100,
                                      quiz_attempts=2)
    checks.checks_settings_update(study=study, check_rate=0, gold_pass=70, quiz_size=2, quiz_pass=100,
                                  quiz_attempts=2)
    annotator = annotators[0]
    client = client_for(annotator)
    annotate = reverse("annotation:annotate", args=[study.pk])
    response = client.get(annotate)
    assert response.status_code == 302 and response["Location"] == reverse("annotation:quiz", args=[study.pk])
    assert "Start the quiz" in client.get(response["Location"]).content.decode()

    # first try: one wrong answer, so 50% < 100%
    client.post(reverse("annotation:quiz_start", args=[study.pk]))
    attempt = QuizAttempt.objects.get(study=study, user=annotator)
    assert all(Unit.objects.get(pk=pk).expected["kind"] == "gold" for pk in attempt.items)  # never attention checks
    page = client.post(reverse("annotation:quiz_answer", args=[study.pk]),
                       {"index": 0, "choice": _quiz_choice(attempt, 0, right=False)}).content.decode()
    assert "Not quite." in page and "The expected answer:" in page
    page = client.post(reverse("annotation:quiz_answer", args=[study.pk]),
                       {"index": 1, "choice": _quiz_choice(attempt, 1, right=True)}).content.decode()
    assert "Right." in page and "1 of 2 right" in page and "not passed" in page and "Try again" in page
    assert client.get(annotate).status_code == 302  # still not admitted
    # answering a question twice, or out of turn, is refused
    assert client.post(reverse("annotation:quiz_answer", args=[study.pk]), {"index": 0, "choice": "left"}
                       ).status_code == 409

    client.post(reverse("annotation:quiz_start", args=[study.pk]))
    second = QuizAttempt.objects.get(study=study, user=annotator, number=2)
    assert client.post(reverse("annotation:quiz_answer", args=[study.pk]), {"index": 1, "choice": "left"}
                       ).status_code == 400  # out of turn
    for index in range(2):
        page = client.post(reverse("annotation:quiz_answer", args=[study.pk]),
                           {"index": index, "choice": _quiz_choice(second, index, right=True)}).content.decode()
    assert "2 of 2 right" in page and "passed" in page and "Start the tasks" in page
    assert StudyMember.objects.get(study=study, user=annotator).qualified_at is not None
    response = client.get(annotate)
    assert response.status_code == 200 and 'id="task-form"' in response.content.decode()
    assert not Judgment.objects.filter(study=study).exists()  # quiz answers are not judgments


def test_an_annotator_out_of_tries_is_told_so_and_gets_no_task(client, study_factory, annotators):
    study = study_factory()
    checks.checks_import(study=study, data=GOLD_CSV, filename="g.csv")
    checks.checks_settings_update(study=study, check_rate=0, gold_pass=70, quiz_size=1, quiz_pass=100,
                                  quiz_attempts=1)
    client = client_for(annotators[1])
    client.post(reverse("annotation:quiz_start", args=[study.pk]))
    attempt = QuizAttempt.objects.get(study=study, user=annotators[1])
    client.post(reverse("annotation:quiz_answer", args=[study.pk]),
                {"index": 0, "choice": _quiz_choice(attempt, 0, right=False)})
    page = client.get(reverse("annotation:quiz", args=[study.pk])).content.decode()
    assert "did not reach the pass mark in 1 try" in page
    assert client.post(reverse("annotation:quiz_start", args=[study.pk])).status_code == 409
    assert client.get(reverse("annotation:annotate", args=[study.pk])).status_code == 302


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_asked_attention_check_is_made_while_distinct_pairs_are_left(study_factory, seed):
    # 4 prompts x 2 candidates: 6 prompt pairs x 2 ways to split the candidates = 12 distinct
    # pairs of outputs.  Each pair could be shown under either of its two prompts, but the
    # database holds a pair of outputs once, so 12 is the most there can be, and asking for
    # all 12 must make all 12 (it once made fewer, at random, and the page said so).
    study = study_factory(candidates=("alpha-model", "beta-model"))
    assert checks.checks_make_attention(study=study, count=12, seed=seed) == 12
    assert checks.checks_make_attention(study=study, count=3, seed=seed + 10) == 0
    pairs = Unit.objects.filter(study=study, is_gold=True).values_list("output_a", "output_b")
    assert len(set(pairs)) == 12


def test_only_the_studys_evaluator_manages_checks(client, study_factory, evaluator, annotators, manager):
    study = study_factory()
    for user in (annotators[0], manager):
        c = client_for(user)
        assert c.get(reverse("annotation:checks", args=[study.pk])).status_code == 403
        assert _upload(c, study, GOLD_CSV).status_code == 403
        assert c.post(reverse("annotation:checks_attention", args=[study.pk]), {"count": 2}).status_code == 403
    assert not Unit.objects.filter(study=study, is_gold=True).exists()
    c = client_for(evaluator)
    assert c.post(reverse("annotation:checks_attention", args=[study.pk]), {"count": 3}).status_code == 302
    page = c.get(reverse("annotation:checks", args=[study.pk])).content.decode()
    assert "3 attention checks" in page and "answer to another prompt" in page
    bad = c.post(reverse("annotation:checks_settings", args=[study.pk]),
                 {"check_rate": 80, "gold_pass": 70, "quiz_size": 0, "quiz_pass": 80, "quiz_attempts": 2})
    assert bad.status_code == 400 and "check_rate" in bad.content.decode()


def test_the_quality_table_shows_each_annotators_share_of_checks_right(study_factory, evaluator, annotators):
    from arena.services import ratings_refresh

    study = study_factory(overlap=3)
    checks.checks_make_attention(study=study, count=6, seed=2)
    for annotator, right in ((annotators[0], True), (annotators[1], False)):
        while (a := services._lease_check(study, annotator, services.timezone.now())) is not None:
            better = Unit.objects.get(pk=a.unit_id).expected["better"]
            wants_left = (better == "a") == a.left_is_a
            services.judgment_submit(assignment=a, choice="left" if wants_left == right else "right")
    ratings_refresh(study_id=study.pk)
    page = client_for(evaluator).get(reverse("annotation:quality", args=[study.pk])).content.decode()
    rows = {m.group(1): m.group(2) for m in re.finditer(r'<td>(ann\d)</td>.*?<td class="gold-cell">(.*?)</td>',
                                                          page, re.S)}
    # Wilson 95% intervals for 6 of 6 and 0 of 6: [61%, 100%] and [0%, 39%]
    assert rows["ann1"].startswith("100% of 6 <span class=\"muted\">(61–100%)</span>") and "under" not in rows["ann1"]
    assert rows["ann2"].startswith("0% of 6 <span class=\"muted\">(0–39%)</span>")
    assert "under the pass mark of 70%" in rows["ann2"]
    assert "no check answered" in rows["ann3"]


def test_answers_to_checks_stay_out_of_the_judgments_export(client, study_factory, evaluator, annotators):
    study = study_factory()
    checks.checks_import(study=study, data=GOLD_CSV, filename="g.csv")
    checks.checks_settings_update(study=study, check_rate=50, gold_pass=70, quiz_size=0, quiz_pass=80,
                                  quiz_attempts=2)
    study.refresh_from_db()
    random.seed(3)
    served = _answer_all(study, annotators[0], lambda a: "left")
    answered_checks = sum(u.is_gold for u in served)
    assert answered_checks == 2
    lines = client_for(evaluator).get(f"/api/studies/{study.pk}/judgments?format=jsonl")
    rows = [json.loads(line) for line in b"".join(lines.streaming_content).decode().splitlines() if line]
    assert len(rows) == len(served) - answered_checks == Judgment.objects.filter(study=study).count() - 2


def test_the_api_sends_an_annotator_who_must_pass_the_quiz_to_it(study_factory, annotators):
    from rest_framework.authtoken.models import Token

    study = study_factory()
    checks.checks_import(study=study, data=GOLD_CSV, filename="g.csv")
    checks.checks_settings_update(study=study, check_rate=0, gold_pass=70, quiz_size=1, quiz_pass=100,
                                  quiz_attempts=1)
    client = client_for(annotators[0])
    auth = {"HTTP_AUTHORIZATION": f"Token {Token.objects.create(user=annotators[0]).key}"}
    payload = client.get(f"/api/studies/{study.pk}/tasks/next", **auth).json()
    assert payload["state"] == "quiz" and payload["token"] is None
    assert payload["detail"].endswith(reverse("annotation:quiz", args=[study.pk]))
    StudyMember.objects.filter(study=study, user=annotators[0]).update(qualified_at=services.timezone.now())
    assert client.get(f"/api/studies/{study.pk}/tasks/next", **auth).json()["state"] == "open"
