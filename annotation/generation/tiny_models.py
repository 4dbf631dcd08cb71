"""Tiny, randomly initialised Hugging Face models built offline, for demos and tests.

``build_tiny_model`` trains a BPE tokenizer on a small corpus with the ``tokenizers``
library, wraps it as a ``transformers`` fast tokenizer, creates a GPT-2 (causal) or T5
(seq2seq) model of a few hundred kilobytes from a config with seeded random weights, and
saves both with ``save_pretrained``. ``AutoTokenizer.from_pretrained(path)`` and
``AutoModelFor...LM.from_pretrained(path)`` then load it with ``HF_HUB_OFFLINE=1``.
The text such a model writes is gibberish made of corpus fragments; the point is that
every part of the pipeline (tokenizer, batching, padding, decoding, timing) is real.

``build_tiny_diffusion_pipeline`` does the same for text-to-image: a Stable Diffusion
pipeline of about 1.4 MB assembled from configs, whose images are noise.

torch, transformers, tokenizers and diffusers are imported inside the functions, so importing
this module is cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import string
import tempfile
from pathlib import Path
from typing import Any, Literal

MARKER = "evalsite_tiny_model.json"
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0, 1, 2, 3 in this order
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)

DEFAULT_CORPUS = (
    "The quick brown fox jumps over the lazy dog.",
    "A model writes an answer; a person reads two answers and picks the better one.",
    "Rain fell on the quiet town, and the river rose by morning.",
    "Seven small robots counted the stars and wrote the numbers down.",
    "Please summarise the following paragraph in one sentence.",
    "Why is the sky blue? Because air scatters short wavelengths more than long ones.",
    "Translate to French: the cat sleeps on the warm mat.",
    "Write a short poem about autumn leaves and a cold wind.",
)


def build_tiny_model(
    path: str | os.PathLike[str],
    *,
    kind: Literal["causal", "seq2seq"] = "causal",
    seed: int = 0,
    corpus: list[str] | tuple[str, ...] = DEFAULT_CORPUS,
    vocab_size: int = 512,
    size: int = 64,
    num_layers: int = 2,
    max_positions: int = 256,
    chat_template: str | None = None,
) -> Path:
    """Build a tiny model and tokenizer at ``path`` unless an identical one is there.

    Parameters
    ----------
    path:
        Directory to create. It must not exist, be empty, or hold a model this function
        built; anything else raises ``FileExistsError`` rather than being overwritten.
    kind:
        ``"causal"`` (GPT-2 architecture) or ``"seq2seq"`` (T5 architecture).
    seed:
        Seeds the weight initialisation; the same arguments give the same weights.
        The global torch random state is left as it was.
    corpus:
        Texts the BPE tokenizer is trained on, in any order (printable ASCII characters are
        always in the vocabulary, so any English prompt tokenizes without ``<unk>``).
    vocab_size:
        Upper bound on the tokenizer's vocabulary (the corpus may yield fewer merges).
    size:
        Hidden size of the model (``n_embd`` / ``d_model``); 2 attention heads.
    num_layers:
        Transformer layers (per stack for T5).
    max_positions:
        Context length of the causal model (``n_positions``).
    chat_template:
        Optional Jinja chat template stored with the tokenizer.

    Returns
    -------
    pathlib.Path
        ``path``. If the directory already holds a complete model built with the same
        arguments, it is returned untouched (no file is rewritten). The build happens in
        a temporary sibling directory that is renamed into place, so a directory with the
        marker file is always complete, even if two processes build at once.
    """
    if kind not in ("causal", "seq2seq"):
        raise ValueError(f"kind: must be 'causal' or 'seq2seq', got {kind!r}")
    if not corpus or not all(isinstance(text, str) for text in corpus):
        raise ValueError("corpus: must be a non-empty list of strings")
    if size < 4 or size % 2:
        raise ValueError(f"size: must be an even number >= 4, got {size}")

    # Sorted: the model must not change because a database returned prompts in another order.
    corpus = sorted(corpus)
    target = Path(path)
    params = {
        "kind": kind,
        "seed": seed,
        "corpus_sha256": hashlib.sha256("\n".join(corpus).encode()).hexdigest(),
        "vocab_size": vocab_size,
        "size": size,
        "num_layers": num_layers,
        "max_positions": max_positions,
        "chat_template": chat_template,
    }
    existing = _read_marker(target)
    if existing == params:
        return target
    if existing is None and target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target} exists and was not built by build_tiny_model; not overwriting")

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    try:
        _build(staging, params, corpus)
        (staging / MARKER).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
        _move_into_place(staging, target, params)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def is_tiny_model(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a complete model built by ``build_tiny_model``."""
    return _read_marker(Path(path)) is not None


