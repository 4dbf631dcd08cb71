"""Krippendorff's alpha, pairwise Cohen's kappa and Fleiss' kappa for a reliability table in a CSV file."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
from django.core.management.base import BaseCommand, CommandError

from metrics import agreement


def read_table(path: Path, level: str) -> list[tuple[str, str, object]]:
    """(annotator, unit, value) triples from a CSV reliability table.

    Header: ``annotator`` then one cell per unit; then one row per annotator, its name
    first; an empty cell is a missing value. Values are numbers above the nominal level
    (ratio: not negative) and text at the nominal level. Any fault raises ``CommandError``
    with its 1-based line and column.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CommandError(f"{path}: cannot read the file ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        # decoded whole, so the fault's line and column come from its byte offset, not a read chunk
        start = 3 if raw.startswith(b"\xef\xbb\xbf") else 0  # the codec counts from after the BOM
        before = raw[start:start + exc.start]
        line_start = max(before.rfind(b"\n"), before.rfind(b"\r")) + 1
        column = before[line_start:].count(b",") + 1  # the cell, counted as the other messages count them
        line = before.count(b"\n") + (before.count(b"\r") - before.count(b"\r\n")) + 1
        raise CommandError(f"line {line}, column {column}: not UTF-8 text (byte 0x{raw[start + exc.start]:02x})") from None
    triples: list[tuple[str, str, object]] = []
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None or not header or header[0].strip().lower() != "annotator":
            raise CommandError("line 1, column 1: the header must start with 'annotator'")
        units = [cell.strip() for cell in header[1:]]
        if not units:
            raise CommandError("line 1, column 2: the header names no units")
        seen_units: set[str] = set()
        for column, unit in enumerate(units, start=2):
            if not unit:
                raise CommandError(f"line 1, column {column}: empty unit name")
            if unit in seen_units:
                raise CommandError(f"line 1, column {column}: unit {unit!r} appears twice")
            seen_units.add(unit)
        seen_annotators: set[str] = set()
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                column = min(len(row), len(header)) + 1
                raise CommandError(
                    f"line {line}, column {column}: {len(row)} cells where the header has {len(header)}"
                )
            annotator = row[0].strip()
            if not annotator:
                raise CommandError(f"line {line}, column 1: empty annotator name")
            if annotator in seen_annotators:
                raise CommandError(f"line {line}, column 1: annotator {annotator!r} appears twice")
            seen_annotators.add(annotator)
            for column, (unit, cell) in enumerate(zip(units, row[1:]), start=2):
                cell = cell.strip()
                if cell:
                    triples.append((annotator, unit, parse_value(cell, level, line, column)))
    except csv.Error as exc:
        raise CommandError(f"line {reader.line_num}, column 1: {exc}") from None
    if not triples:
        raise CommandError(f"{path}: no values")
    return triples


def parse_value(cell: str, level: str, line: int, column: int):
    if level == "nominal":
        return cell
    try:
        value = float(cell)
    except ValueError:
        raise CommandError(f"line {line}, column {column}: {cell!r} is not a number ({level} level)") from None
    if not math.isfinite(value):
        raise CommandError(f"line {line}, column {column}: {cell!r} is not a finite number")
    if level == "ratio" and value < 0:
        raise CommandError(f"line {line}, column {column}: {cell!r} is negative (ratio level)")
    return int(value) if value.is_integer() else value


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


def _fmt(value: float) -> str:
    return "undefined" if math.isnan(value) else f"{value:.3f}"


class Command(BaseCommand):
    help = (
        "Krippendorff's alpha with a Hayes-Krippendorff bootstrap interval, pairwise Cohen's kappa and "
        "Fleiss' kappa for a CSV reliability table: a header 'annotator,<unit>,<unit>,...', then one row per "
        "annotator; an empty cell is a missing value."
    )

    def add_arguments(self, parser):
        parser.add_argument("path")
        parser.add_argument("--level", required=True, choices=agreement.LEVELS)
        parser.add_argument("--json", action="store_true", help="print the alpha summary as JSON")
        parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
        parser.add_argument("--rounds", type=int, default=1000, help="bootstrap rounds (default 1000)")

    def handle(self, *args, **options):
        level = options["level"]
        if options["rounds"] < 0:
            raise CommandError("--rounds must not be negative")
        triples = read_table(Path(options["path"]), level)
        result = agreement.alpha_interval(triples, level, np.random.default_rng(options["seed"]),
                                          rounds=options["rounds"])
        if options["json"]:
            self.stdout.write(json.dumps({
                "alpha": _number(result.alpha), "lower": _number(result.lower), "upper": _number(result.upper),
                "level": result.level, "units": result.units, "annotators": result.annotators,
                "pairable": result.pairable, "percent_agreement": _number(result.percent_agreement),
            }))
            return
        self.stdout.write(self.report(triples, result, level))

    def report(self, triples, result: agreement.AlphaResult, level: str) -> str:
        lines = [
            f"Krippendorff's alpha ({level}): {_fmt(result.alpha)}"
            + (f"  95% interval [{_fmt(result.lower)}, {_fmt(result.upper)}] ({result.rounds} bootstrap rounds)"
               if not math.isnan(result.lower) else ""),
            f"units: {result.units}  annotators: {result.annotators}  pairable values: {result.pairable}",
            f"percent agreement: {_fmt(result.percent_agreement)}",
        ]
        weights = None if level == "nominal" else "quadratic"
        pairs = agreement.pairwise_kappas(triples, weights=weights)
        lines.append("")
        lines.append(f"Cohen's kappa per pair ({'unweighted' if weights is None else 'quadratic weights'}):")
        if pairs:
            width = max(len(str(name)) for p in pairs for name in (p.a, p.b))
            lines.append(f"  {'a':<{width}}  {'b':<{width}}  {'shared':>6}  {'kappa':>9}  {'agree':>6}")
            for p in pairs:
                lines.append(f"  {p.a:<{width}}  {p.b:<{width}}  {p.n:>6}  {_fmt(p.kappa):>9}  {p.percent:>6.3f}")
        else:
            lines.append("  no pair of annotators shares two units")
        fleiss = agreement.fleiss_kappa(triples)
        if fleiss is not None:
            lines.append("")
            lines.append(f"Fleiss' kappa (nominal, on {fleiss.units} of {fleiss.total_units} units: those with "
                         f"{fleiss.raters_per_unit} ratings): {_fmt(fleiss.kappa)}  "
                         f"mean pairwise agreement {fleiss.percent:.3f}")
        return "\n".join(lines)
