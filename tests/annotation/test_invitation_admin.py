"""Invitation links in the Django admin: listed with their state, never added there, the hash never edited."""
from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from annotation import services
from annotation.models import Invitation

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client_(django_user_model) -> Client:
    client = Client()
    client.force_login(django_user_model.objects.create_superuser("root", password="root-pw"))
    return client


@pytest.fixture
def links(study_factory, evaluator):
    study = study_factory(candidates=("alpha-model", "beta-model"))
    crowd, _ = services.invitation_create(study=study, role="annotator", group="night-shift", days=7, max_uses=None,
                                          actor=evaluator)
    pair, _ = services.invitation_create(study=study, role="manager", group="", days=3, max_uses=2, actor=evaluator)
    gone, _ = services.invitation_create(study=study, role="annotator", group="g2", days=1, max_uses=1,
                                         actor=evaluator)
    services.invitation_revoke(invitation=gone, actor=evaluator)
    return {"crowd": crowd, "pair": pair, "gone": gone}


def _cells(html: str, pk: int) -> str:
    """The changelist row of invitation ``pk`` (its checkbox carries the id)."""
    start = html.index(f'name="_selected_action" value="{pk}"')
    return html[start:html.index("</tr>", start)]


def test_the_changelist_lists_study_role_group_creator_expiry_uses_and_state(admin_client_, links):
    response = admin_client_.get(reverse("admin:annotation_invitation_changelist"))
    assert response.status_code == 200
    html = response.content.decode()
    for column in ("Study", "Role", "Group", "Created by", "Expires at", "Uses", "State"):
        assert f">{column}<" in html, column
    crowd = _cells(html, links["crowd"].pk)
    assert "Support study" in crowd and "annotator" in crowd and "night-shift" in crowd and "eve" in crowd
    assert "0 / any" in crowd and ">open<" in crowd
    pair = _cells(html, links["pair"].pk)
    assert "manager" in pair and "0 / 2" in pair and ">open<" in pair
    assert ">revoked<" in _cells(html, links["gone"].pk)
    assert links["crowd"].token_hash not in html


def test_the_admin_refuses_to_add_an_invitation(admin_client_, links):
    assert admin_client_.get(reverse("admin:annotation_invitation_add")).status_code == 403
    response = admin_client_.post(reverse("admin:annotation_invitation_add"), {
        "study": links["crowd"].study_id, "role": "annotator", "token_hash": "0" * 64,
        "expires_at_0": "2099-01-01", "expires_at_1": "00:00:00", "uses": "0"})
    assert response.status_code == 403
    assert Invitation.objects.count() == 3
    changelist = admin_client_.get(reverse("admin:annotation_invitation_changelist")).content.decode()
    assert reverse("admin:annotation_invitation_add") not in changelist


def test_the_token_hash_is_shown_read_only_and_a_post_cannot_change_it(admin_client_, links):
    pair = links["pair"]
    url = reverse("admin:annotation_invitation_change", args=[pair.pk])
    page = admin_client_.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    assert pair.token_hash in html and 'name="token_hash"' not in html
    response = admin_client_.post(url, {
        "study": pair.study_id, "role": "manager", "group": "renamed", "token_hash": "f" * 64,
        "created_by": pair.created_by_id, "expires_at_0": pair.expires_at.strftime("%Y-%m-%d"),
        "expires_at_1": pair.expires_at.strftime("%H:%M:%S"), "max_uses": "2", "uses": "0", "revoked_at_0": "",
        "revoked_at_1": ""})
    assert response.status_code == 302, response.content.decode()[:2000]
    before = pair.token_hash
    pair.refresh_from_db()
    assert pair.group == "renamed" and pair.token_hash == before
