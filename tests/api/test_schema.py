"""The OpenAPI schema and its Swagger UI: public, complete, and served without a CDN or inline code."""
from __future__ import annotations

import pytest
from django.test import Client
from django.urls import get_resolver, reverse

pytestmark = pytest.mark.django_db


def test_the_schema_is_public_openapi_3_and_documents_every_operation():
    response = Client().get(reverse("api-schema"), HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    paths = schema["paths"]
    expected = {
        "/api/studies/": {"get"}, "/api/studies/{study_id}/": {"get"},
        "/api/studies/{study_id}/tasks/next": {"get"}, "/api/tasks/{token}/judgment": {"post"},
            "/api/tasks/{token}/skip": {"post"}, "/api/tasks/{token}/undo": {"post"},
        "/api/studies/{study_id}/outputs": {"get"}, "/api/studies/{study_id}/judgments": {"get"},
        "/api/studies/{study_id}/judgments/import": {"post"}, "/api/studies/{study_id}/audit": {"get"},
        "/api/studies/{study_id}/leaderboard": {"get"}, "/api/studies/{study_id}/progress": {"get"},
    }
    assert {p: set(ops) - {"parameters"} for p, ops in paths.items()} == expected
    api_names = {n for n in get_resolver().reverse_dict if isinstance(n, str) and n.startswith("api-")}
    assert len(api_names - {"api-schema", "api-docs"}) == len(expected)
    # every operation documents a response body, including the endpoints that predate the schema
    for path, ops in paths.items():
        for method, op in ops.items():
            assert any(r.get("content") for r in op["responses"].values()), (method, path)
    board = schema["components"]["schemas"]["Leaderboard"]["properties"]
    assert {"rows", "position_bias", "computed_at"} <= set(board)
    task = schema["components"]["schemas"]["Task"]["properties"]
    assert set(task) == {"state", "detail", "token", "kind", "prompt", "outputs", "criteria", "tags", "done",
                         "remaining"}
    schemes = schema["components"]["securitySchemes"]
    assert schemes["tokenAuth"]["name"] == "Authorization" and '"Token"' in schemes["tokenAuth"]["description"]
    assert schemes["basicAuth"]["scheme"] == "basic"
    assert "cookieAuth" in schemes


def test_the_docs_page_loads_swagger_ui_from_our_static_files_with_no_inline_code():
    client = Client()
    response = client.get(reverse("api-docs"))
    assert response.status_code == 200
    page = response.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in page
    assert "<style" not in page and "<script>" not in page and "//cdn" not in page
    script = client.get(reverse("api-docs") + "?script=")
    assert script.status_code == 200 and script["Content-Type"].startswith("application/javascript")
    assert '"/api/schema/"' in script.content.decode()
    assert client.get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js").status_code == 200


def test_only_the_docs_page_lets_images_come_from_data_urls():
    client = Client()
    docs = client.get(reverse("api-docs"))["Content-Security-Policy"]
    assert "img-src 'self' data:" in docs and "script-src 'self'" in docs and "unsafe" not in docs
    assert "data:" not in client.get(reverse("login"))["Content-Security-Policy"]
    assert "data:" not in client.get(reverse("api-schema"))["Content-Security-Policy"]
