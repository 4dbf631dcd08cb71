"""Who may open which page: every page URL of the site, GET and POST, as every role.

The rules (annotation/access.py): anonymous visitors are sent to sign in (302 to the login
page) before anything else; a study the user has no part in is a 404, as if it did not exist;
a study they belong to in another role is a 403; a method a page does not serve is a 405.
Managers read dashboards (leaderboard, quality, judgments); evaluators own everything else;
annotators reach only their task pages, and a task link belongs to one annotator (404 to
anyone else).  Creating a study takes the ``add_study`` permission, which gives no rights in
anyone else's study.  The API has its own table in tests/api/test_access.py.
"""
from __future__ import annotations

import pytest
from django.test import Client
from django.urls import get_resolver, reverse

from annotation import checks, services
from arena.models import Judge
from metrics.judge import DEFAULT_RUBRIC
from metrics.models import MetricRun
from tests.conftest import PROMPTS_CSV, grant_study_creation
from tests.test_fuzz import ENDPOINTS, _url_names, post

pytestmark = pytest.mark.django_db

ANON, A, OTHER_A, M, E, CREATOR, PLAIN = ("anonymous", "annotator", "other_annotator", "manager", "evaluator",
                                          "creator", "plain")
ROLES = (ANON, A, OTHER_A, M, E, CREATOR, PLAIN)
LOGIN = "login"  # a 302 to the sign-in page
CANDIDATES = ("alpha-model", "beta-model", "gamma-model", "spare-model")

# Expected status per role, in the order of ROLES:
#        anonymous annotator other_annotator manager evaluator creator plain
NOT_SERVED = (LOGIN, 405, 405, 405, 405, 405, 405)  # sign in first, then: not this method


def evaluator_only(ok: int) -> tuple:
    return (LOGIN, 403, 404, 403, ok, 404, 404)


def managers(ok: int) -> tuple:
    return (LOGIN, 403, 404, ok, ok, 404, 404)


def annotators_only(ok: int) -> tuple:
    return (LOGIN, ok, 404, 403, 403, 404, 404)


def task_holder(ok: int) -> tuple:
    return (LOGIN, ok, 404, 404, 404, 404, 404)


def everyone(get: int, post: int) -> dict:
    return {"get": (get,) * 7, "post": (post,) * 7}


