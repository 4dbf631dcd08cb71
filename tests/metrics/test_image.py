"""Image metrics against closed forms, SciPy's sqrtm, direct computations and real weights."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg

from metrics.image import (
    FID_SMALL_N_WARNING,
    clip_embeddings,
    clip_score,
    fid,
    fid_from_features,
    frechet_distance,
    inception_features,
    inception_score,
    kid,
)


def _random_spd(rng, d, n):
    x = rng.standard_normal((n, d))
    return np.cov(x, rowvar=False)


def _sqrtm_frechet(mu1, s1, mu2, s2):
    # pytorch-fid's method (Heusel et al.'s reference code), the test oracle.
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_the_plain_module_does_not_import_django_or_torch():
    code = "import sys, metrics.image, metrics.multimodal; print('django' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_frechet_distance_between_one_dimensional_gaussians_is_the_closed_form():
    # W2(N(m1, s1²), N(m2, s2²))² = (m1 - m2)² + (s1 - s2)²
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


def test_frechet_distance_with_diagonal_covariances_is_the_sum_of_root_differences():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 5, 50), rng.uniform(0.1, 5, 50)
    mu1, mu2 = rng.standard_normal(50), rng.standard_normal(50)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_with_commuting_covariances_is_the_closed_form():
    # S1 = Q diag(a) Qᵀ and S2 = Q diag(b) Qᵀ commute, so tr((S1 S2)^½) = Σ sqrt(a b).
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    a, b = rng.uniform(0.1, 3, 30), rng.uniform(0.1, 3, 30)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    mu = np.zeros(30)
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(np.sum((np.sqrt(a) - np.sqrt(b)) ** 2), rel=1e-9)


def test_frechet_distance_of_a_gaussian_with_itself_is_zero():
    rng = np.random.default_rng(2)
    s = _random_spd(rng, 64, 500)
    mu = rng.standard_normal(64)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-9 * np.trace(s)


@pytest.mark.parametrize("d,n", [(64, 1000), (2048, 4000)])
def test_frechet_distance_agrees_with_the_sqrtm_method(d, n):
    rng = np.random.default_rng(d)
    s1, s2 = _random_spd(rng, d, n), _random_spd(rng, d, n) * 1.3
    mu1, mu2 = rng.standard_normal(d) * 0.1, rng.standard_normal(d) * 0.1
    expected = _sqrtm_frechet(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def _direct_kid(x, y):
    # O(n²) loops straight from Bińkowski et al. 2018, eq. (3) with k(a,b) = (a·b/d + 1)³.
    m, d = x.shape

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_with_one_full_subset_equals_the_direct_computation():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((20, 8)), rng.standard_normal((20, 8)) + 0.5
    result = kid(x, y, subsets=1, subset_size=20, rng=np.random.default_rng(0))
    assert result.value == pytest.approx(_direct_kid(x, y), rel=1e-12)
    assert result.config["subset_size"] == 20


def test_kid_averages_subsets_and_is_near_zero_for_one_distribution():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((300, 16)), rng.standard_normal((300, 16))
    same = kid(x, y, subsets=20, subset_size=100, rng=np.random.default_rng(0))
    shifted = kid(x, y + 1.0, subsets=20, subset_size=100, rng=np.random.default_rng(0))
    assert same.lower <= same.value <= same.upper
    assert abs(same.value) < shifted.value / 20
    again = kid(x, y, subsets=20, subset_size=100, rng=np.random.default_rng(0))
    assert again == same


def _direct_u(x, y):
    # the unbiased MMD² over all pairs for sets of any sizes, by explicit loops (Gretton et al. 2012, eq. 3)
    d = x.shape[1]

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1.0) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_standard_error_is_the_delete_one_jackknife_recomputed_by_hand():
    rng = np.random.default_rng(11)
    x, y = rng.standard_normal((7, 3)), rng.standard_normal((9, 3)) + 0.3
    # delete each item of x, then each of y, and recompute from scratch (two-sample jackknife, Arvesen 1969)
    va = np.array([_direct_u(np.delete(x, i, 0), y) for i in range(7)])
    vb = np.array([_direct_u(x, np.delete(y, j, 0)) for j in range(9)])
    se = np.sqrt(6 / 7 * ((va - va.mean()) ** 2).sum() + 8 / 9 * ((vb - vb.mean()) ** 2).sum())
    result = kid(x, y, subsets=10, subset_size=1000, rng=np.random.default_rng(0))
    assert result.config["mmd2_all_pairs"] == pytest.approx(_direct_u(x, y), rel=1e-12)
    # 7 vs 9 items: subsets of 7 are drawn from y, and their average adds its own variance
    assert result.config["subset_size"] == 7 and result.config["subsets"] == 10
    total_se = np.sqrt(se**2 + result.config["subset_std"] ** 2 / 10)
    assert result.config["standard_error"] == pytest.approx(total_se, rel=1e-10)
    assert result.lower == pytest.approx(result.value - 1.959963984540054 * total_se, rel=1e-10)
    assert result.upper == pytest.approx(result.value + 1.959963984540054 * total_se, rel=1e-10)
    # equal sizes: one subset is the whole of both sets, the value is the all-pairs estimate
    x9 = np.vstack([x, rng.standard_normal((2, 3))])
    vx = np.array([_direct_u(np.delete(x9, i, 0), y) for i in range(9)])
    vy = np.array([_direct_u(x9, np.delete(y, j, 0)) for j in range(9)])
    se9 = np.sqrt(8 / 9 * ((vx - vx.mean()) ** 2).sum() + 8 / 9 * ((vy - vy.mean()) ** 2).sum())
    whole = kid(x9, y, subsets=10, subset_size=1000, rng=np.random.default_rng(0))
    assert whole.value == pytest.approx(_direct_u(x9, y), rel=1e-12)
    assert whole.config["standard_error"] == pytest.approx(se9, rel=1e-10)


def test_kid_sums_the_kernel_in_blocks_with_the_same_result(monkeypatch):
    import metrics.image

    rng = np.random.default_rng(12)
    x, y = rng.standard_normal((50, 6)), rng.standard_normal((70, 6)) + 0.2
    whole = kid(x, y, subsets=5, subset_size=30, rng=np.random.default_rng(0))
    monkeypatch.setattr(metrics.image, "KERNEL_BLOCK_ENTRIES", 100)  # one or two rows at a time
    blocks = kid(x, y, subsets=5, subset_size=30, rng=np.random.default_rng(0))
    assert blocks.value == whole.value
    assert blocks.config["standard_error"] == pytest.approx(whole.config["standard_error"], rel=1e-12)
    row_sums = metrics.image.kernel_row_sums(y)
    given = kid(x, y, subsets=5, subset_size=30, rng=np.random.default_rng(0), row_sums_b=row_sums)
    assert given.lower == pytest.approx(whole.lower, rel=1e-12)


def test_kid_has_a_real_interval_when_both_sets_are_smaller_than_the_subset_size():
    # 300 vs 300 with the default subset size 1000: every "subset" is the whole of both sets
    rng = np.random.default_rng(13)
    x, y = rng.standard_normal((300, 16)), rng.standard_normal((300, 16)) * 1.1 + 0.15
    result = kid(x, y, rng=np.random.default_rng(0))
    assert result.lower < result.value < result.upper
    assert result.upper - result.lower > 0.1 * abs(result.value)
    assert result.config["subsets"] == 1 and result.config["subset_size"] == 300


def _kid_draw(rng, n_a, n_b, d=16):
    return rng.standard_normal((n_a, d)), rng.standard_normal((n_b, d)) * 1.1 + 0.15


@pytest.mark.parametrize("n_a,n_b,subset_size", [(200, 200, 1000), (60, 300, 60), (40, 40, 1000)])
def test_the_kid_interval_is_as_wide_as_the_spread_over_independent_draws(n_a, n_b, subset_size):
    # Simulation: KID of many independent draws of the same sizes from the same two Gaussians; the
    # 2.5-97.5 percentile spread is what a 95% interval should span.  The jackknife is somewhat
    # conservative (Efron & Stein 1981), so a little wider is expected, never much narrower.
    rng = np.random.default_rng(n_a + n_b)
    sims = [kid(*_kid_draw(rng, n_a, n_b), subsets=10, subset_size=subset_size, rng=rng).value for _ in range(200)]
    spread = np.subtract(*np.percentile(sims, [97.5, 2.5]))
    widths = []
    for _ in range(8):
        result = kid(*_kid_draw(rng, n_a, n_b), subsets=10, subset_size=subset_size, rng=rng)
        assert result.lower < result.value < result.upper
        widths.append(result.upper - result.lower)
    assert 0.8 < np.mean(widths) / spread < 1.5, (np.mean(widths), spread)


def _fid_draw(rng, n_a, n_b, d, scales, shift):
    return rng.standard_normal((n_a, d)), rng.standard_normal((n_b, d)) * scales + shift


@pytest.mark.parametrize("n_a,n_b,d", [(300, 300, 64), (80, 300, 128), (60, 60, 32)])
def test_the_fid_interval_is_as_wide_as_the_spread_over_independent_draws_and_holds_the_estimate(n_a, n_b, d):
    # Gaussian features with known parameters: A ~ N(0, I), B ~ N(mu, diag(s²)).  The FID of many
    # independent draws of the same n spreads over some range; the interval from one draw should be
    # about that wide and contain its own estimate (the old bootstrap with replacement gave
    # intervals lying entirely above the estimate).  (80, 300, 128) takes the n < d path.
    rng = np.random.default_rng(d)
    scales, shift = np.sqrt(rng.uniform(0.5, 2.0, d)), rng.normal(0, 0.15, d)
    sims = [fid_from_features(*_fid_draw(rng, n_a, n_b, d, scales, shift), rng=rng, rounds=0).value
            for _ in range(200)]
    spread = np.subtract(*np.percentile(sims, [97.5, 2.5]))
    widths = []
    for _ in range(8):
        result = fid_from_features(*_fid_draw(rng, n_a, n_b, d, scales, shift), rng=rng, rounds=50)
        assert result.lower < result.value < result.upper
        widths.append(result.upper - result.lower)
    assert 0.8 < np.mean(widths) / spread < 1.5, (np.mean(widths), spread)
    assert "jackknife" in result.config["interval"]


def test_the_fid_jackknife_downdate_equals_recomputing_each_replicate():
    # the fast path (covariance minus the left-out group's scatter) against np.cov of each replicate
    import metrics.image

    rng = np.random.default_rng(21)
    a, b = rng.standard_normal((120, 10)) + 3.0, rng.standard_normal((90, 10)) * 1.4
    se = metrics.image._fid_jackknife_se(a, b, 6, np.random.default_rng(5))
    order = np.random.default_rng(5)
    total = 0.0
    for this, other, first in ((a, b, True), (b, a, False)):
        parts = np.array_split(order.permutation(len(this)), 6)
        reps = []
        for part in parts:
            keep = np.delete(this, part, axis=0)
            pair = (keep, other) if first else (other, keep)
            reps.append(_sqrtm_frechet(pair[0].mean(0), np.cov(pair[0], rowvar=False),
                                       pair[1].mean(0), np.cov(pair[1], rowvar=False)))
        reps = np.array(reps)
        total += 5 / 6 * ((reps - reps.mean()) ** 2).sum()
    assert se == pytest.approx(np.sqrt(total), rel=1e-6)


def test_inception_score_of_uniform_predictions_is_one():
    result = inception_score(np.zeros((100, 10)), splits=10)
    assert result.value == pytest.approx(1.0)


def test_inception_score_of_confident_balanced_predictions_is_the_class_count():
    # Each split holds every class equally often, so p(y) is uniform and KL = log K.
    k = 7
    logits = np.eye(k)[np.arange(140) % k] * 200.0
    result = inception_score(logits, splits=10, rng=np.random.default_rng(0), rounds=20)
    assert result.value == pytest.approx(k, rel=1e-9)
    assert result.n == 140


def _synthetic_images(seed, n, size=48):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def _smooth_images(n, size=48):
    yy, xx = np.mgrid[0:size, 0:size] / size
    return [
        (np.stack([xx * 255, yy * 255, np.full_like(xx, 40.0 * i)], axis=2)).astype(np.uint8)
        for i in range(n)
    ]


def test_inception_features_are_2048_d_and_deterministic():
    images = _synthetic_images(5, 3)
    first = inception_features(images, batch_size=2)
    second = inception_features(images, batch_size=3)
    assert first.shape == (3, 2048)
    np.testing.assert_allclose(first, second, rtol=1e-5, atol=1e-6)


def test_fid_is_zero_for_identical_sets_and_positive_for_different_ones():
    noise, smooth = _synthetic_images(6, 5), _smooth_images(5)
    same = fid(noise, noise, rng=np.random.default_rng(0), rounds=0)
    different = fid(noise, smooth, rng=np.random.default_rng(0), rounds=0)  # bootstrap: below
    assert abs(same.value) < 1e-6 * different.value
    assert different.value > 1.0
    assert different.config["warning"] == FID_SMALL_N_WARNING
    assert different.config["weights"].endswith("default_1.pt")
    assert len(different.config["weights_sha256"]) == 64
    assert different.config["resize"].startswith("299x299")


def test_fid_from_large_feature_sets_carries_no_small_n_warning():
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((2100, 8)), rng.standard_normal((2100, 8))
    result = fid_from_features(a, b, rng=np.random.default_rng(0), rounds=5)
    assert "warning" not in result.config
    assert result.n == 2100
    assert np.isfinite(result.lower) and result.lower <= result.upper


def test_clip_score_is_a_hundred_times_the_clipped_cosine():
    rng = np.random.default_rng(8)
    img, txt = rng.standard_normal((6, 5)), rng.standard_normal((6, 5))
    result = clip_score(img, txt, rng=np.random.default_rng(0))
    cos = np.sum(img * txt, axis=1) / (np.linalg.norm(img, axis=1) * np.linalg.norm(txt, axis=1))
    np.testing.assert_allclose(result.per_item, 100 * np.maximum(cos, 0), rtol=1e-12)
    assert result.value == pytest.approx(np.mean(100 * np.maximum(cos, 0)))


TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture
def tiny_clip_weights(tmp_path):
    import open_clip
    import torch

    (tmp_path / "evalsite-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp_path / "evalsite-tiny-clip.json")
    torch.manual_seed(0)
    model = open_clip.create_model("evalsite-tiny-clip", pretrained=None)
    path = tmp_path / "tiny-clip.pt"
    torch.save(model.state_dict(), path)
    return model, path


def test_clip_embeddings_load_a_local_file_and_match_the_model(tiny_clip_weights):
    import open_clip
    import torch

    model, path = tiny_clip_weights
    images = _synthetic_images(9, 3, size=40)
    texts = ["a red square", "noise", "a photo of a cat"]
    emb = clip_embeddings("evalsite-tiny-clip", path, images, texts, batch_size=2)
    assert emb.images.shape == (3, 16) and emb.texts.shape == (3, 16)
    assert emb.config["weights"] == str(path)
    assert emb.config["tokenizer"].startswith("SimpleTokenizer")

    # The same numbers straight from the saved model.
    _, _, preprocess = open_clip.create_model_and_transforms("evalsite-tiny-clip", pretrained=None)
    from PIL import Image

    with torch.no_grad():
        direct_txt = model.eval().encode_text(open_clip.get_tokenizer("evalsite-tiny-clip")(texts)).numpy()
        direct_img = model.encode_image(torch.stack([preprocess(Image.fromarray(i)) for i in images])).numpy()
    cos = np.sum(direct_img * direct_txt, axis=1) / (
        np.linalg.norm(direct_img, axis=1) * np.linalg.norm(direct_txt, axis=1)
    )
    result = clip_score(emb.images, emb.texts, rng=np.random.default_rng(0), config=emb.config)
    np.testing.assert_allclose(result.per_item, 100 * np.maximum(cos, 0), rtol=1e-4, atol=1e-4)
    assert result.config["model"] == "evalsite-tiny-clip"


def test_the_vit_b_32_tokenizer_is_the_bundled_bpe_file():
    import open_clip

    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    assert type(tokenizer).__name__ == "SimpleTokenizer"


def test_clip_embeddings_refuse_hub_models_and_missing_files(tmp_path):
    with pytest.raises(ValueError):
        clip_embeddings("hf-hub:laion/CLIP-ViT-B-32", tmp_path / "x.pt", [], [])
    with pytest.raises(FileNotFoundError):
        clip_embeddings("ViT-B-32", tmp_path / "missing.pt", [], [])
