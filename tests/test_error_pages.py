"""Error pages (400, 403, 404, 500) in the site's layout, with DEBUG off as deployed: the status, a
heading that says what happened, the reason in plain words where it is safe to give, and for htmx
requests only the short content (the page does not swap it in; annotate.js says what went wrong)."""
import pytest
from django.conf import settings
from django.test import Client, RequestFactory
from django.urls import include, path
from django.views.defaults import server_error

from annotation import services

pytestmark = pytest.mark.django_db


def _boom(request):
    raise RuntimeError("a bug with a secret: postgres://admin:hunter2@db/evalsite")


# The site's own URLs plus one view that fails, for the 500 page (see the ``urls`` marks below).
urlpatterns = [
    path("boom/", _boom),
    path("", include("evalsite.urls")),
]

HTMX = {"HTTP_HX_REQUEST": "true"}


def _heading(html: str) -> str:
    start = html.index('<h1 id="error-title">') + len('<h1 id="error-title">')
    return html[start:html.index("</h1>", start)]


def _assert_layout(html: str) -> None:
    assert html.startswith("<!doctype html>"), html[:200]
    assert '<header class="topbar">' in html and 'href="/static/css/evalsite.css"' in html
    assert '<a href="/">Go to your studies</a>' in html


def test_debug_is_off_here_as_when_deployed():
    assert settings.DEBUG is False


def test_an_unknown_address_is_a_404_page_in_the_layout_for_an_anonymous_visitor(client):
    response = client.get("/no/such/page/")
    html = response.content.decode()
    assert response.status_code == 404
    _assert_layout(html)
    assert _heading(html) == "Page not found"
    assert "There is nothing at this address" in html
    assert "Resolver404" not in html and "Sign in" in html


def test_a_study_that_is_not_yours_is_a_404_naming_it_for_a_signed_in_user(client, make_user):
    client.force_login(make_user("outsider"))
    response = client.get("/studies/987654/")
    html = response.content.decode()
    assert response.status_code == 404
    _assert_layout(html)
    assert _heading(html) == "Page not found"
    assert "<p>No study with id 987654</p>" in html
    assert '<span class="who">outsider</span>' in html


def test_djangos_no_match_message_is_said_in_words(client, study_factory, evaluator):
    study = study_factory()
    client.force_login(evaluator)
    response = client.post(f"/studies/{study.pk}/members/999999/exclude/")
    assert response.status_code == 404
    html = response.content.decode()
    assert "There is no such study member." in html and "matches the given query" not in html


def test_a_page_for_another_role_is_a_403_saying_which_role_it_needs(client, study_factory, annotators):
    study = study_factory()
    client.force_login(annotators[0])
    response = client.get(f"/studies/{study.pk}/")
    html = response.content.decode()
    assert response.status_code == 403
    _assert_layout(html)
    assert _heading(html) == "Not allowed"
    assert "This page needs one of: evaluator" in html
    assert '<span class="who">ann1</span>' in html


def test_an_excluded_annotator_gets_a_403_page_saying_so(client, study_factory, evaluator, annotators):
    study = study_factory()
    services.member_exclude(study=study, user=annotators[0], actor=evaluator)
    client.force_login(annotators[0])
    response = client.get(f"/studies/{study.pk}/annotate/")
    assert response.status_code == 403
    assert "You have been excluded from this study." in response.content.decode()


def test_a_form_sent_without_its_csrf_token_is_a_403_page_in_the_layout():
    client = Client(enforce_csrf_checks=True)
    response = client.post("/login/", {"username": "someone", "password": "x"})
    html = response.content.decode()
    assert response.status_code == 403
    _assert_layout(html)
    assert _heading(html) == "Form expired"
    assert "Nothing was saved" in html


def test_a_request_for_a_host_that_is_not_allowed_is_a_400_page_in_the_layout(client):
    response = client.get("/", HTTP_HOST="evil.example")
    html = response.content.decode()
    assert response.status_code == 400
    _assert_layout(html)
    assert _heading(html) == "Bad request"
    assert "evil.example" not in html


@pytest.mark.urls(__name__)
@pytest.mark.parametrize("signed_in", [False, True], ids=["anonymous", "signed-in"])
def test_a_failing_view_is_a_500_page_in_the_layout_that_tells_nothing_of_the_error(signed_in, make_user):
    client = Client(raise_request_exception=False)
    if signed_in:
        client.force_login(make_user("olga"))
    response = client.get("/boom/")
    html = response.content.decode()
    assert response.status_code == 500
    _assert_layout(html)
    assert _heading(html) == "Server error"
    assert "hunter2" not in html and "RuntimeError" not in html
    # Rendered without the request, so it claims no one is or is not signed in.
    assert "Sign in" not in html and "olga" not in html


def test_the_500_page_renders_without_a_request_context_and_without_the_database(django_assert_num_queries):
    with django_assert_num_queries(0):
        response = server_error(RequestFactory().get("/"))
    assert response.status_code == 500
    assert _heading(response.content.decode()) == "Server error"


def test_an_htmx_request_gets_the_short_answer_not_the_whole_page(client, study_factory, evaluator, annotators):
    response = client.get("/no/such/page/", **HTMX)
    html = response.content.decode().strip()
    assert response.status_code == 404
    assert html.startswith('<section class="card error-page"') and "<html" not in html and "topbar" not in html
    assert _heading(html) == "Page not found"

    study = study_factory()
    client.force_login(annotators[0])
    token = services.assignment_next(study=study, annotator=annotators[0]).token
    services.member_exclude(study=study, user=annotators[0], actor=evaluator)
    response = client.post(f"/tasks/{token}/", {"choice": "left"}, **HTMX)
    html = response.content.decode().strip()
    assert response.status_code == 403
    assert html.startswith('<section class="card error-page"') and "<html" not in html
    assert "You have been excluded from this study." in html
