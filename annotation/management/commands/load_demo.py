"""Create the demo users and studies, build the tiny demo models and queue generation.

Two studies: customer-support assistants (text) and "Banner concepts" (text to image, on two
tiny diffusers pipelines assembled from configs, with a generated reference set for FID and KID
and a tiny open_clip model with random weights for CLIP Score)."""
from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Permission
from django.core.management.base import BaseCommand, CommandError

from annotation import services
from annotation.demo_data import (
    BANNER_CRITERIA,
    BANNER_PIPELINES,
    BANNER_PROMPTS,
    BANNER_REFERENCE_IMAGES,
    BANNER_STUDY_NAME,
    BANNER_TAGS,
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


def build_banner_pipelines() -> dict[str, str]:
    """Build (once) the tiny diffusers pipelines of the banner demo; returns name → path."""
    from annotation.generation.tiny_models import build_tiny_diffusion_pipeline

    return {name: str(build_tiny_diffusion_pipeline(settings.EVALSITE_MODELS_DIR / name, seed=seed, size=32))
            for name, seed in BANNER_PIPELINES}


# The demo's CLIP: open_clip's architecture shrunk to one layer of width 32 (its bundled BPE
# tokenizer, so texts tokenise as for ViT-B-32), random weights: about 8 MB, built in a second.
DEMO_CLIP_ARCHITECTURE = "evalsite-tiny-clip"
DEMO_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def build_demo_clip() -> str:
    """Build (once) the banner demo's CLIP weights under EVALSITE_MODELS_DIR/tiny-clip; returns
    the weights file's path.

    The architecture's config is written beside the weights as ``evalsite-tiny-clip.json``, where
    ``metrics.image.load_clip`` finds it (open_clip does not ship it), so a worker in another
    process loads the same model from the path and the architecture name alone.
    """
    import json
    import os

    folder = settings.EVALSITE_MODELS_DIR / "tiny-clip"
    weights = folder / "tiny-clip.pt"
    config = folder / f"{DEMO_CLIP_ARCHITECTURE}.json"
    if weights.is_file() and config.is_file():
        return str(weights)
    import open_clip
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(DEMO_CLIP_CONFIG, indent=1))
    open_clip.add_model_config(config)
    with torch.random.fork_rng(devices=[]):  # seeded, without touching the process's generator
        torch.manual_seed(0)
        model = open_clip.create_model(DEMO_CLIP_ARCHITECTURE, pretrained=None)
    partial = weights.with_name(weights.name + ".partial")
    torch.save(model.state_dict(), partial)
    os.replace(partial, weights)  # a run stopped halfway leaves no weights file to be taken for whole
    return str(weights)


def reference_zip(n: int, seed: int = 0) -> bytes:
    """A zip of ``n`` small PNG "real banners": seeded flat backgrounds with a few coloured shapes."""
    import io
    import random
    import zipfile

    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for k in range(n):
            image = Image.new("RGB", (64, 32), tuple(rng.randrange(256) for _ in range(3)))
            draw = ImageDraw.Draw(image)
            for _ in range(3):
                x, y = rng.randrange(48), rng.randrange(20)
                box = (x, y, x + rng.randrange(8, 16), y + rng.randrange(6, 12))
                colour = tuple(rng.randrange(256) for _ in range(3))
                (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
            png = io.BytesIO()
            image.save(png, format="PNG")
            archive.writestr(f"banner-{k:02d}.png", png.getvalue())
    return buffer.getvalue()


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
        self._banner_study(users, actor, no_generate)

    def _banner_study(self, users: dict, actor, no_generate: bool) -> None:
        from django.core.files.uploadedfile import SimpleUploadedFile

        from metrics.models import ReferenceSet
        from metrics.references import reference_set_upload

        study = Study.objects.filter(name=BANNER_STUDY_NAME).first()
        if study is None:
            study = services.study_create(
                name=BANNER_STUDY_NAME,
                description="Is a diffusion model fit to draft marketing banners? 12 briefs, 3 images each from "
                "two tiny demo pipelines (their images are noise), rated on relevance, creativity and style.",
                created_by=users["evaluator"],
                prompts_data=BANNER_PROMPTS.read_bytes(),
                prompts_filename=BANNER_PROMPTS.name,
                overlap=1,
                samples_per_prompt=3,
                generation_settings={"seed": 0},
                annotators=[u for name, u in users.items() if name.startswith("annotator")],
                managers=[users["manager"]],
                tasks={"task_kinds": "both", "likert_criteria": BANNER_CRITERIA, "failure_tags": BANNER_TAGS,
                       "ask_rationale": "optional"},
            )
            self.stdout.write(f"Created study {study.pk}: {study.name}")
        paths = build_banner_pipelines()
        for name, _seed in BANNER_PIPELINES:
            if not study.candidates.filter(name=name).exists():
                services.candidate_create(study=study, name=name, backend="diffusers", actor=actor,
                                          spec={"model": paths[name], "steps": 4, "guidance_scale": 3.0,
                                                "width": 32, "height": 32, "batch_size": 6})
        if not ReferenceSet.objects.filter(study=study, name="real-banners").exists():
            reference_set_upload(study=study, name="real-banners", actor=actor, upload=SimpleUploadedFile(
                "real-banners.zip", reference_zip(BANNER_REFERENCE_IMAGES), content_type="application/zip"))
        clip = build_demo_clip()
        self.stdout.write(f"Banner study {study.pk}: on its Metrics page, clip_score takes model {clip} and "
                          f"architecture {DEMO_CLIP_ARCHITECTURE}; fid and kid take reference real-banners.")
        if not no_generate:
            queued = services.generation_start(study=study, actor=actor)
            self.stdout.write(f"Banner study {study.pk}: {queued} images queued for generation.")
