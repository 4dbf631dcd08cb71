"""`text_metrics`: a JSONL file of predictions and references, scored outside any study."""
import json

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from metrics import text
from tests.metrics.test_text import SACRE_ITEMS, SACRE_SYS


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "outputs.jsonl"
    rows = [{"id": i, "prediction": p, "reference": r} for i, (p, r) in enumerate(zip(SACRE_SYS, SACRE_ITEMS))]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_it_prints_json_with_the_published_sacrebleu_values(jsonl, capsys):
    call_command("text_metrics", str(jsonl), "--json", "--seed", "4")
    out = json.loads(capsys.readouterr().out)
    assert list(out) == list(text.LIBRARY_METRICS)  # bertscore only when asked
    assert round(out["bleu"]["value"], 2) == 48.53 and round(out["chrf"]["value"], 2) == 59.73
    for name, row in out.items():
        assert set(row) == {"value", "lower", "upper", "n", "config"}
        assert row["n"] == 3
        direct = text.compute(name, SACRE_SYS, SACRE_ITEMS, rng=np.random.default_rng(4))
        assert (row["value"], row["lower"], row["upper"]) == pytest.approx((direct.value, direct.lower, direct.upper))
    assert out["bleu"]["config"]["signature"].startswith("nrefs:2|")


def test_it_is_reproducible_with_a_seed_and_prints_a_table(jsonl, capsys):
    call_command("text_metrics", str(jsonl), "--metrics", "rougeL,token_f1", "--json", "--seed", "2")
    first = capsys.readouterr().out
    call_command("text_metrics", str(jsonl), "--metrics", "rougeL,token_f1", "--json", "--seed", "2")
    assert capsys.readouterr().out == first
    call_command("text_metrics", str(jsonl), "--metrics", "bleu,exact_match")
    table = capsys.readouterr().out
    assert "bleu" in table and "48.5308" in table and "exact_match" in table and "0.3333" in table


def test_it_computes_bertscore_when_asked(jsonl, capsys):
    call_command("text_metrics", str(jsonl), "--metrics", "bertscore", "--json")
    row = json.loads(capsys.readouterr().out)["bertscore"]
    assert row["config"]["layer"] == 6 and 0 < row["value"] <= 1


@pytest.mark.parametrize(
    "line3, message",
    [
        ('{"id": 3, "prediction": "x"}', "line 3: reference is missing"),
        ('{"id": 3, "prediction": "x", "reference": []}', "line 3: reference must be a string or a non-empty list"),
        ('{"id": 3, "prediction": 5, "reference": "x"}', "line 3: prediction must be a string"),
        ("not json", "line 3: not valid JSON"),
        ('{"id": 1, "prediction": "x", "reference": "y"}', "line 3: id '1' appears twice"),
    ],
)
def test_a_bad_line_stops_with_its_number(tmp_path, line3, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": 1, "prediction": "a", "reference": "a"}\n'
                    '{"id": 2, "prediction": "b", "reference": ["b", "c"]}\n' + line3 + "\n")
    with pytest.raises(CommandError, match=message):
        call_command("text_metrics", str(path))


def test_it_refuses_an_unknown_metric_and_a_missing_file(jsonl, tmp_path):
    with pytest.raises(CommandError, match="--metrics: unknown meteor"):
        call_command("text_metrics", str(jsonl), "--metrics", "bleu,meteor")
    with pytest.raises(CommandError, match="no such file"):
        call_command("text_metrics", str(tmp_path / "nope.jsonl"))


def test_a_line_that_is_not_utf8_stops_with_its_number(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"id": 1, "prediction": "a", "reference": "a"}\n'.encode()
                     + '{"id": 2, "prediction": "café", "reference": "b"}\n'.encode("latin-1")
                     + '{"id": 3, "prediction": "c", "reference": "c"}\n'.encode())
    with pytest.raises(CommandError, match=r"^line 2: not valid UTF-8 \(byte 29 of the line\)$"):
        call_command("text_metrics", str(path))


def test_a_byte_order_mark_and_utf8_text_are_read(tmp_path, capsys):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + '{"id": 1, "prediction": "café au lait", "reference": "café au lait"}\n'
                     '{"id": 2, "prediction": "thé", "reference": "thé vert"}\n'.encode())
    call_command("text_metrics", str(path), "--metrics", "exact_match", "--json")
    assert json.loads(capsys.readouterr().out)["exact_match"]["value"] == 0.5
