"""Create the demo users and study, build the tiny demo models and queue generation."""
from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Permission
from django.core.management.base import BaseCommand, CommandError

from annotation import services
from annotation.demo_data import (
    DEMO_IMPORTED,
    DEMO_MODELS,
    DEMO_PROMPTS,
    DEMO_STUDY_NAME,
    DEMO_USERS,
)
from annotation.models import Output, Study


def build_demo_models(corpus: list[str]) -> dict[str, str]:
    """Build (once) the tiny demo models under EVALSITE_MODELS_DIR; returns name → path."""
    from annotation.generation.tiny_models import build_tiny_model

    paths = {}
    for name, kind, seed in DEMO_MODELS:
        path = settings.EVALSITE_MODELS_DIR / name
        build_tiny_model(path, kind=kind, seed=seed, corpus=corpus)
        paths[name] = str(path)
    return paths


class Command(BaseCommand):
    help = "Load the demo study (idempotent: a second run reuses what is there)."

    def add_arguments(self, parser):
        parser.add_argument("--no-generate", action="store_true", help="Do not queue generation.")

    def handle(self, *args, no_generate: bool = False, **options):
        if not settings.DEBUG:
            raise CommandError("load_demo creates users with known passwords; run it only with DEBUG on.")
        users = {}
        for username, _role, password in DEMO_USERS:
            users[username] = services.user_ensure(username=username, password=password)
        # The evaluator's right to create studies is this one permission, not staff status;
        # inside the demo study the rights come from membership.
        users["evaluator"].user_permissions.add(
            Permission.objects.get(content_type__app_label="annotation", codename="add_study")
        )

        actor = users["evaluator"]  # the demo's changes show in its audit log as the evaluator's
        study = Study.objects.filter(name=DEMO_STUDY_NAME).first()
        if study is None:
            study = services.study_create(
                name=DEMO_STUDY_NAME,
                description="Which assistant answers our customers best? 40 real-style support "
                "questions; three tiny demo models (gibberish) against the support team's playbook.",
                created_by=users["evaluator"],
                prompts_data=DEMO_PROMPTS.read_bytes(),
                prompts_filename=DEMO_PROMPTS.name,
                overlap=1,
                generation_settings={"max_new_tokens": 48, "temperature": 0.0, "seed": 0},
                annotators=[u for name, u in users.items() if name.startswith("annotator")],
                managers=[users["manager"]],
            )
            self.stdout.write(f"Created study {study.pk}: {study.name}")
        corpus = list(study.prompts.values_list("text", flat=True)) + list(
            study.prompts.values_list("reference", flat=True)
        )
        paths = build_demo_models(corpus)
        for name, _kind, _seed in DEMO_MODELS:
            if not study.candidates.filter(name=name).exists():
                services.candidate_create(study=study, name=name, backend="transformers",
                                          spec={"model": paths[name], "batch_size": 8}, actor=actor)
        if not study.candidates.filter(name="support-playbook").exists():
            candidate = services.candidate_create(study=study, name="support-playbook", backend="imported", spec={},
                                                  actor=actor)
            services.outputs_import(candidate=candidate, data=DEMO_IMPORTED.read_bytes(), filename=DEMO_IMPORTED.name,
                                    actor=actor)
        if not no_generate:
            queued = services.generation_start(study=study, actor=actor)
            done = study.outputs.filter(status=Output.Status.DONE).count()
            self.stdout.write(f"Demo study {study.pk}: {done} outputs ready, {queued} queued for generation.")
