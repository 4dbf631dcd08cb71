"""`agreement`: a CSV reliability table scored from outside any study."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from metrics import agreement
from tests.metrics.test_agreement import FLEISS1971, K2011, dense_to_triples

ROOT = Path(__file__).resolve().parents[2]


def write_table(path, rows, units=None):
    units = units or [f"u{j}" for j in range(len(rows[0]))]
    lines = ["annotator," + ",".join(units)]
    for i, row in enumerate(rows):
        cells = ["" if isinstance(v, float) and math.isnan(v) else str(v) for v in row]
        lines.append(f"obs{i}," + ",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def k2011(tmp_path):
    return write_table(tmp_path / "k2011.csv", K2011)


@pytest.mark.parametrize("level, published", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849),
                                              ("ratio", 0.797)])
def test_it_prints_krippendorffs_published_alpha_as_json(k2011, capsys, level, published):
    call_command("agreement", str(k2011), "--level", level, "--json", "--seed", "3")
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["alpha", "lower", "upper", "level", "units", "annotators", "pairable", "percent_agreement"]
    assert round(out["alpha"], 3) == published
    assert (out["level"], out["units"], out["annotators"], out["pairable"]) == (level, 11, 4, 40)
    direct = agreement.alpha_interval(dense_to_triples(K2011), level, np.random.default_rng(3))
    assert (out["lower"], out["upper"]) == pytest.approx((direct.lower, direct.upper))
    assert out["percent_agreement"] == pytest.approx(direct.percent_agreement)


def test_the_same_seed_prints_the_same_interval(k2011, capsys):
    call_command("agreement", str(k2011), "--level", "ordinal", "--json", "--seed", "8")
    first = capsys.readouterr().out
    call_command("agreement", str(k2011), "--level", "ordinal", "--json", "--seed", "8")
    assert capsys.readouterr().out == first


def test_the_report_shows_alpha_pairwise_kappas_and_fleiss(tmp_path, capsys):
    # Fleiss (1971): 6 raters rate every one of 30 units, so Fleiss' kappa is defined
    path = write_table(tmp_path / "fleiss.csv", FLEISS1971.T.tolist())
    call_command("agreement", str(path), "--level", "nominal")
    out = capsys.readouterr().out
    assert "Krippendorff's alpha (nominal): " in out and "95% interval [" in out
    assert "units: 30  annotators: 6  pairable values: 180" in out
    assert "Cohen's kappa per pair (unweighted):" in out and out.count("obs0  obs") == 5
    assert "Fleiss' kappa (nominal, on 30 of 30 units: those with 6 ratings): 0.430" in out


def test_the_report_weights_kappa_above_the_nominal_level(k2011, capsys):
    call_command("agreement", str(k2011), "--level", "interval")
    out = capsys.readouterr().out
    assert "Cohen's kappa per pair (quadratic weights):" in out
    assert "Krippendorff's alpha (interval): 0.849" in out
    # units hold 2 to 4 values: Fleiss' kappa on the 8 units with 4 (the modal number), said so
    assert "Fleiss' kappa (nominal, on 8 of 11 units: those with 4 ratings): " in out


@pytest.mark.parametrize(
    "text, level, message",
    [
        ("annotator,a,b\nx,1,2\ny,1\n", "ordinal", "line 3, column 3: 2 cells where the header has 3"),
        ("annotator,a,b\nx,1,2\ny,1,2,3\n", "ordinal", "line 3, column 4: 4 cells where the header has 3"),
        ("annotator,a,b\nx,1,2\n,1,2\n", "ordinal", "line 3, column 1: empty annotator name"),
        ("annotator,a,b\nx,1,2\nx,1,2\n", "ordinal", "line 3, column 1: annotator 'x' appears twice"),
        ("annotator,a,a\nx,1,2\n", "ordinal", "line 1, column 3: unit 'a' appears twice"),
        ("annotator,a,\nx,1,2\n", "ordinal", "line 1, column 3: empty unit name"),
        ("annotator,a,b\nx,1,good\n", "ordinal", "line 2, column 3: 'good' is not a number (ordinal level)"),
        ("annotator,a,b\nx,1,nan\n", "interval", "line 2, column 3: 'nan' is not a finite number"),
        ("annotator,a,b\nx,1,-2\n", "ratio", "line 2, column 3: '-2' is negative (ratio level)"),
        ("coder,a,b\nx,1,2\n", "nominal", "line 1, column 1: the header must start with 'annotator'"),
        ("", "nominal", "line 1, column 1: the header must start with 'annotator'"),
    ],
)
def test_a_malformed_table_stops_with_its_line_and_column(tmp_path, text, level, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call_command("agreement", str(path), "--level", level)


def test_an_unknown_level_or_a_missing_file_stops(tmp_path, k2011):
    with pytest.raises(CommandError, match="invalid choice: 'cardinal'"):
        call_command("agreement", str(k2011), "--level", "cardinal")
    with pytest.raises(CommandError, match="cannot read the file"):
        call_command("agreement", str(tmp_path / "nowhere.csv"), "--level", "nominal")


def test_it_runs_from_the_shell_without_torch_or_crowdkit(k2011):
    # manage.py in a fresh interpreter; a wrapper lists the heavy modules loaded at exit
    code = (
        "import atexit, runpy, sys; "
        "atexit.register(lambda: print('HEAVY', [m for m in ('torch', 'transformers', 'open_clip', 'crowdkit') "
        "if m in sys.modules])); "
        f"sys.argv = ['manage.py', 'agreement', {str(k2011)!r}, '--level', 'ordinal', '--json']; "
        "runpy.run_path('manage.py', run_name='__main__')"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "evalsite.settings", "DEBUG": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
    summary, heavy = result.stdout.strip().splitlines()
    assert round(json.loads(summary)["alpha"], 3) == 0.815
    assert heavy == "HEAVY []"


@pytest.mark.parametrize("prefix", [b"", b"\xef\xbb\xbf"])
def test_a_byte_that_is_not_utf8_is_reported_on_its_own_line(tmp_path, prefix):
    # a large first line, so a chunked decoder would fail before reading line 2's number
    header = b"annotator," + b",".join(b"u%d" % i for i in range(3000)) + b"\n"
    row = b"x," + b",".join(b"1" for _ in range(2999)) + b",\xff\n"
    path = tmp_path / "latin.csv"
    path.write_bytes(prefix + header + b"y," + b",".join(b"1" for _ in range(3000)) + b"\n" + row)
    with pytest.raises(CommandError, match=r"line 3, column 3001: not UTF-8 text \(byte 0xff\)"):
        call_command("agreement", str(path), "--level", "nominal")
    path.write_bytes(prefix + b"annotator,a,b\nx,\xe9,2\n")
    with pytest.raises(CommandError, match=r"line 2, column 2: not UTF-8 text \(byte 0xe9\)"):
        call_command("agreement", str(path), "--level", "nominal")
