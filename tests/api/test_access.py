"""Who may call what: every API operation, GET and POST, as every role, by session and by token.

401 (with ``WWW-Authenticate: Token``) without credentials, except the schema and the docs;
404 for a study the caller has no part in (or a task that is not theirs); 403 for a study
they belong to in another role; 405 for the method an operation does not serve.
"""
from __future__ import annotations

import pytest
from django.urls import reverse

from annotation import services
from annotation.models import Judgment, Skip

from .conftest import AUTHS, ROLES

pytestmark = pytest.mark.django_db

A, S_A, M, E, S_E = "annotator", "stranger_annotator", "manager", "evaluator", "stranger_evaluator"


def expect(anonymous=401, **by_role) -> dict[str, int]:
    return {"anonymous": anonymous, **by_role}


# name -> (method served, expected status per role, URL arguments)
OPERATIONS = {
    "api-studies": ("get", expect(**{A: 200, S_A: 200, M: 200, E: 200, S_E: 200}), ()),
    "api-study": ("get", expect(**{A: 200, S_A: 404, M: 200, E: 200, S_E: 404}), ("study",)),
    "api-task-next": ("get", expect(**{A: 200, S_A: 404, M: 403, E: 403, S_E: 404}), ("study",)),
    "api-judgment": ("post", expect(**{A: 201, S_A: 404, M: 404, E: 404, S_E: 404}), ("token",)),
    # after the vote: the annotator takes it back, then skips the task it reopened
    "api-task-undo": ("post", expect(**{A: 200, S_A: 404, M: 404, E: 404, S_E: 404}), ("token",)),
    "api-task-skip": ("post", expect(**{A: 201, S_A: 404, M: 404, E: 404, S_E: 404}), ("token",)),
    "api-outputs": ("get", expect(**{A: 403, S_A: 404, M: 403, E: 200, S_E: 404}), ("study",)),
    "api-judgments": ("get", expect(**{A: 403, S_A: 404, M: 200, E: 200, S_E: 404}), ("study",)),
    "api-judgments-import": ("post", expect(**{A: 403, S_A: 404, M: 403, E: 201, S_E: 404}), ("study",)),
    "api-audit": ("get", expect(**{A: 403, S_A: 404, M: 403, E: 200, S_E: 404}), ("study",)),
    "api-leaderboard": ("get", expect(**{A: 403, S_A: 404, M: 200, E: 200, S_E: 404}), ("study",)),
    "api-progress": ("get", expect(**{A: 403, S_A: 404, M: 403, E: 200, S_E: 404}), ("study",)),
    "api-schema": ("get", expect(200, **{A: 200, S_A: 200, M: 200, E: 200, S_E: 200}), ()),
    "api-docs": ("get", expect(200, **{A: 200, S_A: 200, M: 200, E: 200, S_E: 200}), ()),
}
PUBLIC = {"api-schema", "api-docs"}


def _body(name: str) -> dict:
    if name == "api-judgment":
        return {"data": {"choice": "left", "rationale": "clearer", "active_ms": 1500}, "content_type": "application/json"}
    if name == "api-task-skip":
        return {"data": {"reason": "other", "note": "garbled"}, "content_type": "application/json"}
    if name == "api-judgments-import":
        from django.core.files.uploadedfile import SimpleUploadedFile

        row = b"prompt_id,model_a,model_b,outcome,annotator\np2,alpha-model,gamma-model,tie,ann3\n"
        return {"data": {"file": SimpleUploadedFile("j.csv", row)}}
    return {}


def test_the_table_covers_every_api_url():
    from django.urls import get_resolver

    names = {n for n in get_resolver().reverse_dict if isinstance(n, str) and n.startswith("api-")}
    assert names == set(OPERATIONS)


@pytest.mark.parametrize("auth", AUTHS)
def test_every_operation_answers_each_role_as_its_rights_say(world, auth):
    token = services.assignment_next(study=world.study, annotator=world.users[A]).token
    ids = {"study": world.study.pk, "token": token}
    failures = []
    for name, (method, expected, args) in OPERATIONS.items():
        url = reverse(name, args=[ids[a] for a in args])
        other = "post" if method == "get" else "get"
        # the annotator's vote goes last: it uses up the token the others are refused
        for role in sorted(ROLES, key=lambda r: r == A):
            client = world.client(role, auth)
            response = getattr(client, method)(url, **_body(name))
            if response.status_code != expected[role]:
                failures.append(f"{method.upper()} {name} as {role}: {response.status_code}, "
                                f"expected {expected[role]}: {response.content[:200]!r}")
            if response.status_code == 401 and response.get("WWW-Authenticate") != "Token":
                failures.append(f"{name} as {role}: 401 without WWW-Authenticate: Token")
            if response.status_code in (403, 404) and name not in PUBLIC:
                assert response["Content-Type"] == "application/json", (name, role)
                assert response.json()["detail"], (name, role)
            wrong = getattr(client, other)(url, **(_body(name) if other == "post" else {}))
            wanted = 401 if role == "anonymous" and name not in PUBLIC else 405
            if wrong.status_code != wanted:
                failures.append(f"{other.upper()} {name} as {role}: {wrong.status_code}, expected {wanted}")
    assert not failures, "\n".join(failures)
    # the one vote was undone, and its task then skipped
    assert Judgment.objects.filter(study=world.study, annotator=world.users[A]).count() == 0
    assert Skip.objects.filter(study=world.study, annotator=world.users[A]).count() == 1


