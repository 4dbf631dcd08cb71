"""Multimodal metrics on CLIP-style embeddings (plain Python, no Django import).

Zero-shot classification accuracy (Radford et al. 2021, "Learning Transferable Visual
Models From Natural Language Supervision", §3.1.4: one class embedding per class, the
normalised mean of its prompt-template embeddings) and cross-modal retrieval recall@K in
both directions.  torch and open_clip are imported only inside :func:`classifier_weights`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from metrics.result import MetricResult, mean_interval, mean_result

RECALL_DEFINITION = (
    "a hit when any positive is within the top K (ties broken by index order); "
    "recall@K = share of queries with a hit; queries without positives are left out"
)


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def classifier_weights(model, tokenizer, classnames: Sequence[str], templates: Sequence[str | Callable]) -> np.ndarray:
    """Zero-shot class embeddings, shape (n_classes, d), each L2-normalised.

    For each class the prompts ``template.format(classname)`` (or ``template(classname)``
    for callables) are encoded with ``model.encode_text``, each embedding normalised, their
    mean taken and normalised again, as open_clip's ``build_zero_shot_classifier`` does.
    """
    import torch

    if not classnames or not templates:
        raise ValueError("need at least one class name and one template")
    weights = []
    with torch.inference_mode():
        for name in classnames:
            prompts = [t(name) if callable(t) else t.format(name) for t in templates]
            emb = model.encode_text(tokenizer(prompts)).float().cpu().numpy().astype(np.float64)
            weights.append(_normalise(_normalise(emb).mean(axis=0)))
    return np.stack(weights)


def zero_shot_accuracy(
    image_embeddings, class_text_embeddings, labels, *, rng: np.random.Generator
) -> MetricResult:
    """Top-1 zero-shot accuracy: each image is assigned the class of highest cosine.

    ``class_text_embeddings`` is (n_classes, d), e.g. from :func:`classifier_weights`;
    ``labels`` the true class index of each image.  Interval: bootstrap over images.
    """
    img = _normalise(np.asarray(image_embeddings, dtype=np.float64))
    cls = _normalise(np.asarray(class_text_embeddings, dtype=np.float64))
    y = np.asarray(labels, dtype=np.int64)
    if img.ndim != 2 or cls.ndim != 2 or img.shape[1] != cls.shape[1] or y.shape != (img.shape[0],):
        raise ValueError(f"shapes do not fit: images {img.shape}, classes {cls.shape}, labels {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= cls.shape[0]):
        raise ValueError("a label is outside the class range")
    correct = (np.argmax(img @ cls.T, axis=1) == y).astype(np.float64)
    return mean_result("zero_shot_accuracy", correct,
                       {"classes": int(cls.shape[0]), "prediction": "argmax cosine (top-1)"}, rng)


def _positives_matrix(positives, shape: tuple[int, int]) -> np.ndarray:
    if isinstance(positives, np.ndarray) and positives.ndim == 2:
        mat = positives.astype(bool)
        if mat.shape != shape:
            raise ValueError(f"positives {mat.shape} does not match sim {shape}")
        return mat
    mat = np.zeros(shape, dtype=bool)
    if len(positives) != shape[0]:
        raise ValueError(f"need one set of positive texts per image ({shape[0]}), got {len(positives)}")
    for i, cols in enumerate(positives):
        for j in cols:
            mat[i, j] = True
    return mat


def _hits(sim: np.ndarray, pos: np.ndarray, k: int) -> np.ndarray:
    """Per row: 1.0 when a positive is among the K highest scores, for rows with positives."""
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    hit = np.take_along_axis(pos, order, axis=1).any(axis=1)
    return hit[pos.any(axis=1)].astype(np.float64)


def recall_at_k(sim, positives, k: int, *, rng: np.random.Generator) -> dict[str, MetricResult]:
    """Cross-modal retrieval recall@K in both directions.

    ``sim`` is (n_images, n_texts), higher is more similar (e.g. cosine of CLIP
    embeddings).  ``positives`` is a boolean matrix of the same shape or, for each image,
    the indices of its matching texts (an image may have several captions).
    ``image_to_text``: for each image, a hit when any of its texts is within the top K
    texts; ``text_to_image``: for each text, a hit when any of its images is within the
    top K images.  Returns ``{"image_to_text": ..., "text_to_image": ...}``, each with a
    bootstrap interval over its queries.
    """
    s = np.asarray(sim, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"sim must be 2-d, got {s.shape}")
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    pos = _positives_matrix(positives, s.shape)
    out = {}
    for name, scores, p in (("image_to_text", s, pos), ("text_to_image", s.T, pos.T)):
        hits = _hits(scores, p, k)
        lower, upper = mean_interval(hits, rng)
        out[name] = MetricResult(
            name=f"recall@{k}_{name}",
            value=float(hits.mean()) if hits.size else math.nan,
            lower=lower,
            upper=upper,
            n=int(hits.size),
            config={
                "k": k,
                "direction": name.replace("_", " "),
                "definition": RECALL_DEFINITION,
                "queries_without_positives": int(p.shape[0] - hits.size),
                "candidates": int(p.shape[1]),
            },
            per_item=tuple(hits.tolist()),
        )
    return out
