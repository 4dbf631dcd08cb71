"""Names that give a model away: the identity-leak guard's word list and matcher (plain Python).

An output that names its model or maker ("I am ChatGPT", "as an AI developed by OpenAI",
a candidate's own name) unblinds a pairwise comparison.  The evaluator sees every output
that matches, with each match highlighted, and keeps or excludes it.

Matches are whole words, case-insensitive, with an optional plural "s": "Llamas are
animals" does match "Llama" (a false alarm the evaluator keeps with one click is cheaper
than a leak), while "Geminid meteor" and "Googleplex" do not match "Gemini" or "Google".
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# Makers, model families and the phrases assistants use to name themselves.
NAMES = (
    "as an AI developed by", "as an AI language model", "as a large language model", "I am an AI assistant",
    "ChatGPT", "GPT-3", "GPT-3.5", "GPT-4", "GPT-4o", "GPT", "OpenAI",
    "Claude", "Anthropic",
    "Llama", "LLaMA", "Meta AI", "Meta",
    "Gemini", "Bard", "Gemma", "PaLM", "Google", "DeepMind",
    "Mistral", "Mixtral", "Mistral AI",
    "Qwen", "Tongyi", "Alibaba",
    "DeepSeek", "Yi", "01.AI", "Baichuan", "ChatGLM", "Zhipu", "Moonshot", "Kimi",
    "Phi", "Microsoft", "Copilot", "Bing",
    "Falcon", "Grok", "xAI", "Cohere", "Command R", "Pi", "Inflection", "Ernie", "Baidu",
    "Vicuna", "Alpaca", "Zephyr", "Hugging Face", "HuggingChat", "StableLM", "Stability AI",
    "Amazon", "Titan", "Nova", "IBM", "Granite", "Nvidia", "Nemotron",
)
# Too common as plain words to flag on their own; kept only inside longer phrases above.
_SKIP_ALONE = {"pi", "nova", "titan", "yi", "phi", "meta", "falcon", "amazon"}


@dataclass(frozen=True)
class Hit:
    start: int
    end: int
    name: str  # the list entry or candidate name that matched


def _words(name: str) -> str:
    """A name as a regex: its words in order, any run of spaces, dashes or underscores between them."""
    parts = [re.escape(p) for p in re.split(r"[\s_\-]+", name.strip()) if p]
    return r"[\s_\-]*".join(parts)


def matcher(extra_names: Iterable[str] = ()) -> re.Pattern:
    """One compiled pattern for the list plus ``extra_names`` (the study's candidate names and
    model names), whole words only, case-insensitive, longest names first."""
    names = {n for n in NAMES if n.lower() not in _SKIP_ALONE}
    names.update(n.strip() for n in extra_names if n and len(n.strip()) >= 3)
    alternatives = sorted({_words(n) for n in names if _words(n)}, key=len, reverse=True)
    # no word character may touch either end ("Geminid" stays apart); an optional "s" lets a plural through
    return re.compile(r"(?<![\w])(?:" + "|".join(alternatives) + r")s?(?![\w])", re.IGNORECASE)


def hits(text: str, pattern: re.Pattern) -> list[Hit]:
    return [Hit(m.start(), m.end(), m.group(0)) for m in pattern.finditer(text)]


def snippets(text: str, found: list[Hit], context: int = 60) -> list[tuple[str, str, str]]:
    """Each hit in context as (before, match, after), trimmed to ``context`` characters a side."""
    result = []
    for h in found:
        before = text[max(0, h.start - context):h.start]
        after = text[h.end:h.end + context]
        result.append((("…" if h.start > context else "") + before, text[h.start:h.end],
                       after + ("…" if h.end + context < len(text) else "")))
    return result


def spec_model_names(backend: str, spec: dict) -> list[str]:
    """The model names a candidate's spec gives (an endpoint's model, a local path's last part)."""
    names = []
    for key in ("model", "model_name", "model_id", "path"):
        value = spec.get(key) if isinstance(spec, dict) else None
        if isinstance(value, str) and value.strip():
            names.append(value.strip())
            tail = re.split(r"[/\\]", value.strip().rstrip("/\\"))[-1]
            if tail and tail != value.strip():
                names.append(tail)
    return names
