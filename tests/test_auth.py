"""The per-request user lookup: the user for a good id, nobody for a bad, unknown or inactive one."""
import pytest
from django.urls import reverse

from evalsite.auth import ModelBackend

pytestmark = pytest.mark.django_db


def test_it_loads_the_user_of_a_session_and_refuses_unknown_bad_or_inactive_ids(make_user):
    backend = ModelBackend()
    user = make_user("ada")
    found = backend.get_user(str(user.pk))
    assert found == user and found.username == "ada" and found.check_password("ada-pw")
    assert backend.get_user(str(user.pk + 1000)) is None
    assert backend.get_user("not-a-number") is None
    user.is_active = False
    user.save()
    assert backend.get_user(user.pk) is None


def test_a_deactivated_annotator_is_logged_out_on_the_next_request(client, study_factory, annotators):
    study = study_factory()
    client.force_login(annotators[0])
    assert client.get(reverse("annotation:annotate", args=[study.pk])).status_code == 200
    annotators[0].is_active = False
    annotators[0].save()
    assert client.get(reverse("annotation:annotate", args=[study.pk])).status_code == 302
