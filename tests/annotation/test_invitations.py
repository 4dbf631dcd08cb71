"""Joining a study by invitation link or by account; roles change only by their own action."""
import hashlib
import re
import threading
from datetime import timedelta
from urllib.parse import quote

import pytest
from django.db import connections
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from annotation import services
from annotation.models import AuditEntry, Invitation, StudyMember
from tests.conftest import client_for, PROMPTS_CSV, grant_study_creation

Action = AuditEntry.Action
pytestmark = pytest.mark.django_db


@pytest.fixture
def study(study_factory):
    return study_factory(candidates=("alpha-model", "beta-model"))


@pytest.fixture
def owner_client(study):
    client = Client()
    client.force_login(study.created_by)
    return client


def make_link(owner_client, study, **fields) -> str:
    """Make an invitation through the study page; returns the link's path."""
    data = {"role": "annotator", "group": "", "days": 7, "uses": 1, **fields}
    response = owner_client.post(reverse("annotation:invitation_create", args=[study.pk]), data)
    assert response.status_code == 200, response.content.decode()[:3000]
    link = re.search(r'id="invitation-link" value="([^"]+)"', response.content.decode()).group(1)
    assert link.startswith("http://testserver/invitations/")
    return link.removeprefix("http://testserver")


def token_of(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[1]


def entries(study, action) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(study=study, action=action).order_by("pk"))


# --- making a link ---------------------------------------------------------------------


def test_a_link_is_shown_once_and_only_its_hash_is_stored(owner_client, study, settings):
    before = timezone.now()
    path = make_link(owner_client, study, group="night")
    token = token_of(path)
    invitation = Invitation.objects.get()
    assert invitation.token_hash == hashlib.sha256(token.encode()).hexdigest() != token
    assert (invitation.role, invitation.group, invitation.max_uses, invitation.uses) == ("annotator", "night", 1, 0)
    days = settings.EVALSITE_INVITATION_DAYS
    assert before + timedelta(days=days) <= invitation.expires_at <= timezone.now() + timedelta(days=days)
    (entry,) = entries(study, Action.INVITATION_CREATED)
    assert (entry.actor, entry.target) == (study.created_by, f"invitation {invitation.pk}")
    assert entry.detail["role"] == "annotator" and entry.detail["group"] == "night" and entry.detail["people"] == 1
    assert token not in str(entry.detail)
    page = owner_client.get(reverse("annotation:study", args=[study.pk])).content.decode()
    assert f'data-invitation="{invitation.pk}" data-state="open"' in page
    assert token not in page  # the study page never shows the link again


def test_the_default_expiry_comes_from_the_setting(owner_client, study, settings):
    settings.EVALSITE_INVITATION_DAYS = 3
    page = owner_client.get(reverse("annotation:study", args=[study.pk])).content.decode()
    assert re.search(r'name="days" value="3"', page)
    response = owner_client.post(reverse("annotation:invitation_create", args=[study.pk]),
                                 {"role": "manager", "uses": 1})  # no days: the form asks for them
    assert response.status_code == 400 and "days" in response.context["invitation_form"].errors


def test_a_link_longer_than_the_limit_is_refused_naming_the_setting(owner_client, study, settings):
    settings.EVALSITE_INVITATION_MAX_DAYS = 30
    response = owner_client.post(reverse("annotation:invitation_create", args=[study.pk]),
                                 {"role": "annotator", "days": 31, "uses": 1})
    assert response.status_code == 400
    assert any("EVALSITE_INVITATION_MAX_DAYS" in e for e in response.context["invitation_form"].errors["days"])
    assert not Invitation.objects.exists() and not entries(study, Action.INVITATION_CREATED)


def test_a_link_cannot_make_evaluators(owner_client, study):
    response = owner_client.post(reverse("annotation:invitation_create", args=[study.pk]),
                                 {"role": "evaluator", "days": 7, "uses": 1})
    assert response.status_code == 400 and "role" in response.context["invitation_form"].errors
    with pytest.raises(services.ServiceError, match="annotators or managers"):
        services.invitation_create(study=study, role="evaluator")
    assert not Invitation.objects.exists()


