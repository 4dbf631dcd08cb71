"""Who may do what: one permission creates studies; inside a study, membership decides.

``is_staff`` grants nothing here (it is for Django's admin), and neither does having
created a study: the creator is an evaluator because ``study_create`` makes them a member.
Superusers may do everything.
"""
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.urls import reverse

from annotation import services
from annotation.demo_data import DEMO_MODELS, DEMO_STUDY_NAME
from annotation.models import Candidate, Study, StudyMember
from tests.conftest import PROMPTS_CSV, grant_study_creation

pytestmark = pytest.mark.django_db


def _create(client, name="Rights study"):
    return client.post(reverse("annotation:study_create"), {
        "name": name, "overlap": 1, "max_new_tokens": 16, "temperature": 0.0, "seed": 0,
        "prompts": SimpleUploadedFile("p.csv", PROMPTS_CSV),
    })


def test_a_staff_user_without_the_permission_cannot_create_a_study(client, make_user):
    client.force_login(make_user("stella", staff=True))
    assert client.get(reverse("annotation:study_create")).status_code == 403
    assert _create(client).status_code == 403
    assert not Study.objects.exists()
    assert "New study" not in client.get(reverse("annotation:home")).content.decode()


def test_a_user_with_the_permission_creates_a_study_and_is_its_evaluator_member(client, make_user):
    user = grant_study_creation(make_user("pat"))
    assert not user.is_staff
    client.force_login(user)
    assert "New study" in client.get(reverse("annotation:home")).content.decode()
    assert client.get(reverse("annotation:study_create")).status_code == 200
    response = _create(client)
    assert response.status_code == 302
    study = Study.objects.get()
    assert StudyMember.objects.filter(study=study, user=user, role=StudyMember.Role.EVALUATOR).exists()
    assert client.get(reverse("annotation:study", args=[study.pk])).status_code == 200


def test_a_superuser_may_create_and_open_every_study(client, django_user_model, evaluator):
    study = services.study_create(name="Someone's", created_by=evaluator, prompts_data=PROMPTS_CSV,
                                  prompts_filename="p.csv")
    root = django_user_model.objects.create_superuser("root", password="root-pw")
    client.force_login(root)
    assert client.get(reverse("annotation:study", args=[study.pk])).status_code == 200
    assert _create(client, name="Root's").status_code == 302


def test_an_evaluator_of_one_study_gets_404_on_another(client, evaluator, make_user):
    study = services.study_create(name="Eve's", created_by=evaluator, prompts_data=PROMPTS_CSV,
                                  prompts_filename="p.csv")
    other = grant_study_creation(make_user("olga"))
    services.study_create(name="Olga's", created_by=other, prompts_data=PROMPTS_CSV, prompts_filename="p.csv")
    client.force_login(other)
    for name in ("annotation:study", "annotation:progress"):
        assert client.get(reverse(name, args=[study.pk])).status_code == 404
    for name in ("annotation:generate", "annotation:candidate_add", "annotation:retry_failed"):
        assert client.post(reverse(name, args=[study.pk]), {"name": "x", "backend": "imported"}).status_code == 404
    assert not study.candidates.exists()
    assert "Eve&#x27;s" not in client.get(reverse("annotation:home")).content.decode()


def test_staff_status_opens_no_study(client, evaluator, make_user):
    study = services.study_create(name="Eve's", created_by=evaluator, prompts_data=PROMPTS_CSV,
                                  prompts_filename="p.csv")
    client.force_login(make_user("stella", staff=True))
    assert client.get(reverse("annotation:study", args=[study.pk])).status_code == 404


def test_membership_not_authorship_is_what_gives_the_creator_rights(client, evaluator):
    study = services.study_create(name="Eve's", created_by=evaluator, prompts_data=PROMPTS_CSV,
                                  prompts_filename="p.csv")
    client.force_login(evaluator)
    assert client.get(reverse("annotation:study", args=[study.pk])).status_code == 200
    StudyMember.objects.filter(study=study, user=evaluator).delete()  # e.g. an administrator took it away
    assert client.get(reverse("annotation:study", args=[study.pk])).status_code == 404
    assert "Eve&#x27;s" not in client.get(reverse("annotation:home")).content.decode()
    StudyMember.objects.create(study=study, user=evaluator, role=StudyMember.Role.MANAGER)
    assert client.get(reverse("annotation:study", args=[study.pk])).status_code == 403  # a manager, not an evaluator


def test_the_demo_evaluator_gets_the_permission_not_staff(settings, tmp_path, django_user_model):
    settings.DEBUG = True
    settings.EVALSITE_MODELS_DIR = tmp_path / "models"  # inside the tests' model root
    call_command("load_demo", "--no-generate")
    evaluator = django_user_model.objects.get(username="evaluator")
    assert not evaluator.is_staff and not evaluator.is_superuser
    assert evaluator.has_perm("annotation.add_study")
    study = Study.objects.get(name=DEMO_STUDY_NAME)
    assert StudyMember.objects.filter(study=study, user=evaluator, role=StudyMember.Role.EVALUATOR).exists()
    models = Candidate.objects.filter(study=study, backend="transformers")
    assert models.count() == len(DEMO_MODELS)
    assert set(models.values_list("check_state", flat=True)) == {Candidate.Check.OK}