def _read_marker(target: Path) -> dict[str, Any] | None:
    try:
        return json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _move_into_place(staging: Path, target: Path, params: dict[str, Any]) -> None:
    if target.exists():
        if _read_marker(target) == params:  # another process finished first
            return
        # An empty directory, or an older tiny model built with other arguments.
        retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, retired / "model")
        shutil.rmtree(retired, ignore_errors=True)
    try:
        os.replace(staging, target)
    except OSError:
        if _read_marker(target) != params:
            raise


def _build(directory: Path, params: dict[str, Any], corpus: list[str]) -> None:
    import torch
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        GPT2Config,
        PreTrainedTokenizerFast,
        T5Config,
    )

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=params["vocab_size"],
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=sorted(set(string.printable.strip()) | {"\u2581"}),
        min_frequency=1,
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    for token, expected in zip(SPECIAL_TOKENS, range(4)):
        assert tokenizer.token_to_id(token) == expected, token

    causal = params["kind"] == "causal"
    # Causal models start from <s>, so an empty prompt still has a token to condition on;
    # T5 convention ends the encoder input with </s>.
    if causal:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", BOS_ID)]
        )
    else:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", EOS_ID)]
        )
    vocab = tokenizer.get_vocab_size()
    context = params["max_positions"] if causal else 512
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=context,
        padding_side="left" if causal else "right",
    )
    if params["chat_template"] is not None:
        wrapped.chat_template = params["chat_template"]
    wrapped.save_pretrained(directory)

    size, layers = params["size"], params["num_layers"]
    common = {"vocab_size": vocab, "pad_token_id": PAD_ID, "eos_token_id": EOS_ID}
    if causal:
        config = GPT2Config(
            n_positions=context, n_embd=size, n_layer=layers, n_head=2, bos_token_id=BOS_ID, **common
        )
        auto = AutoModelForCausalLM
    else:
        config = T5Config(
            d_model=size,
            d_kv=size // 2,
            d_ff=size * 2,
            num_layers=layers,
            num_decoder_layers=layers,
            num_heads=2,
            relative_attention_num_buckets=8,
            decoder_start_token_id=PAD_ID,
            **common,
        )
        auto = AutoModelForSeq2SeqLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params["seed"])
        model = auto.from_config(config)
    # A random model would often pick <pad>, <s> or <unk>, which decode to nothing; the
    # generation config (which generate() applies by default) keeps them out.
    model.generation_config.suppress_tokens = [PAD_ID, BOS_ID, UNK_ID]
    model.save_pretrained(directory)


# --- a tiny text-to-image pipeline ------------------------------------------------------

DIFFUSION_MARKER = "evalsite_tiny_pipeline.json"
# Words the hand-written CLIP vocabulary knows whole; any other word is spelled in bytes.
DIFFUSION_WORDS = (
    "a", "an", "the", "of", "on", "in", "with", "and", "for", "banner", "photo", "product", "shot",
    "red", "blue", "green", "sale", "summer", "winter", "shoe", "shoes", "coffee", "cup", "person",
    "people", "hand", "hands", "text", "logo", "city", "night", "sky", "sun", "sea", "dog", "cat",
)


