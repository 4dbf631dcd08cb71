"""Zero-shot accuracy and cross-modal recall@K on hand-worked and synthetic embeddings."""
from __future__ import annotations

import json

import numpy as np
import pytest

from metrics.multimodal import RECALL_DEFINITION, classifier_weights, recall_at_k, zero_shot_accuracy


def test_recall_at_k_matches_torchmetrics_hit_rate_example():
    # torchmetrics' retrieval_hit_rate docstring (v1.0.0): preds [0.2, 0.3, 0.5],
    # target [True, False, True], top_k=2 -> tensor(1.)
    # https://lightning.ai/docs/torchmetrics/v1.0.0/retrieval/hit_rate.html
    sim = np.array([[0.2, 0.3, 0.5]])
    result = recall_at_k(sim, np.array([[True, False, True]]), 2, rng=np.random.default_rng(0))
    assert result["image_to_text"].value == 1.0


def test_recall_at_k_hand_worked_in_both_directions():
    # 3 images x 4 texts; image 0's captions are texts 0 and 1, image 1's text 2, image 2's text 3.
    sim = np.array(
        [
            [0.1, 0.8, 0.9, 0.0],  # ranks: t2, t1, t0, t3 -> positive t1 at rank 2
            [0.7, 0.2, 0.3, 0.1],  # ranks: t0, t2, ... -> positive t2 at rank 2
            [0.2, 0.1, 0.3, 0.6],  # ranks: t3 first -> hit at 1
        ]
    )
    positives = [[0, 1], [2], [3]]
    rng = np.random.default_rng(0)
    r1 = recall_at_k(sim, positives, 1, rng=rng)
    r2 = recall_at_k(sim, positives, 2, rng=rng)
    assert r1["image_to_text"].per_item == (0.0, 0.0, 1.0)
    assert r2["image_to_text"].value == 1.0
    # Texts as queries (columns): t0 -> images by 0.7, 0.2, 0.1: i1 first, its image i0 at rank 3.
    # t1 -> i0 (0.8) first: hit. t2 -> i0 (0.9) first, i1 second. t3 -> i2 (0.6) first: hit.
    assert r1["text_to_image"].per_item == (0.0, 1.0, 0.0, 1.0)
    assert r2["text_to_image"].per_item == (0.0, 1.0, 1.0, 1.0)
    assert r2["text_to_image"].value == pytest.approx(0.75)
    assert r1["image_to_text"].config["definition"] == RECALL_DEFINITION
    assert "any positive is within the top K" in RECALL_DEFINITION


def test_recall_at_k_leaves_out_queries_without_positives():
    sim = np.array([[0.9, 0.1], [0.5, 0.4]])
    result = recall_at_k(sim, np.array([[True, False], [False, False]]), 1, rng=np.random.default_rng(0))
    assert result["image_to_text"].n == 1
    assert result["image_to_text"].config["queries_without_positives"] == 1
    assert result["text_to_image"].n == 1  # text 1 has no positive image


def test_recall_at_k_equal_to_the_candidate_count_is_always_a_hit():
    rng = np.random.default_rng(1)
    sim = rng.standard_normal((10, 10))
    result = recall_at_k(sim, np.eye(10, dtype=bool), 10, rng=rng)
    assert result["image_to_text"].value == 1.0 and result["text_to_image"].value == 1.0


def test_zero_shot_accuracy_on_synthetic_embeddings():
    rng = np.random.default_rng(2)
    classes = rng.standard_normal((5, 32))
    labels = np.arange(200) % 5
    # Images near their class embedding, 20 of them deliberately pointed at the next class.
    images = classes[labels] + 0.1 * rng.standard_normal((200, 32))
    images[:20] = classes[(labels[:20] + 1) % 5]
    result = zero_shot_accuracy(images, classes, labels, rng=np.random.default_rng(0))
    assert result.value == pytest.approx(180 / 200)
    assert result.lower < 0.9 < result.upper
    assert result.n == 200


def test_zero_shot_accuracy_rejects_labels_outside_the_classes():
    with pytest.raises(ValueError):
        zero_shot_accuracy(np.eye(3), np.eye(3), [0, 1, 3], rng=np.random.default_rng(0))


def test_classifier_weights_are_the_normalised_mean_of_normalised_prompt_embeddings(tmp_path):
    import open_clip
    import torch

    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (tmp_path / "evalsite-tiny-clip-zs.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "evalsite-tiny-clip-zs.json")
    torch.manual_seed(0)
    model = open_clip.create_model("evalsite-tiny-clip-zs", pretrained=None).eval()
    tokenizer = open_clip.get_tokenizer("evalsite-tiny-clip-zs")
    templates = ["a photo of a {}.", "a drawing of a {}."]
    weights = classifier_weights(model, tokenizer, ["cat", "dog"], templates)
    assert weights.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(weights, axis=1), 1.0, rtol=1e-12)
    with torch.no_grad():
        emb = model.encode_text(tokenizer(["a photo of a dog.", "a drawing of a dog."])).double().numpy()
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    mean = emb.mean(axis=0)
    np.testing.assert_allclose(weights[1], mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)
