"""Text metrics for a JSONL file of predictions and references, outside any study."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from django.core.management.base import BaseCommand, CommandError

from metrics import text

# Metrics a JSONL file of prediction/reference pairs can be scored with here.
COMMAND_METRICS = (*text.LIBRARY_METRICS, "bertscore")


def read_items(path: Path) -> tuple[list[str], list[str | list[str]]]:
    """Predictions and references from JSONL lines ``{"id", "prediction", "reference"}``.

    Blank lines are skipped; any other bad line raises ``CommandError`` naming its number.
    """
    predictions: list[str] = []
    references: list[str | list[str]] = []
    seen: set[str] = set()
    # Bytes, decoded a line at a time: a line that is not UTF-8 is named by its number.
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CommandError(f"line {number}: not valid UTF-8 (byte {exc.start + 1} of the line)") from None
            if number == 1:
                line = line.removeprefix("\ufeff")  # a byte order mark some editors write
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise CommandError(f"line {number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise CommandError(f"line {number}: expected an object with id, prediction and reference")
            for key in ("id", "prediction", "reference"):
                if key not in row:
                    raise CommandError(f"line {number}: {key} is missing")
            item_id = str(row["id"])
            if item_id in seen:
                raise CommandError(f"line {number}: id {item_id!r} appears twice")
            seen.add(item_id)
            if not isinstance(row["prediction"], str):
                raise CommandError(f"line {number}: prediction must be a string")
            reference = row["reference"]
            if not (
                isinstance(reference, str)
                or (isinstance(reference, list) and reference and all(isinstance(r, str) for r in reference))
            ):
                raise CommandError(f"line {number}: reference must be a string or a non-empty list of strings")
            predictions.append(row["prediction"])
            references.append(reference)
    if not predictions:
        raise CommandError(f"{path}: no items")
    return predictions, references


def parse_metrics(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in COMMAND_METRICS]
    if unknown or not names:
        raise CommandError(
            f"--metrics: unknown {', '.join(unknown) or '(none given)'}; choose from {','.join(COMMAND_METRICS)}"
        )
    return list(dict.fromkeys(names))


class Command(BaseCommand):
    help = (
        "Score a JSONL file of {id, prediction, reference} lines (reference: a string or a list of "
        "strings) with sacrebleu, rouge-score, SQuAD exact match / token F1 and, when asked, BERTScore; "
        "print each value with a 95% bootstrap interval over items."
    )

    def add_arguments(self, parser):
        parser.add_argument("path")
        parser.add_argument(
            "--metrics",
            default=",".join(text.LIBRARY_METRICS),
            help=f"comma-separated, from {','.join(COMMAND_METRICS)} "
            f"(default: all but bertscore, which loads a model and needs torch)",
        )
        parser.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
        parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
        parser.add_argument("--rounds", type=int, default=text.DEFAULT_ROUNDS, help="bootstrap rounds (default 1000)")
        parser.add_argument("--bertscore-model", help="local model folder for bertscore (default: shipped all-MiniLM-L6-v2)")
        parser.add_argument("--bertscore-layer", type=int, help="layer for bertscore (default: the model's last)")

    def handle(self, *args, path: str, metrics: str, json: bool, seed: int, rounds: int,
               bertscore_model: str | None, bertscore_layer: int | None, **options):
        file = Path(path)
        if not file.is_file():
            raise CommandError(f"{path}: no such file")
        if rounds < 1:
            raise CommandError("--rounds must be at least 1")
        names = parse_metrics(metrics)
        predictions, references = read_items(file)
        results = {}
        for name in names:
            extra: dict[str, Any] = {}
            if name == "bertscore":
                extra = {"model": bertscore_model, "num_layers": bertscore_layer}
            # A fresh generator per metric: adding a metric leaves the others' intervals unchanged.
            try:
                results[name] = text.compute(
                    name, predictions, references, rng=np.random.default_rng(seed), rounds=rounds, **extra
                )
            except (ValueError, ImportError) as exc:
                raise CommandError(f"{name}: {exc}") from None
        if json:
            out = {name: _finite(r.as_dict()) for name, r in results.items()}
            self.stdout.write(_dumps(out))
            return
        width = max(6, *(len(name) for name in results))
        self.stdout.write(f"{'metric':<{width}}  {'value':>9}  {'95% interval':>21}  {'n':>6}")
        for name, r in results.items():
            self.stdout.write(f"{name:<{width}}  {r.value:>9.4f}  {r.lower:>10.4f}–{r.upper:<10.4f}  {r.n:>6}")
        self.stdout.write(f"\n{len(predictions)} items, {rounds} bootstrap rounds (seed {seed}).")
        for name, r in results.items():
            detail = r.config.get("signature") or r.config.get("hash") or r.config.get("version", "")
            self.stdout.write(f"{name}: {r.config.get('library', '')} {detail}")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def _dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2)