def build_tiny_diffusion_pipeline(path: str | os.PathLike[str], *, seed: int = 0, size: int = 32) -> Path:
    """Build a tiny, randomly initialised Stable Diffusion pipeline at ``path``.

    A real ``diffusers.StableDiffusionPipeline`` assembled from configs: a two-level
    ``UNet2DConditionModel`` with cross-attention, a two-level ``AutoencoderKL`` (latents at
    half the image size), a two-layer ``CLIPTextModel`` and a ``CLIPTokenizer`` whose
    ``vocab.json``/``merges.txt`` are written here by hand (bytes, their end-of-word forms,
    a few whole words), a ``DDIMScheduler``, and no safety checker. Saved with
    ``save_pretrained``; ``DiffusionPipeline.from_pretrained(path)`` loads it offline. Its
    images are noise, but every step (tokenizer, text encoder, denoising loop with
    classifier-free guidance, VAE decoding) is the real code. Two steps at 32×32 take
    milliseconds on a CPU.

    Parameters
    ----------
    path:
        Directory to create; the same rules as :func:`build_tiny_model` (an identical
        pipeline already there is returned untouched; anything else is not overwritten).
    seed:
        Seeds the weights; the global torch random state is left as it was.
    size:
        The default image side in pixels (a multiple of 8); any multiple of 4 generates.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 8 or size % 8:
        raise ValueError(f"size: must be a multiple of 8 and at least 8, got {size!r}")
    target = Path(path)
    params = {"kind": "stable-diffusion", "seed": seed, "size": size, "words": list(DIFFUSION_WORDS)}
    marker = _read_json(target / DIFFUSION_MARKER)
    if marker == params:
        return target
    if marker is None and target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target} exists and was not built by build_tiny_diffusion_pipeline; not overwriting")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    try:
        _build_diffusion(staging, params)
        (staging / DIFFUSION_MARKER).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
        if target.exists():
            if _read_json(target / DIFFUSION_MARKER) == params:  # another process finished first
                return target
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, retired / "pipeline")
            shutil.rmtree(retired, ignore_errors=True)
        try:
            os.replace(staging, target)
        except OSError:
            if _read_json(target / DIFFUSION_MARKER) != params:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _read_json(file: Path) -> dict[str, Any] | None:
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError):
        return None


def _byte_symbols() -> list[str]:
    """The 256 printable characters byte-level BPE (GPT-2, CLIP) stands each byte for."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted, extra = [], 0
    for byte in range(256):
        if byte in kept:
            shifted.append(chr(byte))
        else:
            shifted.append(chr(256 + extra))
            extra += 1
    return shifted


def _clip_vocabulary(words: tuple[str, ...]) -> tuple[dict[str, int], list[str]]:
    """A byte-level BPE vocabulary in CLIP's format and the merges that build ``words``.

    Every byte (in CLIP's printable byte-to-unicode form) is a token, alone and with the
    end-of-word mark ``</w>``, so any text tokenizes; each word of ``words`` is merged left
    to right into one token.
    """
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    for word in words:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merged = parts[0] + parts[1]
            pair = f"{parts[0]} {parts[1]}"
            if pair not in merges:
                merges.append(pair)
            if merged not in tokens:
                tokens.append(merged)
            parts = [merged, *parts[2:]]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def _build_diffusion(directory: Path, params: dict[str, Any]) -> None:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab, merges = _clip_vocabulary(tuple(params["words"]))
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "vocab.json").write_text(json.dumps(vocab))
        (Path(scratch) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        tokenizer = CLIPTokenizer.from_pretrained(scratch, model_max_length=32)

    text_dim = 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params["seed"])
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(vocab), hidden_size=text_dim, intermediate_size=64, num_attention_heads=4,
            num_hidden_layers=2, max_position_embeddings=32, bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
        ))
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=8,
            sample_size=params["size"],
        )
        unet = UNet2DConditionModel(
            sample_size=params["size"] // 2, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=text_dim,
            attention_head_dim=4, norm_num_groups=8,
        )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.save_pretrained(directory)
