"""Django's model backend with a lighter per-request user lookup.

Every request of a logged-in user loads the user by id.  Through the ORM, building and
compiling that query took more CPU than the rest of a vote's statements together, so
it is written once, as a raw query; everything else (passwords, permissions, the
``is_active`` check) is Django's ``ModelBackend``.

Credentials that no account can have (a NUL character, which PostgreSQL refuses in a
query, a lone surrogate, a username longer than the column) are refused before any query:
:func:`credentials_problem` says why, for callers that answer the client themselves (the
API's Basic auth), and :meth:`ModelBackend.authenticate` returns no user for them.
"""
from __future__ import annotations

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend as DjangoModelBackend
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError

from annotation.usertext import text_problem


def credentials_problem(username: str | None, password: str | None) -> str | None:
    """Why these credentials cannot belong to any account ("username: ..."), or ``None``."""
    model = get_user_model()
    max_length = model._meta.get_field(model.USERNAME_FIELD).max_length
    if username is not None:
        problem = text_problem(str(username))
        if problem:
            return f"username: {problem}"
        if max_length and len(str(username)) > max_length:
            return f"username: is {len(str(username))} characters long; a username has at most {max_length}"
    if password is not None:
        problem = text_problem(str(password))
        if problem:
            return f"password: {problem}"
    return None


class SignInForm(AuthenticationForm):
    """Django's sign-in form, refusing a username that no account can have before
    ``authenticate()`` runs: Django's form sets no length check on the username, and a
    failed sign-in is written to axes' log (whose username column holds 255 characters)."""

    def clean_username(self) -> str:
        username = self.cleaned_data["username"]
        problem = credentials_problem(username, None)
        if problem:
            raise forms.ValidationError(problem.removeprefix("username: "), code="invalid_username")
        return username


class ModelBackend(DjangoModelBackend):
    def authenticate(self, request, username=None, password=None, **kwargs):
        if credentials_problem(username if username is not None else kwargs.get(get_user_model().USERNAME_FIELD),
                               password):
            return None  # no account has such a name: nothing to look up
        return super().authenticate(request, username=username, password=password, **kwargs)

    def get_user(self, user_id):
        model = get_user_model()
        try:
            pk = model._meta.pk.to_python(user_id)
        except ValidationError:
            return None
        user = next(iter(model._default_manager.raw(
            f"SELECT * FROM {model._meta.db_table} WHERE {model._meta.pk.column} = %s", [pk])), None)
        return user if user is not None and self.user_can_authenticate(user) else None
