"""Django's model backend with a lighter per-request user lookup.

Every request of a logged-in user loads the user by id.  Through the ORM, building and
compiling that query took more CPU than the rest of a vote's statements together, so
it is written once, as a raw query; everything else (passwords, permissions, the
``is_active`` check) is Django's ``ModelBackend``.
"""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend as DjangoModelBackend
from django.core.exceptions import ValidationError


class ModelBackend(DjangoModelBackend):
    def get_user(self, user_id):
        model = get_user_model()
        try:
            pk = model._meta.pk.to_python(user_id)
        except ValidationError:
            return None
        user = next(iter(model._default_manager.raw(
            f"SELECT * FROM {model._meta.db_table} WHERE {model._meta.pk.column} = %s", [pk])), None)
        return user if user is not None and self.user_can_authenticate(user) else None