def test_a_refusal_says_which_role_the_operation_needs(world):
    response = world.client(M, "token").get(reverse("api-outputs", args=[world.study.pk]))
    assert response.status_code == 403
    assert response.json()["detail"] == "This page needs one of: evaluator"
    response = world.client(E, "token").get(reverse("api-task-next", args=[world.study.pk]))
    assert response.json()["detail"] == "This page needs one of: annotator"


def test_missing_or_bad_credentials_are_a_401_that_says_how_to_authenticate(world):
    url = reverse("api-studies")
    anonymous = world.client("anonymous")
    response = anonymous.get(url)
    assert response.status_code == 401 and response["WWW-Authenticate"] == "Token"
    assert response.json()["detail"] == "Authentication credentials were not provided."
    response = anonymous.get(url, HTTP_AUTHORIZATION="Token " + "0" * 40)
    assert response.status_code == 401 and response.json()["detail"] == "Invalid token."
    response = anonymous.get(url, HTTP_AUTHORIZATION="Basic YW5uMTp3cm9uZw==")  # ann1:wrong
    assert response.status_code == 401 and response["WWW-Authenticate"] == "Token"
    response = anonymous.get(url, HTTP_AUTHORIZATION="Basic YW5uMTphbm4xLXB3")  # ann1:ann1-pw
    assert response.status_code == 200 and [s["name"] for s in response.json()] == ["Support study"]


def test_the_studies_list_gives_each_caller_their_own_studies_and_role(world):
    def listed(role):
        return [(s["name"], s["role"]) for s in world.client(role, "token").get(reverse("api-studies")).json()]

    assert listed(A) == [("Support study", "annotator")]
    assert listed(M) == [("Support study", "manager")]
    assert listed(E) == [("Support study", "evaluator")]
    assert listed(S_A) == [("Olga's study", "annotator")]
    assert listed(S_E) == [("Olga's study", "evaluator")]


def test_an_annotator_sees_their_progress_and_no_candidate_in_the_study(world):
    body = world.client(A, "token").get(reverse("api-study", args=[world.study.pk]))
    assert body.status_code == 200
    data = body.json()
    assert data["role"] == "annotator" and data["done"] == 0 and data["remaining"] == 12
    assert "candidates" not in data and "model" not in body.content.decode()
    evaluator = world.client(E, "token").get(reverse("api-study", args=[world.study.pk])).json()
    assert [c["name"] for c in evaluator["candidates"]] == ["alpha-model", "beta-model", "gamma-model"]
    assert evaluator["prompts"] == 4 and evaluator["units_total"] == 12


def test_an_excluded_annotator_is_refused_their_tasks_with_a_reason(world):
    services.member_exclude(study=world.study, user=world.users[A])
    response = world.client(A, "token").get(reverse("api-task-next", args=[world.study.pk]))
    assert response.status_code == 403
    assert response.json()["detail"] == "You have been excluded from this study."


def test_a_session_post_needs_the_csrf_token_and_a_token_post_does_not(world):
    from annotation.models import Judgment

    token = services.assignment_next(study=world.study, annotator=world.users[A]).token
    url = reverse("api-judgment", args=[token])
    session = world.client(A, "session", enforce_csrf_checks=True)
    response = session.post(url, {"choice": "left"}, content_type="application/json")
    assert response.status_code == 403 and "CSRF" in response.json()["detail"]
    assert not Judgment.objects.exists()
    session.get(reverse("annotation:home"))  # the page sets the CSRF cookie
    csrf = session.cookies["csrftoken"].value
    response = session.post(url, {"choice": "left"}, content_type="application/json", HTTP_X_CSRFTOKEN=csrf)
    assert response.status_code == 201
    nxt = response.json()["next"]["token"]
    by_token = world.client(A, "token", enforce_csrf_checks=True)
    assert by_token.post(reverse("api-judgment", args=[nxt]), {"choice": "tie"},
                         content_type="application/json").status_code == 201
    assert Judgment.objects.count() == 2


def test_drf_create_token_makes_a_key_that_signs_in(world):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("drf_create_token", "manny", stdout=out)
    key = out.getvalue().split()[2]
    response = world.client("anonymous").get(reverse("api-studies"), HTTP_AUTHORIZATION=f"Token {key}")
    assert response.status_code == 200 and response.json()[0]["role"] == "manager"