# name -> {"get": statuses, "post": statuses}.  A POST sends the form the page takes
# (tests/test_fuzz.py's ENDPOINTS), so the role that gets through reaches the service.
PAGES: dict[str, dict[str, tuple]] = {
    "healthz": everyone(200, 405),
    "login": everyone(200, 200),  # the form again: no credentials were sent
    "logout": everyone(405, 302),  # POST only; signs out and goes to the sign-in page
    "annotation:home": {"get": (LOGIN, 200, 200, 200, 200, 200, 200), "post": NOT_SERVED},
    "annotation:study_create": {"get": (LOGIN, 403, 403, 403, 200, 200, 403),
                                "post": (LOGIN, 403, 403, 403, 302, 302, 403)},
    "annotation:study": {"get": evaluator_only(200), "post": NOT_SERVED},
    "annotation:settings": {"get": NOT_SERVED, "post": evaluator_only(302)},
    "annotation:progress": {"get": evaluator_only(200), "post": NOT_SERVED},
    "annotation:candidate_add": {"get": NOT_SERVED, "post": evaluator_only(302)},
    # "spare" is an annotator without a group: adding them again with one is a clash
    "annotation:member_add": {"get": NOT_SERVED, "post": evaluator_only(409)},
    "annotation:member_exclude": {"get": NOT_SERVED, "post": evaluator_only(302)},
    "annotation:member_remove": {"get": NOT_SERVED, "post": evaluator_only(302)},
    "annotation:member_change": {"get": NOT_SERVED, "post": evaluator_only(302)},
    "annotation:candidate_rename": {"get": NOT_SERVED, "post": evaluator_only(302)},
    "annotation:candidate_hide": {"get": NOT_SERVED, "post": evaluator_only(302)},
    "annotation:candidate_remove": {"get": NOT_SERVED, "post": evaluator_only(302)},
    "annotation:invitation_create": {"get": NOT_SERVED, "post": evaluator_only(200)},  # shows the link once
    "annotation:invitation_revoke": {"get": NOT_SERVED, "post": evaluator_only(302)},
    # anyone signed in may open a link; a member in another role is refused (409), others join
    "annotation:invitation": {"get": (LOGIN, 200, 200, 409, 409, 200, 200),
                              "post": (LOGIN, 302, 302, 409, 409, 302, 302)},
    "annotation:audit": {"get": evaluator_only(200), "post": NOT_SERVED},
    "annotation:generate": {"get": NOT_SERVED, "post": evaluator_only(302)},
    "annotation:prompts_add": {"get": NOT_SERVED, "post": evaluator_only(302)},
    "annotation:retry_failed": {"get": NOT_SERVED, "post": evaluator_only(302)},
    "annotation:output_retry": {"get": NOT_SERVED, "post": evaluator_only(302)},
    "annotation:annotate": {"get": annotators_only(200), "post": NOT_SERVED},
    # an output's image: the study's evaluators and managers, and the annotator whose task shows it
    "annotation:output_image": {"get": (LOGIN, 200, 404, 200, 200, 404, 404), "post": NOT_SERVED},
    "annotation:output_thumbnail": {"get": (LOGIN, 200, 404, 200, 200, 404, 404), "post": NOT_SERVED},
    "annotation:instructions": {"get": annotators_only(200), "post": annotators_only(302)},
    "annotation:instructions_edit": {"get": NOT_SERVED, "post": evaluator_only(302)},
    "annotation:quality": {"get": managers(200), "post": NOT_SERVED},
    "annotation:judgments": {"get": managers(200), "post": NOT_SERVED},
    "annotation:identity": {"get": evaluator_only(200), "post": evaluator_only(302)},
    "annotation:output_identity": {"get": NOT_SERVED, "post": evaluator_only(302)},
    "annotation:rule_ties": {"get": evaluator_only(200), "post": NOT_SERVED},
    "annotation:submit": {"get": NOT_SERVED, "post": task_holder(200)},  # the vote, then the next task
    "annotation:skip": {"get": NOT_SERVED, "post": task_holder(409)},  # that task was just answered
    "annotation:undo": {"get": NOT_SERVED, "post": task_holder(200)},
    "annotation:checks": {"get": evaluator_only(200), "post": NOT_SERVED},
    "annotation:checks_settings": {"get": NOT_SERVED, "post": evaluator_only(302)},
    "annotation:checks_upload": {"get": NOT_SERVED, "post": evaluator_only(302)},
    "annotation:checks_attention": {"get": NOT_SERVED, "post": evaluator_only(302)},
    "annotation:check_remove": {"get": NOT_SERVED, "post": evaluator_only(302)},
    "annotation:quiz": {"get": annotators_only(200), "post": NOT_SERVED},
    "annotation:quiz_start": {"get": NOT_SERVED, "post": annotators_only(409)},  # the study has no quiz
    "annotation:quiz_answer": {"get": NOT_SERVED, "post": annotators_only(409)},  # no question is waiting
    "arena:leaderboard": {"get": managers(200), "post": NOT_SERVED},
    "arena:recompute": {"get": NOT_SERVED, "post": managers(302)},
    "arena:ratings_mode": {"get": NOT_SERVED, "post": evaluator_only(302)},
    # unit 0 never exists (ids differ between databases): the evaluator's answer names it, 400
    "annotation:adjudicate": {"get": NOT_SERVED, "post": evaluator_only(400)},
    # managers read the LLM judges' results; evaluators add judges and start them
    "arena:judges": {"get": managers(200), "post": evaluator_only(302)},
    "arena:judge_start": {"get": NOT_SERVED, "post": evaluator_only(302)},
    # evaluators edit a judge's rubric while it has no verdicts (the spare judge has none)
    "arena:judge_edit": {"get": NOT_SERVED, "post": evaluator_only(302)},
    # managers read the metric runs; evaluators start them (POST) and retry a failed one
    "metrics:runs": {"get": managers(200), "post": evaluator_only(302)},
    "metrics:run_retry": {"get": NOT_SERVED, "post": evaluator_only(302)},
    "metrics:summary": {"get": managers(200), "post": evaluator_only(302)},
    "metrics:agreement": {"get": managers(200), "post": NOT_SERVED},
    # reference sets: managers read them, evaluators upload (no archive in the POST: 400); the image
    # view checks the role before it looks the (here missing) image up
    "metrics:references": {"get": managers(200), "post": evaluator_only(400)},
    "metrics:reference_remove": {"get": NOT_SERVED, "post": evaluator_only(302)},
    "metrics:reference_image": {"get": managers(404), "post": NOT_SERVED},
    "metrics:failures": {"get": managers(200), "post": NOT_SERVED},
}
# Pages another change is adding, with their rows still to be written: each name here is
# left out of the sweep and must be moved into PAGES with its statuses.
PENDING: dict[str, str] = {}


