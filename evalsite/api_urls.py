"""The REST API's root, under ``/api/``: each app's routes, the OpenAPI schema and its Swagger UI.

Every operation needs credentials (401 without, with ``WWW-Authenticate: Token``) except the
schema and the docs page, which describe the API to anyone.
"""
from csp.decorators import csp_update
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from . import api_schema  # noqa: F401  (registers the schema extensions)


class DocsView(SpectacularSwaggerSplitView):
    """Swagger UI from our own static files (drf-spectacular-sidecar), its start-up script from this same
    URL (``?script``), and a template without the inline style: the site's CSP holds on this page
    but for one exception, scoped to it: Swagger UI's stylesheet draws its icons from ``data:`` images."""

    template_name = "api/swagger_ui.html"


docs = csp_update({"img-src": ["'self'", "data:"]})(DocsView.as_view(url_name="api-schema"))

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", docs, name="api-docs"),
    path("", include("annotation.api.urls")),
    path("", include("arena.api.urls")),
]
