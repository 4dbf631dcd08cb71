"""What the agreement page costs with 100 annotators and 23 criteria (a synthetic snapshot).

    .venv/bin/python bench/agreement_page_bench.py [--annotators 100] [--criteria 23] [--repeat 20]

Builds a throwaway SQLite database (migrated in a temporary ``EVALSITE_VAR_DIR``), one study with
its evaluator, manager and annotators, and writes an ``agreement`` snapshot shaped as
:func:`metrics.agreement_service.agreement_payload` stores it: every pair of annotators with a kappa
on every criterion (the pairwise choice, Likert criteria and failure tags), each annotator's
with/without alpha per criterion, 20 least-agreed units with five judgments each.  Then it times
what a page view does after authentication: :func:`metrics.agreement_service.agreement_page` (the
snapshot read, names, the heatmap of one criterion) and the template's rendering, for the evaluator
(account names) and for a manager (pseudonyms), and the ``?format=json`` export.  It prints the
stored payload's size and how much of it one view decodes.  Seeded; nothing is downloaded.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _django(var_dir: str) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "evalsite.settings")
    os.environ["EVALSITE_VAR_DIR"] = var_dir
    os.environ.setdefault("DEBUG", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def synthetic_payload(study_id: int, people: list[tuple[int, str]], n_criteria: int, rng) -> dict:
    """A stored agreement payload (the current layout) for these (user id, username) annotators."""
    from annotation.api.selectors import pseudonym

    likert = max(1, (n_criteria - 1) // 2)
    tags = n_criteria - 1 - likert
    criteria = [("choice", "Pairwise choice", "pairwise", "nominal")]
    criteria += [(f"c{i}", f"Criterion {i}", "likert", "ordinal") for i in range(likert)]
    criteria += [(f"tag:t{i}", f"Tag “t{i}”", "tag", "nominal") for i in range(tags)]
    rows, kappas = [], {}
    for key, name, kind, level in criteria:
        pairs = [[a, b, int(rng.integers(2, 60)), round(float(rng.uniform(-0.2, 0.9)), 6),
                  round(float(rng.uniform(0.3, 1.0)), 6)]
                 for i, (a, _) in enumerate(people) for b, _ in people[i + 1:]]
        kappas[key] = pairs
        rows.append({"key": key, "name": name, "kind": kind, "level": level, "alpha": 0.61, "lower": 0.55,
                     "upper": 0.67, "units": 5000, "annotators": len(people), "pairable": 15000,
                     "percent_agreement": 0.7, "fleiss": {"kappa": 0.6, "percent": 0.7, "units": 4000,
                                                          "of_units": 5000, "raters_per_unit": 3},
                     "pairs": len(pairs), "off_scale": 0, "scale": 5 if kind == "likert" else None, "note": "",
                     "verdict": "not reliable", "kappa_weights": "quadratic" if kind == "likert" else None})
    annotators = []
    for user_id, username in people:
        annotators.append({
            "user_id": user_id, "username": username, "pseudonym": pseudonym(study_id, user_id), "judgments": 150,
            "loo": {key: [0.61, round(float(rng.uniform(0.5, 0.7)), 6)] for key, *_ in criteria},
            "choice_alpha": [0.61, 0.6], "likert_gain": 0.01, "tag_gain": -0.01, "gold_right": 9,
            "gold_answered": 10, "gold_accuracy": 0.9, "gold_below": False, "competence": 0.8, "mace": 0.9,
            "competence_n": likert + 1, "competence_by": {key: 0.8 for key, _, kind, _ in criteria if kind != "tag"},
            "median_seconds": 21.5, "flags": []})
    least = [{"unit": 1000 + u, "kind": "pairwise", "criterion": "choice", "criterion_name": "Pairwise choice",
              "prompt": f"q{u}", "prompt_text": "A question " * 20, "a": "alpha-model", "b": "beta-model",
              "uncertainty": 1.2, "uncertainty_share": 0.87, "label": "a", "label_words": "A better",
              "adjudicated": None,
              "judgments": [{"user_id": uid, "username": name, "pseudonym": pseudonym(study_id, uid), "choice": "a",
                             "choice_words": "A better", "rationale": "because", "seconds": 12.0, "expert": False}
                            for uid, name in people[u:u + 5]]} for u in range(20)]
    return {"computed_at": "2026-01-01T00:00:00+00:00", "config": {}, "criteria": rows, "kappas": kappas,
            "annotators": annotators, "competence_note": "", "competence_from": ["the pairwise choice"],
            "least_agreed": least, "least_agreed_by": "Dawid-Skene posterior entropy",
            "n_judgments": 150 * len(people)}


def _time(fn, repeat: int) -> tuple[float, float]:
    fn()  # warm: templates compiled, connections open
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotators", type=int, default=100)
    parser.add_argument("--criteria", type=int, default=23)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as var_dir:
        _django(var_dir)
        from django.contrib.auth import get_user_model
        from django.template.loader import render_to_string
        from django.utils import timezone

        from annotation import services
        from arena.models import RatingSnapshot
        from metrics.agreement_service import KAPPAS, KAPPAS_SLICE, _read, _read_kappas, agreement_page

        users = get_user_model().objects
        evaluator = users.create_user("bench-evaluator", password="x")
        manager = users.create_user("bench-manager", password="x")
        people = [users.create_user(f"annotator{i:03d}", password="x") for i in range(args.annotators)]
        study = services.study_create(name="bench: agreement page", created_by=evaluator,
                                      prompts_data=b"id,prompt\nq1,Q?\n", prompts_filename="p.csv",
                                      annotators=people, managers=[manager])
        payload = synthetic_payload(study.pk, [(u.pk, u.username) for u in people], args.criteria,
                                    np.random.default_rng(0))
        kappas = payload.pop("kappas")
        now = timezone.now()
        RatingSnapshot.objects.update_or_create(study=study, slice_key="all", method="agreement",
                                                defaults={"payload": payload, "computed_at": now})
        for key, pairs in kappas.items():  # as agreement_recompute stores them: a row per criterion
            RatingSnapshot.objects.create(study=study, slice_key=KAPPAS_SLICE + key, method=KAPPAS,
                                          payload={"criterion": key, "pairs": pairs}, computed_at=now)
        stored = len(json.dumps(payload)) + sum(len(json.dumps({"pairs": p})) for p in kappas.values())
        one_view = len(json.dumps(_read(study), default=str)) + len(json.dumps(_read_kappas(study, ["choice"])))
        print(f"{args.annotators} annotators x {args.criteria} criteria: stored {stored / 1e6:.2f} MB, "
              f"decoded per page view {one_view / 1e6:.3f} MB")
        for who, pseudonymize in (("evaluator", False), ("manager", True)):
            def view(pseudonymize=pseudonymize):
                data = agreement_page(study, pseudonymize=pseudonymize, criterion="")
                return render_to_string("metrics/agreement.html", {"study": study, "evaluator": not pseudonymize,
                                                                   **data})
            median, best = _time(view, args.repeat)
            print(f"page ({who}): median {median * 1000:.1f} ms, best {best * 1000:.1f} ms, "
                  f"{len(view()) / 1e6:.2f} MB of HTML")
        median, best = _time(lambda: agreement_page(study, pseudonymize=True, export=True), max(3, args.repeat // 4))
        print(f"JSON export data (manager): median {median * 1000:.1f} ms, best {best * 1000:.1f} ms")


if __name__ == "__main__":
    main()