def _page_names() -> set[str]:
    """Every named URL of the site but the admin's and the API's (tests/api/test_access.py)."""
    return {n for n in _url_names(get_resolver().url_patterns) if not n.startswith("api-")}


def _image_on_task(token: str) -> tuple[str, str]:
    """Give the output on the left of the annotator's task an image; its file names."""
    from annotation.models import Assignment
    from tests.helpers.images import image_output_save, png_bytes

    output = Assignment.objects.select_related("unit__output_a").get(token=token).unit.output_a
    image_output_save(output, png_bytes((200, 30, 30)))
    return output.image.name.rsplit("/", 1)[1], output.thumbnail.name.rsplit("/", 1)[1]


@pytest.fixture
def world(study_factory, evaluator, annotators, manager, make_user):
    study = study_factory()
    spare = make_user("spare")
    services.member_set(study=study, user=spare, role="annotator")
    olga = grant_study_creation(make_user("olga"))
    oscar = make_user("oscar")
    services.study_create(name="Olga's study", created_by=olga, prompts_data=PROMPTS_CSV, prompts_filename="p.csv",
                          annotators=[oscar])
    users = {ANON: None, A: annotators[0], OTHER_A: oscar, M: manager, E: evaluator,
             CREATOR: grant_study_creation(make_user("cora")), PLAIN: make_user("pat")}
    clients = {}
    for role, user in users.items():
        clients[role] = Client(raise_request_exception=False)
        if user is not None:
            clients[role].force_login(user)
    page = clients[A].get(reverse("annotation:annotate", args=[study.pk])).content.decode()
    token = page.split('action="/tasks/', 1)[1].split("/", 1)[0]
    image_name, thumb_name = _image_on_task(token)
    candidate = services.candidate_create(study=study, name="spare-model", backend="imported", spec={})
    # one link to withdraw, another (a crowd link) that the outsiders open and join by
    revocable, _ = services.invitation_create(study=study, role="annotator", max_uses=None)
    _, invitation_token = services.invitation_create(study=study, role="annotator", max_uses=None)
    ids = {"study": study.pk, "spare": spare.pk, "image_name": image_name, "thumb_name": thumb_name, "output": study.outputs.first().pk, "token": token,
           "reference_image": "0" * 32 + ".png", "reference_set": _reference_set(study), "candidate": candidate.pk, "invitation": revocable.pk, "invitation_token": invitation_token,
           "check": checks.checks_make_attention(study=study, count=1, seed=1)
           and checks.gold_units(study).values_list("pk", flat=True).first(),
           "metric_run": MetricRun.objects.create(study=study, metric="rougeL", options_hash="-", status="failed").pk,
           "judge": Judge.objects.create(study=study, name="spare-judge", backend="openai", rubric=DEFAULT_RUBRIC,
                                         spec={"base_url": "http://127.0.0.1:9/v1", "model": "m"}).pk}
    return {"study": study, "clients": clients, "ids": ids}