def test_only_the_studys_evaluators_make_or_withdraw_links(study, annotators, manager, make_user, evaluator):
    invitation, _ = services.invitation_create(study=study, role="annotator", actor=evaluator)
    other = grant_study_creation(make_user("olga"))
    services.study_create(name="Olga's", created_by=other, prompts_data=PROMPTS_CSV, prompts_filename="p.csv")
    create = reverse("annotation:invitation_create", args=[study.pk])
    revoke = reverse("annotation:invitation_revoke", args=[study.pk, invitation.pk])
    for user, status in ((annotators[0], 403), (manager, 403), (other, 404)):
        client = client_for(user)
        assert client.post(create, {"role": "annotator", "days": 7, "uses": 1}).status_code == status
        assert client.post(revoke).status_code == status
    assert Client().post(create, {"role": "annotator", "days": 7}).status_code == 302  # to sign in
    assert client_for(evaluator).get(create).status_code == 405
    assert Invitation.objects.count() == 1 and Invitation.objects.get().revoked_at is None


# --- opening a link ----------------------------------------------------------------------


def test_a_signed_in_user_joins_through_a_valid_link_in_its_role_and_group(owner_client, study, make_user):
    path = make_link(owner_client, study, group="night")
    newcomer = client_for(make_user("newcomer"))
    page = newcomer.get(path)
    assert page.status_code == 200
    html = page.content.decode()
    assert "Join “Support study”" in html and "<strong>annotator</strong>" in html and "night" in html
    assert not StudyMember.objects.filter(user__username="newcomer").exists()  # opening it joins nobody
    response = newcomer.post(path, follow=True)
    assert response.redirect_chain[0] == (reverse("annotation:annotate", args=[study.pk]), 302)
    assert "You joined “Support study” as annotator." in response.content.decode()
    assert 'action="/tasks/' in response.content.decode()  # and gets a pair to judge at once
    member = StudyMember.objects.get(study=study, user__username="newcomer")
    assert (member.role, member.group, member.excluded) == ("annotator", "night", False)
    assert Invitation.objects.get().uses == 1
    (entry,) = entries(study, Action.INVITATION_ACCEPTED)
    assert (entry.actor_name, entry.target) == ("newcomer", "newcomer")
    assert entry.detail == {"invitation": Invitation.objects.get().pk, "role": "annotator", "group": "night"}


def test_a_manager_link_lands_on_the_leaderboard(owner_client, study, make_user):
    path = make_link(owner_client, study, role="manager")
    boss = client_for(make_user("boss"))
    response = boss.post(path)
    assert response.status_code == 302 and response["Location"] == reverse("arena:leaderboard", args=[study.pk])
    assert boss.get(response["Location"]).status_code == 200
    assert StudyMember.objects.get(study=study, user__username="boss").role == "manager"


def test_a_used_single_use_link_says_so_and_changes_nothing(owner_client, study, make_user):
    path = make_link(owner_client, study)
    assert client_for(make_user("first")).post(path).status_code == 302
    late = client_for(make_user("late"))
    for response in (late.get(path), late.post(path)):
        assert response.status_code == 410
        assert "This invitation has been used already: it was for one person. Nothing changed" in \
            response.content.decode()
        assert 'id="join"' not in response.content.decode()
    assert not StudyMember.objects.filter(user__username="late").exists()
    assert Invitation.objects.get().uses == 1
    assert len(entries(study, Action.INVITATION_ACCEPTED)) == 1


def test_an_expired_link_says_when_it_expired_and_changes_nothing(owner_client, study, make_user):
    path = make_link(owner_client, study)
    Invitation.objects.update(expires_at=timezone.now() - timedelta(minutes=1))  # a week went by
    late = client_for(make_user("late"))
    for response in (late.get(path), late.post(path)):
        assert response.status_code == 410
        assert "This invitation expired on " in response.content.decode()
        assert "Nothing changed; ask the study&#x27;s evaluator for a new link." in response.content.decode()
    assert not StudyMember.objects.filter(user__username="late").exists()
    assert Invitation.objects.get().uses == 0
    page = owner_client.get(reverse("annotation:study", args=[study.pk])).content.decode()
    assert 'data-state="expired"' in page


