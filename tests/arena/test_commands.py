"""`arena_ratings` and `import_battles`: battles from outside any study."""
import json
import math

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from annotation.models import Judgment
from annotation.uploads import BATTLE_WINNERS, parse_battles
from arena import ratings
from arena.management.commands.arena_ratings import count_parsed_battles
from arena.services import ratings_recompute
from tests.helpers.reference import logistic_elo

STRENGTH = {"claude-x": 1.0, "gpt-y": 0.6, "llama-z": 0.0, "mistral-w": -0.4}


def _battles(n=1500, seed=3):
    rng = np.random.default_rng(seed)
    models = sorted(STRENGTH)
    out = []
    for _ in range(n):
        a, b = rng.choice(len(models), size=2, replace=False)
        ma, mb = models[a], models[b]
        p = 1 / (1 + math.exp(STRENGTH[mb] - STRENGTH[ma]))
        u = rng.random()
        winner = "tie" if u < 0.1 else "tie (bothbad)" if u < 0.15 else ("model_a" if rng.random() < p else "model_b")
        out.append({"model_a": ma, "model_b": mb, "winner": winner, "judge": "arena_user_1", "anony": True})
    return out


def _sklearn_elo(battles):
    score = {"model_a": 1.0, "model_b": 0.0}
    return logistic_elo([(b["model_a"], b["model_b"], score.get(b["winner"], 0.5)) for b in battles])[0]


@pytest.fixture
def arena_json(tmp_path):
    battles = _battles()
    path = tmp_path / "clean_battle.json"
    path.write_text(json.dumps(battles, indent=1))
    return path, battles


def test_arena_ratings_prints_json_matching_an_independent_fit(arena_json, capsys):
    path, battles = arena_json
    call_command("arena_ratings", str(path), "--rounds", "200", "--seed", "1", "--json")
    rows = json.loads(capsys.readouterr().out)
    expected = _sklearn_elo(battles)
    assert [r["model"] for r in rows] == sorted(expected, key=expected.get, reverse=True)
    for r in rows:
        assert set(r) == {"model", "rating", "lower", "upper", "rank", "battles", "wins", "ties", "win_rate"}
        assert r["rating"] == pytest.approx(expected[r["model"]], abs=0.01)
        assert r["lower"] < r["rating"] < r["upper"]
        mine = [b for b in battles if r["model"] in (b["model_a"], b["model_b"])]
        assert r["battles"] == len(mine)
        assert r["ties"] == sum(b["winner"].startswith("tie") for b in mine)


def test_arena_ratings_is_reproducible_with_a_seed_and_can_anchor(arena_json, capsys):
    path, _ = arena_json
    call_command("arena_ratings", str(path), "--rounds", "100", "--seed", "5", "--json")
    first = capsys.readouterr().out
    call_command("arena_ratings", str(path), "--rounds", "100", "--seed", "5", "--json")
    assert capsys.readouterr().out == first
    call_command("arena_ratings", str(path), "--rounds", "50", "--anchor", "llama-z=1200", "--json")
    rows = {r["model"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["llama-z"]["rating"] == pytest.approx(1200)
    plain = {r["model"]: r for r in json.loads(first)}
    assert rows["claude-x"]["rating"] - rows["llama-z"]["rating"] == pytest.approx(
        plain["claude-x"]["rating"] - plain["llama-z"]["rating"], abs=1e-6)


def test_arena_ratings_reads_jsonl_and_csv_and_prints_a_table(arena_json, tmp_path, capsys):
    _, battles = arena_json
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text("\n".join(json.dumps(b) for b in battles))
    csv = tmp_path / "b.csv"
    csv.write_text("model_a,model_b,winner\n" + "\n".join(f"{b['model_a']},{b['model_b']},{b['winner']}" for b in battles))
    call_command("arena_ratings", str(jsonl), "--rounds", "50", "--json")
    a = json.loads(capsys.readouterr().out)
    call_command("arena_ratings", str(csv), "--rounds", "50", "--json")
    b = json.loads(capsys.readouterr().out)
    assert [r["rating"] for r in a] == pytest.approx([r["rating"] for r in b], abs=1e-9)
    call_command("arena_ratings", str(csv), "--rounds", "50")
    table = capsys.readouterr().out
    assert "claude-x" in table and "95% interval" in table and "1500 battles" in table


def test_arena_ratings_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"model_a": "a", "model_b": "b", "winner": "model_a"}\n'
                    '{"model_a": "a", "model_b": "b", "winner": "model_c"}\n')
    with pytest.raises(CommandError, match="line 2"):
        call_command("arena_ratings", str(path), "--json")
    with pytest.raises(CommandError, match="MODEL=RATING"):
        call_command("arena_ratings", str(path), "--anchor", "oops")
    with pytest.raises(CommandError, match="no such file"):
        call_command("arena_ratings", str(tmp_path / "missing.json"))