def _reference_set(study) -> int:
    from metrics.references import reference_set_upload
    from tests.helpers.images import pngs, zip_of

    return reference_set_upload(study=study, name="spare-refs", upload=zip_of(pngs(2))).pk


def _status(response) -> int | str:
    if response.status_code == 302 and response["Location"].startswith(reverse("login") + "?next="):
        return LOGIN
    return response.status_code


# Pages that remove what other pages act on, or use up the annotator's task, go last; joining
# by invitation goes after them (it makes the outsiders members).
LAST = ("annotation:candidate_remove", "annotation:member_remove", "annotation:submit", "annotation:skip", "annotation:undo",
        "annotation:invitation", "logout")


def _sweep(world, names):
    """(name, method, role) -> status, with the annotator's pages' HTML for the blindness check."""
    got, annotator_pages = {}, []
    order = sorted(names, key=lambda n: LAST.index(n) + 1 if n in LAST else 0)
    for name in order:
        endpoint = ENDPOINTS[name]
        url = reverse(name, args=[world["ids"][a] for a in endpoint.args])
        for role in ROLES:
            client = world["clients"][role]
            for method in ("get", "post"):
                if name == "logout" and method == "post":
                    continue  # signs the client out: done once, below
                if method == "get":
                    response = client.get(url)
                elif name == "login":
                    response = client.post(url, {})  # no credentials: no failed sign-in for the throttle to count
                else:
                    response = post(client, url, endpoint.post, endpoint.files)
                got[name, method, role] = _status(response)
                if role == A and response.status_code == 200 and not response.streaming:  # not the images
                    annotator_pages.append((f"{method.upper()} {name}", response.content.decode()))
    for role in ROLES:
        got["logout", "post", role] = _status(world["clients"][role].post(reverse("logout")))
    return got, annotator_pages


def test_the_table_covers_every_page_of_the_site():
    names = _page_names()
    missing = names - set(PAGES) - set(PENDING)
    assert not missing, f"add these pages to PAGES in tests/test_access_pages.py: {sorted(missing)}"
    assert not set(PAGES) - names, f"PAGES names URLs that do not exist: {sorted(set(PAGES) - names)}"
    assert not set(PAGES) & set(PENDING), f"in both PAGES and PENDING: {sorted(set(PAGES) & set(PENDING))}"


def test_every_page_answers_each_role_as_its_rights_say(world):
    got, _ = _sweep(world, sorted(set(PAGES) & _page_names()))
    failures = [f"{method.upper()} {name} as {role}: {got[name, method, role]}, expected {expected}"
                for name, methods in PAGES.items() for method, row in methods.items()
                for role, expected in zip(ROLES, row, strict=True) if got[name, method, role] != expected]
    assert not failures, f"{len(failures)} of {len(got)} answers differ:\n" + "\n".join(failures)


def test_no_page_an_annotator_can_open_names_a_candidate(world):
    _, pages = _sweep(world, sorted(set(PAGES) & _page_names()))
    opened = {what for what, _ in pages}
    assert {"GET annotation:annotate", "GET annotation:instructions", "POST annotation:submit",
            "POST annotation:undo", "GET annotation:home"} <= opened
    annotate = dict(pages)["GET annotation:annotate"]
    assert "Variant 0 answer to" in annotate or "Variant 1 answer to" in annotate  # a pair's texts are shown
    leaks = [(what, name) for what, html in pages for name in CANDIDATES if name in html]
    assert not leaks, leaks