def test_a_withdrawn_link_says_so_and_withdrawing_is_recorded_once(owner_client, study, make_user):
    path = make_link(owner_client, study, uses=5)
    invitation = Invitation.objects.get()
    revoke = reverse("annotation:invitation_revoke", args=[study.pk, invitation.pk])
    response = owner_client.post(revoke, follow=True)
    assert f"Invitation {invitation.pk} withdrawn" in response.content.decode()
    assert f'data-invitation="{invitation.pk}" data-state="revoked"' in response.content.decode()
    (entry,) = entries(study, Action.INVITATION_REVOKED)
    assert (entry.actor, entry.detail) == (study.created_by, {"role": "annotator", "group": "", "joined": 0})
    again = owner_client.post(revoke, follow=True)
    assert "was already withdrawn" in again.content.decode()
    assert len(entries(study, Action.INVITATION_REVOKED)) == 1
    late = client_for(make_user("late"))
    for response in (late.get(path), late.post(path)):
        assert response.status_code == 410 and "This invitation was withdrawn on " in response.content.decode()
    assert not StudyMember.objects.filter(user__username="late").exists()


def test_a_member_with_another_role_is_told_and_keeps_their_role(owner_client, study, manager, evaluator):
    path = make_link(owner_client, study, role="annotator")
    for user, role in ((manager, "manager"), (evaluator, "evaluator")):
        client = client_for(user)
        for response in (client.get(path), client.post(path)):
            assert response.status_code == 409
            html = response.content.decode()
            assert f"You are already {role} in “Support study”, and this link invites annotators." in html
            assert "Nothing changed" in html and 'id="join"' not in html
        assert StudyMember.objects.get(study=study, user=user).role == role
    assert Invitation.objects.get().uses == 0
    assert not entries(study, Action.INVITATION_ACCEPTED)


def test_a_member_in_the_same_role_is_told_they_are_in_and_uses_no_place(owner_client, study, annotators):
    path = make_link(owner_client, study, role="annotator")
    client = client_for(annotators[0])
    page = client.get(path)
    assert page.status_code == 200 and "You are already annotator in this study" in page.content.decode()
    response = client.post(path, follow=True)
    assert "You are already annotator in “Support study”; nothing changed." in response.content.decode()
    assert Invitation.objects.get().uses == 0 and not entries(study, Action.INVITATION_ACCEPTED)


def test_someone_not_signed_in_signs_in_and_comes_back_to_the_link(owner_client, study, make_user):
    path = make_link(owner_client, study)
    make_user("visitor")
    browser = Client()
    response = browser.get(path)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next={quote(path)}"
    login_page = browser.get(response["Location"])
    assert f'name="next" value="{path}"' in login_page.content.decode()
    signed_in = browser.post(reverse("login"), {"username": "visitor", "password": "visitor-pw", "next": path})
    assert signed_in.status_code == 302 and signed_in["Location"] == path
    assert browser.get(path).status_code == 200
    assert browser.post(path).status_code == 302
    assert StudyMember.objects.get(study=study, user__username="visitor").role == "annotator"


def test_a_link_that_does_not_exist_is_a_404_in_plain_words(study, make_user):
    client = client_for(make_user("guesser"))
    response = client.get(reverse("annotation:invitation", args=["A" * 43]))
    assert response.status_code == 404
    assert "This invitation link is not valid" in response.content.decode()
    assert client.post(reverse("annotation:invitation", args=["A" * 43])).status_code == 404
    assert client.get("/invitations/short/").status_code == 404
    assert not StudyMember.objects.filter(user__username="guesser").exists()


def test_a_crowd_link_lets_any_number_join_and_a_link_for_two_stops_at_two(owner_client, study, make_user):
    crowd = make_link(owner_client, study, crowd="on", group="crowd")
    for n in range(4):
        assert client_for(make_user(f"c{n}")).post(crowd).status_code == 302
    assert Invitation.objects.get(max_uses__isnull=True).uses == 4
    assert StudyMember.objects.filter(study=study, group="crowd", role="annotator").count() == 4
    pair = make_link(owner_client, study, uses=2)
    assert [client_for(make_user(f"p{n}")).post(pair).status_code for n in range(3)] == [302, 302, 410]
    assert Invitation.objects.get(max_uses=2).uses == 2
    page = owner_client.get(reverse("annotation:study", args=[study.pk])).content.decode()
    assert "4 of any number" in page and "2 of 2" in page and 'data-state="used up"' in page


