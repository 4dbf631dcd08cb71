"""A leaderboard refresh counts only the judgments since the last one, and equals a full pass."""
from datetime import timedelta

from django.utils import timezone

from annotation import services
from annotation.models import Judgment
from arena import selectors
from arena.models import RatingSnapshot
from arena.services import ratings_recompute

PROMPTS = ("id,prompt,tags\n" + "".join(f"q{i},Question {i}?,{('a', 'b')[i % 2]}\n" for i in range(12))).encode()


def _vote(study, annotator, n: int, choice: str = "left") -> None:
    for _ in range(n):
        services.judgment_submit(assignment=services.assignment_next(study=study, annotator=annotator), choice=choice)


def _age(study, minutes: int = 10) -> None:
    """Make every judgment so far older than the settle window."""
    Judgment.objects.filter(study=study).update(submitted_at=timezone.now() - timedelta(minutes=minutes))


def _rows(snapshot):
    return [(r["model"], r["rating"], r["lower"], r["upper"], r["battles"]) for r in snapshot.payload["rows"]]


def test_an_incremental_refresh_equals_a_full_pass(study_factory, annotators):
    study = study_factory(prompts=PROMPTS, overlap=3)
    _vote(study, annotators[0], 10)
    _age(study)
    first = ratings_recompute(study_id=study.pk, rounds=100)
    assert first.n_judgments == 10 and first.settled_judgment_id == Judgment.objects.latest("id").id
    _vote(study, annotators[1], 8, choice="right")
    _vote(study, annotators[2], 5, choice="tie")
    incremental = ratings_recompute(study_id=study.pk, rounds=100)
    assert incremental.n_judgments == 23
    assert incremental.settled_judgment_id == first.settled_judgment_id  # the new ones are too young to settle
    incremental_rows = _rows(incremental)
    incremental_cells = selectors.Cells.from_bytes(bytes(incremental.cells)).rows()
    full = ratings_recompute(study_id=study.pk, rounds=100, force=True)
    assert _rows(full) == incremental_rows
    assert full.payload["observed"] == incremental.payload["observed"]
    # and the cells kept are exactly the settled judgments' counts
    settled, _ = selectors.judgment_cells(study.pk, upto_id=incremental.settled_judgment_id)
    assert sorted(map(tuple, settled.rows())) == sorted(map(tuple, incremental_cells))


def test_a_judgment_that_commits_after_a_later_one_is_still_counted(study_factory, annotators):
    study = study_factory(prompts=PROMPTS, overlap=3)
    _vote(study, annotators[0], 4)
    late = Judgment.objects.filter(study=study).latest("id")
    fields = {f.attname: getattr(late, f.attname) for f in Judgment._meta.concrete_fields}
    late.delete()  # as if its transaction were still open: an id given, no row visible
    _vote(study, annotators[1], 3)
    Judgment.objects.filter(study=study).exclude(id__gt=fields["id"]).update(
        submitted_at=timezone.now() - timedelta(minutes=10))
    seen = ratings_recompute(study_id=study.pk, rounds=50)
    assert seen.n_judgments == 6
    assert seen.settled_judgment_id < fields["id"] + 1  # settled stops before the young votes
    Judgment.objects.create(**fields)  # the open transaction commits, with its smaller id
    assert ratings_recompute(study_id=study.pk, rounds=50).n_judgments == 7


def test_the_settled_id_stops_below_the_oldest_young_judgment(study_factory, annotators):
    study = study_factory(prompts=PROMPTS)
    _vote(study, annotators[0], 6)
    ids = list(Judgment.objects.filter(study=study).order_by("id").values_list("id", flat=True))
    now = timezone.now()
    Judgment.objects.filter(id__in=ids[:2] + ids[3:5]).update(submitted_at=now - timedelta(minutes=5))
    cutoff = now - timedelta(minutes=1)
    assert selectors.settled_judgment_id(study.pk, "all", after_id=0, cutoff=cutoff) == ids[1]
    Judgment.objects.filter(id__in=ids).update(submitted_at=now - timedelta(minutes=5))
    assert selectors.settled_judgment_id(study.pk, "all", after_id=0, cutoff=cutoff) == ids[-1]
    assert selectors.settled_judgment_id(study.pk, "all", after_id=ids[-1], cutoff=cutoff) == ids[-1]


def test_a_slice_refresh_is_incremental_too(study_factory, annotators):
    study = study_factory(prompts=PROMPTS, overlap=2)
    _vote(study, annotators[0], 8)
    _age(study)
    ratings_recompute(study_id=study.pk, slice_key="tag:a", rounds=50)
    _vote(study, annotators[1], 8, choice="right")
    part = ratings_recompute(study_id=study.pk, slice_key="tag:a", rounds=50)
    full = ratings_recompute(study_id=study.pk, slice_key="tag:a", rounds=50, force=True)
    assert part.n_judgments == full.n_judgments == Judgment.objects.filter(
        study=study, unit__prompt__tag_rows__tag="a").count()
    assert _rows(part) == _rows(full)
    assert RatingSnapshot.objects.filter(study=study).count() == 1


def test_the_pure_modules_import_without_django_and_a_board_round_trips():
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, json; import arena.board, arena.outcomes, arena.ratings, arena.sampling; "
            "assert 'django' not in sys.modules, 'django imported'; "
            "b = arena.board.Board(rounds=5, seed=1, n_battles=2, rows=(arena.board.BoardRow('m', 1010.0, 990.0, "
            "1030.0, 1010.0, 1, 2, 1.0, 1.0, 0.0, 0.0, 0.5, 0.0),), models=('m',), observed=((None,),)); "
            "assert arena.board.Board.from_json(json.loads(json.dumps(b.to_json()))) == b")
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
