"""The people and studies the API tests act in, and clients that sign in by session or by token."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from django.test import Client
from rest_framework.authtoken.models import Token

from annotation import services
from tests.conftest import PROMPTS_CSV, grant_study_creation

ROLES = ("anonymous", "annotator", "stranger_annotator", "manager", "evaluator", "stranger_evaluator")
AUTHS = ("session", "token")


@dataclass
class World:
    study: object
    other: object  # a study whose members are the two strangers
    users: dict = field(default_factory=dict)

    def client(self, role: str, auth: str = "session", **kwargs) -> Client:
        return client_as(self.users.get(role), auth, **kwargs)


def client_as(user, auth: str = "session", **kwargs) -> Client:
    """A test client signed in as ``user`` by session (force_login) or with an API token; anonymous for None."""
    client = Client(raise_request_exception=False, **kwargs)
    if user is None:
        return client
    if auth == "session":
        client.force_login(user)
    else:
        key = Token.objects.get_or_create(user=user)[0].key
        client.defaults["HTTP_AUTHORIZATION"] = f"Token {key}"
    return client


@pytest.fixture
def world(study_factory, evaluator, annotators, manager, make_user) -> World:
    study = study_factory()
    olga = grant_study_creation(make_user("olga"))
    oscar = make_user("oscar")
    other = services.study_create(name="Olga's study", created_by=olga, prompts_data=PROMPTS_CSV,
                                  prompts_filename="p.csv", annotators=[oscar])
    return World(study=study, other=other, users={
        "anonymous": None, "annotator": annotators[0], "stranger_annotator": oscar, "manager": manager,
        "evaluator": evaluator, "stranger_evaluator": olga,
    })