@pytest.mark.django_db(transaction=True)
def test_people_racing_for_a_single_use_link_leave_exactly_one_member(study_factory, make_user):
    """Eight people press Join at the same moment: the conditional UPDATE on ``uses`` lets one in."""
    study = study_factory(candidates=("alpha-model", "beta-model"))
    _, token = services.invitation_create(study=study, role="annotator", max_uses=1)
    path = reverse("annotation:invitation", args=[token])
    clients = [client_for(make_user(f"racer{n}")) for n in range(8)]
    start = threading.Barrier(len(clients))
    statuses = [None] * len(clients)

    def race(n):
        try:
            start.wait()
            statuses[n] = clients[n].post(path).status_code
        finally:
            connections.close_all()

    threads = [threading.Thread(target=race, args=(n,)) for n in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(statuses) == [302] + [410] * 7
    assert StudyMember.objects.filter(study=study, user__username__startswith="racer").count() == 1
    assert Invitation.objects.get().uses == 1
    assert AuditEntry.objects.filter(study=study, action=Action.INVITATION_ACCEPTED).count() == 1


@pytest.mark.django_db(transaction=True)
def test_one_person_pressing_join_twice_at_once_joins_once_and_uses_one_place(study_factory, make_user):
    study = study_factory(candidates=("alpha-model", "beta-model"))
    _, token = services.invitation_create(study=study, role="annotator", max_uses=None)
    path = reverse("annotation:invitation", args=[token])
    user = make_user("doubleclick")
    clients = [client_for(user) for _ in range(4)]
    start = threading.Barrier(len(clients))
    statuses = [None] * len(clients)

    def press(n):
        try:
            start.wait()
            statuses[n] = clients[n].post(path).status_code
        finally:
            connections.close_all()

    threads = [threading.Thread(target=press, args=(n,)) for n in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert statuses == [302] * 4
    assert StudyMember.objects.filter(study=study, user=user).count() == 1
    assert Invitation.objects.get().uses == 1
    assert AuditEntry.objects.filter(study=study, action=Action.INVITATION_ACCEPTED).count() == 1


# --- by account: adding, changing a role, removing ------------------------------------------


def test_adding_an_existing_member_with_another_role_is_refused_pointing_at_change(owner_client, study, manager):
    response = owner_client.post(reverse("annotation:member_add", args=[study.pk]),
                                 {"username": "manny", "role": "annotator", "group": ""})
    assert response.status_code == 409
    html = response.content.decode()
    assert "manny is already manager in this study; nothing changed. To make them annotator, use “Change” " \
           "beside manny under People." in html
    assert StudyMember.objects.get(study=study, user=manager).role == "manager"
    assert not AuditEntry.objects.filter(study=study, target="manny").exists()


def test_adding_an_existing_member_again_in_the_same_role_changes_nothing(owner_client, study):
    response = owner_client.post(reverse("annotation:member_add", args=[study.pk]),
                                 {"username": "ann1", "role": "annotator", "group": ""}, follow=True)
    assert "ann1 is already annotator here; nothing changed." in response.content.decode()
    assert not AuditEntry.objects.filter(study=study, target="ann1").exists()


def test_adding_by_account_makes_a_member_and_records_it(owner_client, study, make_user):
    make_user("newcomer")
    response = owner_client.post(reverse("annotation:member_add", args=[study.pk]),
                                 {"username": "newcomer", "role": "manager", "group": "legal"}, follow=True)
    assert "newcomer is now manager." in response.content.decode()
    member = StudyMember.objects.get(study=study, user__username="newcomer")
    assert (member.role, member.group) == ("manager", "legal")
    (entry,) = entries(study, Action.MEMBER_ADDED)
    assert (entry.target, entry.detail) == ("newcomer", {"role": "manager", "group": "legal"})


def test_changing_a_role_is_its_own_action_with_its_own_entry(owner_client, study, annotators):
    url = reverse("annotation:member_change", args=[study.pk, annotators[0].pk])
    response = owner_client.post(url, {"role": "manager", "group": ""}, follow=True)
    assert "ann1 is now manager (was annotator)." in response.content.decode()
    assert StudyMember.objects.get(study=study, user=annotators[0]).role == "manager"
    (entry,) = entries(study, Action.MEMBER_ROLE_CHANGED)
    assert (entry.target, entry.actor, entry.detail) == ("ann1", study.created_by,
                                                         {"role": {"from": "annotator", "to": "manager"}})
    # a group alone is a group change; the same values again change nothing
    owner_client.post(url, {"role": "manager", "group": "legal"})
    (group_entry,) = entries(study, Action.MEMBER_GROUP_CHANGED)
    assert group_entry.detail == {"group": {"from": "", "to": "legal"}}
    owner_client.post(url, {"role": "manager", "group": "legal"})
    assert len(entries(study, Action.MEMBER_ROLE_CHANGED) + entries(study, Action.MEMBER_GROUP_CHANGED)) == 2
    # the page offers the change beside each member
    page = owner_client.get(reverse("annotation:study", args=[study.pk])).content.decode()
    assert reverse("annotation:member_change", args=[study.pk, annotators[1].pk]) in page


def test_the_creator_stays_the_evaluator(owner_client, study):
    url = reverse("annotation:member_change", args=[study.pk, study.created_by_id])
    response = owner_client.post(url, {"role": "annotator", "group": ""}, follow=True)
    assert "eve created this study and stays its evaluator" in response.content.decode()
    assert StudyMember.objects.get(study=study, user=study.created_by).role == "evaluator"
    assert not entries(study, Action.MEMBER_ROLE_CHANGED)


def test_a_role_change_of_a_stranger_or_by_a_non_evaluator_is_refused(owner_client, study, annotators, manager,
                                                                       make_user):
    stranger = make_user("stranger")
    assert owner_client.post(reverse("annotation:member_change", args=[study.pk, stranger.pk]),
                             {"role": "manager"}).status_code == 404
    url = reverse("annotation:member_change", args=[study.pk, annotators[1].pk])
    assert client_for(manager).post(url, {"role": "evaluator", "group": ""}).status_code == 403
    assert client_for(annotators[1]).post(url, {"role": "evaluator", "group": ""}).status_code == 403
    response = owner_client.post(url, {"role": "owner", "group": ""}, follow=True)
    assert "role: Select a valid choice" in response.content.decode()
    assert StudyMember.objects.get(study=study, user=annotators[1]).role == "annotator"
    assert not entries(study, Action.MEMBER_ROLE_CHANGED)


def test_a_group_change_of_an_annotator_who_voted_redoes_the_leaderboards(owner_client, study, annotators):
    assignment = services.assignment_next(study=study, annotator=annotators[0])
    services.judgment_submit(assignment=assignment, choice="left")
    version = type(study).objects.get(pk=study.pk).version
    owner_client.post(reverse("annotation:member_change", args=[study.pk, annotators[0].pk]),
                      {"role": "annotator", "group": "night"})
    assert type(study).objects.get(pk=study.pk).version == version + 1


def test_a_member_who_joined_by_link_can_be_removed(owner_client, study, make_user):
    path = make_link(owner_client, study, role="manager")
    joiner = make_user("joiner")
    client_for(joiner).post(path)
    response = owner_client.post(reverse("annotation:member_remove", args=[study.pk, joiner.pk]), follow=True)
    assert "joiner is no longer in this study." in response.content.decode()
    assert not StudyMember.objects.filter(study=study, user=joiner).exists()
    (entry,) = entries(study, Action.MEMBER_REMOVED)
    assert (entry.target, entry.detail) == ("joiner", {"role": "manager", "group": ""})
    assert client_for(joiner).get(reverse("arena:leaderboard", args=[study.pk])).status_code == 404


def test_creating_a_study_refuses_one_person_in_two_roles(evaluator, annotators):
    with pytest.raises(services.ServiceError, match="ann1 is listed as annotator and as manager"):
        services.study_create(name="Twice", created_by=evaluator, prompts_data=PROMPTS_CSV,
                              prompts_filename="p.csv", annotators=annotators[:1], managers=annotators[:1])
    with pytest.raises(services.ServiceError, match="eve is listed as evaluator and as annotator"):
        services.study_create(name="Self", created_by=evaluator, prompts_data=PROMPTS_CSV,
                              prompts_filename="p.csv", annotators=[evaluator])
    assert not type(evaluator).objects.filter(study_memberships__study__name__in=["Twice", "Self"]).exists()
