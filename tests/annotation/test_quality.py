"""Ties by rule, the annotator quality table and the judgments page with rationales."""
import pytest
from django.urls import reverse

from annotation import neardup, services
from annotation.models import Assignment, Judgment, Unit
from arena.services import ratings_refresh
from tests.conftest import PROMPTS_CSV, client_for, imported_jsonl

pytestmark = pytest.mark.django_db

LONG = " ".join(f"word{i}" for i in range(60))


@pytest.mark.parametrize("a, b, similar", [
    ("Use the reset link.", "Use the reset link.", True),
    ("Use the  reset\nlink.", "use the reset link.", True),  # whitespace and case ignored
    (LONG + " end", LONG + " fin", True),  # 61 of 62 words the same: 98 %
    ("Use the reset link.", "Call support instead.", False),
    (LONG, LONG[: len(LONG) // 2], False),  # lengths too far apart
    ("", "", True),
])
def test_near_identical_rule(a, b, similar):
    assert neardup.similarity_at_least(a, b, 95) is similar


def test_the_rule_is_off_at_zero_and_exact_at_a_hundred():
    assert not neardup.similarity_at_least("same", "same", 0)
    assert neardup.similarity_at_least("Same ", "same", 100)
    assert not neardup.similarity_at_least(LONG + " end", LONG + " fin", 100)


@pytest.fixture
def tied(evaluator, annotators, manager):
    """Three candidates over four prompts: alpha and beta answer p1 identically (up to spacing) and p2
    nearly so; gamma differs everywhere."""
    study = services.study_create(name="Ties", created_by=evaluator, prompts_data=PROMPTS_CSV, prompts_filename="p.csv",
                                  overlap=3, annotators=annotators, managers=[manager])
    texts = {
        "alpha": {"p1": "Use the reset link.", "p2": LONG + " end", "p3": "Alpha three", "p4": "Alpha four"},
        "beta": {"p1": "use the   reset link.", "p2": LONG + " fin", "p3": "Beta answer number three",
                 "p4": "Beta answer four"},
        "gamma": {"p1": "Gamma one thing", "p2": "Gamma two thing", "p3": "Gamma three", "p4": "Gamma four"},
    }
    for name, t in texts.items():
        cand = services.candidate_create(study=study, name=name, backend="imported", spec={})
        services.outputs_import(candidate=cand, data=imported_jsonl(t), filename="o.jsonl")
    return study


def test_identical_pairs_are_ties_by_rule_never_served_and_counted(tied, evaluator, annotators):
    ties = Unit.objects.filter(study=tied, rule_tie=True)
    assert sorted(ties.values_list("prompt__external_id", flat=True)) == ["p1", "p2"]
    assert set(ties.values_list("needed", "taken")) == {(0, 0)}
    assert Unit.objects.filter(study=tied, rule_tie=False).count() == 10
    # every annotator leases until nothing is left: a tie by rule is never leased
    for ann in annotators:
        for _ in range(20):
            a = services.assignment_next(study=tied, annotator=ann)
            if a is None:
                break
            services.judgment_submit(assignment=a, choice="left")
    assert not Assignment.objects.filter(unit__rule_tie=True).exists()
    assert Judgment.objects.filter(study=tied).count() == 30
    # an overlap change keeps them closed
    services.study_update_settings(study=tied, overlap=4, adaptive_sampling=False)
    assert set(ties.values_list("needed", flat=True)) == {0}
    page = client_for(evaluator).get(reverse("annotation:study", args=[tied.pk])).content.decode()
    assert "2 pairs were identical or nearly so and" in page
    listing = client_for(evaluator).get(reverse("annotation:rule_ties", args=[tied.pk])).content.decode()
    assert "use the   reset link." in listing and "alpha vs beta" in listing
    assert "<tr><td>alpha vs beta</td><td>2</td></tr>" in listing


def _judge(study, annotator, choice, rationale=""):
    a = services.assignment_next(study=study, annotator=annotator)
    assert a is not None
    services.judgment_submit(assignment=a, choice=choice, rationale=rationale, active_ms=1500)
    return a


def test_quality_table_shows_agreement_and_flags_and_excludes(tied, evaluator, manager, annotators, settings):
    settings.EVALSITE_QUALITY_MIN_JUDGMENTS = 5
    settings.EVALSITE_STRAIGHTLINE_SHARE = 100
    settings.EVALSITE_STRAIGHTLINE_RUN = 100
    settings.EVALSITE_SPEEDING_SECONDS = 2
    # ann1 and ann2 vote for output a on every unit, ann3 for output b: ann3's peers agree with each other
    # (a, a) and ann3 disagrees everywhere; ann1's peers split (a, b), so there is no majority to compare with
    for ann, want in zip(annotators, ("a", "a", "b")):
        while (a := services.assignment_next(study=tied, annotator=ann)) is not None:
            side = "left" if (want == "a") == a.left_is_a else "right"
            services.judgment_submit(assignment=a, choice=side, rationale=f"<b>{ann.username}</b> why",
                                     active_ms=1500)
    ratings_refresh(study_id=tied.pk)  # the worker's side of the votes' refresh request: it computes the table
    client = client_for(evaluator)
    html = client.get(reverse("annotation:quality", args=[tied.pk])).content.decode()
    assert "from 30 judgments" in html and 'id="quality-behind"' not in html
    rows = html.split('<tr id="annotator-')[1:]
    assert "ann1" in rows[0] and "no peer majority yet" in rows[0]
    assert "ann3" in rows[2] and "0% of 10" in rows[2]
    assert "Speeding: half of the tasks took under 1.5 s of active time (the limit is 2 s)." in rows[0]
    assert html.count("no check answered") == 3
    # exclude ann3 from the table: it comes back to the table
    resp = client.post(reverse("annotation:member_exclude", args=[tied.pk, annotators[2].pk]),
                       {"excluded": "1", "next": "quality"})
    assert resp.status_code == 302 and resp["Location"] == reverse("annotation:quality", args=[tied.pk])
    html = client.get(reverse("annotation:quality", args=[tied.pk])).content.decode()
    assert "<strong>excluded</strong>" in html and "Re-admit" in html  # at once, before the worker runs
    assert 'id="quality-behind"' in html
    ratings_refresh(study_id=tied.pk)
    html = client.get(reverse("annotation:quality", args=[tied.pk])).content.decode()
    assert "<strong>excluded</strong>" in html and 'id="quality-behind"' not in html
    # managers read it under pseudonyms, without buttons
    mhtml = client_for(manager).get(reverse("annotation:quality", args=[tied.pk])).content.decode()
    assert "annotator-" in mhtml and "ann1" not in mhtml and "Re-admit" not in mhtml


def test_judgments_page_shows_rationales_escaped_and_filters(tied, evaluator, manager, annotators):
    a = _judge(tied, annotators[0], "left", "<script>alert(1)</script> left was clearer")
    _judge(tied, annotators[1], "tie", "same to me")
    url = reverse("annotation:judgments", args=[tied.pk])
    html = client_for(evaluator).get(url).content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; left was clearer" in html and "<script>alert" not in html
    assert "same to me" in html and "ann1" in html
    html = client_for(evaluator).get(url, {"annotator": annotators[1].pk}).content.decode()
    assert "same to me" in html and "left was clearer" not in html
    unit = a.unit
    html = client_for(evaluator).get(url, {"pair": f"{unit.cand_hi_id}-{unit.cand_lo_id}"}).content.decode()
    assert "left was clearer" in html and f'value="{unit.cand_lo_id}-{unit.cand_hi_id}" selected' in html
    mhtml = client_for(manager).get(url).content.decode()
    assert "left was clearer" in mhtml and "ann1" not in mhtml
    assert client_for(evaluator).get(url, {"pair": "x"}).status_code == 200


@pytest.mark.parametrize("name", ["quality", "judgments", "rule_ties"])
def test_quality_pages_by_role(tied, evaluator, manager, annotators, make_user, name):
    url = reverse(f"annotation:{name}", args=[tied.pk])
    assert client_for(evaluator).get(url).status_code == 200
    assert client_for(manager).get(url).status_code == (403 if name == "rule_ties" else 200)
    assert client_for(annotators[0]).get(url).status_code == 403
    assert client_for(make_user("stranger")).get(url).status_code == 404
    assert client_for(evaluator).post(url).status_code == 405
