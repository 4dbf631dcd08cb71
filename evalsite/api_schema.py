"""drf-spectacular extensions: how the OpenAPI schema describes what it cannot see by itself."""
from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class LockoutAwareBasicScheme(OpenApiAuthenticationExtension):
    """The API's Basic auth (evalsite.throttle), which drf-spectacular's own extension does not match."""

    target_class = "evalsite.throttle.LockoutAwareBasicAuthentication"
    name = "basicAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "basic",
                "description": "User name and password; failures count towards the sign-in lockout (django-axes)."}