def test_arena_ratings_counts_the_parsed_codes_as_count_battles_counts_the_names(arena_json):
    path, battles = arena_json
    battles.append({"model_a": " gpt-y ", "model_b": "claude-x", "winner": "tie (bothbad)"})
    path.write_text(json.dumps(battles, indent=1))
    parsed = parse_battles(path.read_bytes(), path.name)
    mine = count_parsed_battles(parsed)
    theirs = ratings.count_battles(
        [b["model_a"].strip() for b in battles], [b["model_b"].strip() for b in battles],
        [b["winner"] for b in battles],
    )
    assert mine.models == theirs.models
    for matrix in ("wins", "ties", "both_bad"):
        assert np.array_equal(getattr(mine, matrix), getattr(theirs, matrix)), matrix
    assert mine.n_battles == 1501


def test_arena_ratings_prints_the_leaderboard_of_the_battles_counted_by_name(arena_json, capsys):
    path, battles = arena_json
    call_command("arena_ratings", str(path), "--rounds", "100", "--seed", "7", "--json")
    rows = json.loads(capsys.readouterr().out)
    counts = ratings.count_battles(
        [b["model_a"] for b in battles], [b["model_b"] for b in battles], [b["winner"] for b in battles]
    )
    board = ratings.leaderboard(counts, rounds=100, rng=np.random.default_rng(7))
    assert [(r["model"], r["rating"], r["lower"], r["upper"], r["battles"]) for r in rows] == [
        (r.model, r.rating, r.lower, r.upper, r.battles) for r in board
    ]


def test_arena_ratings_names_a_bad_battle_deep_in_a_big_file(tmp_path):
    rows = [
        {"model_a": f"m{i % 7}", "model_b": f"m{(i + 1) % 7}", "winner": BATTLE_WINNERS[i % 3]}
        for i in range(60_000)
    ]
    rows[49_998]["winner"] = "draw"  # "[" is line 1, so element 49,998 is on line 50,000
    path = tmp_path / "big.json"
    path.write_text("[\n" + ",\n".join(map(json.dumps, rows)) + "\n]\n")
    allowed = ", ".join(repr(w) for w in BATTLE_WINNERS)
    with pytest.raises(CommandError) as info:
        call_command("arena_ratings", str(path), "--json")
    assert str(info.value) == (
        f"{path}:\nline 50000 (index 49998), field 'winner': must be one of {allowed}, not 'draw'"
    )


def test_import_battles_loads_judgments_that_rate_like_the_file(arena_json, study_factory, capsys):
    path, battles = arena_json
    study = study_factory(candidates=())
    call_command("import_battles", str(study.pk), str(path))
    assert "Imported 1500 battles" in capsys.readouterr().out
    assert Judgment.objects.filter(study=study).count() == 1500
    assert set(Judgment.objects.filter(study=study).values_list("outcome", flat=True)) == {"a", "b", "tie", "both_bad"}
    payload = ratings_recompute(study_id=study.pk, rounds=50).payload
    expected = _sklearn_elo(battles)
    for row in payload["rows"]:
        assert row["rating"] == pytest.approx(expected[row["model"]], abs=0.01)
    with pytest.raises(CommandError, match="already in this study"):
        call_command("import_battles", str(study.pk), str(path))
    assert Judgment.objects.filter(study=study).count() == 1500
    with pytest.raises(CommandError, match="no study with id 999999"):
        call_command("import_battles", "999999", str(path))
