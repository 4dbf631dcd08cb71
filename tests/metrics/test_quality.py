"""metrics.quality against hand-computed examples (no database)."""
import subprocess
import sys

import pytest

from metrics import quality


def test_it_imports_without_django():
    code = "import sys, metrics.quality, annotation.identity, annotation.neardup; print('django' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_median_of_odd_even_and_empty():
    assert quality.median([5, 1, 3]) == 3
    assert quality.median([4, 1, 3, 2]) == 2.5
    assert quality.median([]) is None


def test_longest_run_and_top_share():
    answers = ["left", "left", "right", "left", "left", "left", "tie"]
    assert quality.longest_run(answers) == (3, "left")
    assert quality.top_share(answers) == ("left", 5 / 7)
    assert quality.longest_run([]) == (0, None)


def test_peer_majority_leaves_the_own_vote_out():
    # votes a,a,b with own=a: peers a,b tie -> no majority
    assert quality.peer_majority({"a": 2, "b": 1}, "a") is None
    # votes a,b,b with own=a: peers b,b -> b
    assert quality.peer_majority({"a": 1, "b": 2}, "a") == "b"
    # only two judgments: too few
    assert quality.peer_majority({"a": 1, "b": 1}, "a") is None
    # an excluded annotator's vote is not in the counts: two peers plus them make three
    assert quality.peer_majority({"b": 2}, "a", own_in_votes=False) == "b"
    with pytest.raises(ValueError):
        quality.peer_majority({"b": 3}, "a")


def test_peer_agreement_counts_units_with_a_majority():
    own = {1: "a", 2: "a", 3: "tie", 4: "b"}
    votes = {1: {"a": 3}, 2: {"a": 1, "b": 2}, 3: {"tie": 1, "a": 1}, 4: {"b": 2, "a": 2}}
    # unit 1: peers a,a -> agree; unit 2: peers b,b -> disagree; unit 3: two votes -> skipped;
    # unit 4: peers b,a,a -> a majority, own b -> disagree
    assert quality.peer_agreement(own, votes) == (1, 3)


def test_flags_need_the_minimum_count_and_say_why():
    t = quality.Thresholds(speeding_seconds=3, straightline_share=0.9, straightline_run=5, min_judgments=10)
    nine = quality.annotator_quality(["left"] * 9, [1.0] * 9, [0.5] * 9, 0, 0, t)
    assert nine.flags == ()
    ten = quality.annotator_quality(["left"] * 10, [2.0] * 10, [1.0] * 10, 0, 0, t, describe={"left": "left is better"}.get)
    assert ten.flags == ("Straight-lining: answered “left is better” in 100% of 10 judgments.",
                         "Speeding: half of the tasks took under 1.0 s of active time (the limit is 3 s).")
    mixed = ["left", "right"] * 3 + ["tie"] * 6
    row = quality.annotator_quality(mixed, [10.0] * 12, [None] * 12, 2, 4, t)
    assert row.flags == ("Straight-lining: answered “tie” 6 times in a row.",)
    assert row.median_active_seconds is None and row.agreement == 0.5 and row.median_seconds == 10.0
