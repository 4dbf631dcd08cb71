"""The vote path at crowd scale: a fixed number of queries, counters equal to the rows,
one open lease per annotator and slot, sides balanced per candidate pair, one refresh per burst."""
import re
import threading
from collections import Counter
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.db import IntegrityError, connection, connections, transaction
from django.db.models import Count, Q
from django.urls import reverse
from django.utils import timezone

from annotation import services
from annotation.models import Assignment, Judgment, StudyMember, Unit
from arena.models import RatingRequest, RatingSnapshot
from arena.services import ratings_recompute, ratings_refresh

# One vote round trip over HTTP (the session comes from the cache): the user, the
# assignment with its study and membership, close the lease, insert the judgment, bump
# the annotator's counter, flip the refresh marker (and, once per refresh, read when it
# last ran), move the task fetched ahead to the screen and read its texts, then lease the
# task after it: scan the open units, take a place, write the lease: 11, or 12 for the vote
# that flips the marker.  PostgreSQL runs each of the three parts as one statement: 6.  The
# test database adds a SAVEPOINT and its RELEASE around each of the three (in production
# the move to the screen is a lone statement, without a transaction of its own).
ROUND_TRIP_QUERIES = 18


def _prompts(n: int) -> bytes:
    return ("id,prompt,tags\n" + "".join(f"q{i},Question {i}?,t{i % 3}\n" for i in range(n))).encode()


def _token(html: str) -> str:
    return re.search(r'action="/tasks/([^"/]+)/"', html).group(1)


def _assert_counters_match_rows(study) -> None:
    taken = dict(
        Unit.objects.filter(study=study).annotate(
            live=Count("assignments", filter=Q(assignments__released=False))
        ).values_list("pk", "live")
    )
    assert dict(Unit.objects.filter(study=study).values_list("pk", "taken")) == taken
    assert all(t <= n for t, n in Unit.objects.filter(study=study).values_list("taken", "needed"))
    for member in StudyMember.objects.filter(study=study, role="annotator"):
        assert member.done == Judgment.objects.filter(study=study, annotator=member.user).count()
    open_leases = Counter(
        Assignment.objects.filter(study=study, submitted_at__isnull=True, released=False)
        .values_list("annotator_id", "slot")
    )
    assert all(n == 1 for n in open_leases.values())  # one per slot: the task on screen, the one ahead


def _round_trip_queries(client, django_assert_max_num_queries, study, annotator) -> int:
    client.force_login(annotator)
    token = _token(client.get(reverse("annotation:annotate", args=[study.pk])).content.decode())
    with django_assert_max_num_queries(ROUND_TRIP_QUERIES) as ctx:
        response = client.post(reverse("annotation:submit", args=[token]), {"choice": "left"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and _token(response.content.decode()) != token
    return len(ctx.captured_queries)


def test_a_vote_round_trip_costs_the_same_queries_in_a_small_and_a_large_study(
        client, study_factory, annotators, django_assert_max_num_queries):
    small = study_factory(candidates=("alpha-model", "beta-model"), prompts=_prompts(3))
    large = study_factory(candidates=("alpha-model", "beta-model", "gamma-model", "delta-model"),
                          prompts=_prompts(300), overlap=3)
    assert large.units.count() == 1800
    # the annotator has judged many units of the large study already
    for _ in range(40):
        a = services.assignment_next(study=large, annotator=annotators[0])
        services.judgment_submit(assignment=a, choice="tie")
    # while votes flow the refresh marker is already pending: the steady state
    RatingRequest.objects.filter(study__in=[small, large]).update(pending=True)
    small_n = _round_trip_queries(client, django_assert_max_num_queries, small, annotators[0])
    large_n = _round_trip_queries(client, django_assert_max_num_queries, large, annotators[0])
    assert small_n == large_n <= ROUND_TRIP_QUERIES - 1
    if connection.vendor == "postgresql":  # each part of the round trip is one statement there
        assert large_n <= 6 + 6


def test_the_page_shows_progress_from_counters(client, study_factory, annotators):
    study = study_factory(candidates=("alpha-model", "beta-model"), prompts=_prompts(10))  # 10 units
    client.force_login(annotators[0])
    html = client.get(reverse("annotation:annotate", args=[study.pk])).content.decode()
    assert 'id="done-count">0<' in html and "up to 9 more after this" in html
    for done in range(1, 4):
        html = client.post(reverse("annotation:submit", args=[_token(html)]), {"choice": "right"},
                           HTTP_HX_REQUEST="true").content.decode()
        assert f'id="done-count">{done}<' in html and f"up to {9 - done} more after this" in html
    assert StudyMember.objects.get(study=study, user=annotators[0]).done == 3


def test_annotate_pages_are_never_stored(client, study_factory, annotators):
    study = study_factory()
    client.force_login(annotators[0])
    page = client.get(reverse("annotation:annotate", args=[study.pk]))
    assert "no-store" in page["Cache-Control"]
    vote = client.post(reverse("annotation:submit", args=[_token(page.content.decode())]), {"choice": "tie"})
    assert "no-store" in vote["Cache-Control"]


def test_the_database_refuses_a_second_open_lease_for_one_annotator(study_factory, annotators):
    study = study_factory(overlap=2)
    held = services.assignment_next(study=study, annotator=annotators[0])
    other = Unit.objects.filter(study=study).exclude(pk=held.unit_id).first()
    now = timezone.now()
    with pytest.raises(IntegrityError), transaction.atomic():
        Assignment.objects.create(study=study, unit=other, annotator=annotators[0], token="x" * 43, left_is_a=True,
                                  leased_at=now, expires_at=now + timedelta(minutes=30))
    # the service answers a second request with the lease already held
    assert services.assignment_next(study=study, annotator=annotators[0], check_held=False).pk == held.pk
    _assert_counters_match_rows(study)


def test_each_candidate_pair_is_shown_each_way_round_equally_often(study_factory, annotators):
    study = study_factory(candidates=("alpha-model", "beta-model", "gamma-model"), prompts=_prompts(20), overlap=3)
    for annotator in annotators:
        while (a := services.assignment_next(study=study, annotator=annotator)) is not None:
            services.judgment_submit(assignment=a, choice="tie")
    left = Counter()
    for a in Assignment.objects.filter(study=study).select_related("unit__output_a", "unit__output_b"):
        shown_left = a.unit.output_a if a.left_is_a else a.unit.output_b
        pair = (a.unit.cand_lo_id, a.unit.cand_hi_id)
        left[pair, shown_left.candidate_id == pair[0]] += 1
    pairs = {pair for pair, _ in left}
    assert len(pairs) == 3
    for pair in pairs:  # 20 units x 3 annotators = 60 showings per pair: exactly 30 each way
        assert left[pair, True] == left[pair, False] == 30


def test_counters_follow_expiry_exclusion_and_readmission(study_factory, annotators):
    study = study_factory(candidates=("alpha-model", "beta-model"), prompts=_prompts(6), overlap=2)
    for annotator in annotators[:2]:
        for _ in range(3):
            services.judgment_submit(assignment=services.assignment_next(study=study, annotator=annotator),
                                     choice="left")
    walked_away = services.assignment_next(study=study, annotator=annotators[2])
    _assert_counters_match_rows(study)
    # the lease expires; the next sweep frees its place
    later = timezone.now() + timedelta(hours=1)
    assert services.leases_release_expired(study_id=study.pk, now=later) == 1
    assert Unit.objects.get(pk=walked_away.unit_id).taken == Unit.objects.get(pk=walked_away.unit_id).judgments.count()
    _assert_counters_match_rows(study)
    study.refresh_from_db()
    version = study.version
    services.member_exclude(study=study, user=annotators[0])
    study.refresh_from_db()
    assert study.version == version + 1
    assert Unit.objects.filter(study=study).aggregate(n=Count("id", filter=Q(taken__gt=0)))["n"] == 3
    _assert_counters_match_rows(study)
    services.member_exclude(study=study, user=annotators[0], excluded=False)
    _assert_counters_match_rows(study)
    assert sum(Unit.objects.filter(study=study).values_list("taken", flat=True)) == 6


def test_a_lease_past_its_time_is_accepted_until_someone_else_needs_the_place(study_factory, annotators):
    study = study_factory(candidates=("alpha-model", "beta-model"), overlap=1, prompts=b"id,prompt\nq1,Hello?\n")
    first = services.assignment_next(study=study, annotator=annotators[0])
    later = timezone.now() + timedelta(hours=2)
    judgment, created = services.judgment_submit(assignment=first, choice="left", now=later)
    assert created and judgment.annotator == annotators[0]
    _assert_counters_match_rows(study)


def test_a_released_lease_is_accepted_while_its_unit_has_a_free_place(study_factory, annotators):
    study = study_factory(candidates=("alpha-model", "beta-model"), overlap=2, prompts=b"id,prompt\nq1,Hello?\n")
    first = services.assignment_next(study=study, annotator=annotators[0])
    services.leases_release_expired(study_id=study.pk, now=timezone.now() + timedelta(hours=1))
    assert Unit.objects.get().taken == 0
    _, created = services.judgment_submit(assignment=first, choice="right")
    assert created and Unit.objects.get().taken == 1
    _assert_counters_match_rows(study)


def test_a_burst_of_votes_requests_one_refresh_and_a_vote_after_the_claim_requests_another(
        study_factory, annotators, django_capture_on_commit_callbacks, settings):
    settings.EVALSITE_RATINGS_MIN_INTERVAL = 7
    study = study_factory(prompts=_prompts(10))
    marker = RatingRequest.objects.get(study=study, slice_key="all")
    assert marker.pending  # importing outputs asked for a refresh; the worker claims it
    ratings_refresh(study_id=study.pk)
    marker.refresh_from_db()
    assert not marker.pending
    with django_capture_on_commit_callbacks() as enqueued:
        for annotator in annotators:
            for _ in range(4):
                services.judgment_submit(assignment=services.assignment_next(study=study, annotator=annotator),
                                         choice="left")
    assert len(enqueued) == 1
    marker.refresh_from_db()
    assert marker.pending
    snapshot = ratings_refresh(study_id=study.pk)  # what the worker does
    assert snapshot.n_judgments == 12
    assert ratings_refresh(study_id=study.pk) is None  # a duplicate delivery claims nothing
    with django_capture_on_commit_callbacks() as enqueued:
        services.judgment_submit(assignment=services.assignment_next(study=study, annotator=annotators[0]),
                                 choice="right")
    assert len(enqueued) == 1
    assert ratings_refresh(study_id=study.pk).n_judgments == 13


def test_reading_the_leaderboard_never_enqueues_work(client, study_factory, annotators, manager,
                                                     django_capture_on_commit_callbacks):
    study = study_factory()
    services.judgment_submit(assignment=services.assignment_next(study=study, annotator=annotators[0]), choice="left")
    ratings_refresh(study_id=study.pk)
    services.judgment_submit(assignment=services.assignment_next(study=study, annotator=annotators[1]), choice="left")
    client.force_login(manager)
    with django_capture_on_commit_callbacks() as enqueued:
        page = client.get(reverse("arena:leaderboard", args=[study.pk]))
        api = client.get(f"/api/studies/{study.pk}/leaderboard")
        client.get(reverse("arena:leaderboard", args=[study.pk]), {"slice": "tag:account"}, HTTP_HX_REQUEST="true")
    assert enqueued == []
    assert page.status_code == 200 and "refreshes by itself" in page.content.decode()
    body = api.json()
    assert body["n_judgments"] == 1 and body["age_seconds"] >= 0


def test_an_exclusion_makes_the_next_refresh_recount(study_factory, annotators):
    study = study_factory()
    for annotator in annotators[:2]:
        services.judgment_submit(assignment=services.assignment_next(study=study, annotator=annotator), choice="left")
    assert ratings_recompute(study_id=study.pk, rounds=20).n_judgments == 2
    version = StudyMember.objects.get(study=study, user=annotators[0]).study.version
    services.member_exclude(study=study, user=annotators[0])
    snapshot = ratings_recompute(study_id=study.pk, rounds=20)  # no new judgment, but a new study version
    assert snapshot.n_judgments == 1
    assert RatingSnapshot.objects.get(study=study, slice_key="all", method="bt").study_version == version + 1


# --- concurrent clients, on the real database ------------------------------------------


def _in_threads(n: int, target) -> list:
    results, errors = [None] * n, []

    def run(i):
        try:
            results[i] = target(i)
        except Exception as exc:  # collected and re-raised in the test's thread
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    if errors:
        raise errors[0]
    return results


@pytest.mark.django_db(transaction=True)
def test_concurrent_annotators_never_overfill_a_unit_and_every_vote_is_counted(study_factory, make_user):
    study = study_factory(candidates=("alpha-model", "beta-model", "gamma-model"), prompts=_prompts(8), overlap=2)
    crowd = [make_user(f"crowd{i}") for i in range(6)]
    for user in crowd:
        services.member_set(study=study, user=user, role="annotator")

    def annotate(i):
        votes = 0
        while (a := services.assignment_next(study=study, annotator=crowd[i])) is not None:
            services.judgment_submit(assignment=a, choice=("left", "right", "tie")[votes % 3])
            votes += 1
        return votes

    votes = _in_threads(len(crowd), annotate)
    assert sum(votes) == 24 * 2  # every place of every unit filled exactly once
    assert Judgment.objects.filter(study=study).count() == 48
    assert not Unit.objects.filter(study=study).exclude(taken=2).exists()
    assert not Judgment.objects.values("unit", "annotator").annotate(n=Count("id")).filter(n__gt=1).exists()
    _assert_counters_match_rows(study)


@pytest.mark.django_db(transaction=True)
def test_two_requests_of_one_annotator_in_flight_hold_one_lease(study_factory, annotators):
    study = study_factory(prompts=_prompts(12), overlap=2)
    leases = _in_threads(8, lambda i: services.assignment_next(study=study, annotator=annotators[0]))
    assert len({a.pk for a in leases}) == 1
    assert Assignment.objects.filter(study=study, annotator=annotators[0]).count() == 1
    _assert_counters_match_rows(study)


@pytest.mark.django_db(transaction=True)
def test_a_unit_locked_by_another_lease_is_waited_for_not_reported_as_all_done(study_factory, annotators):
    # PostgreSQL: the first scan skips the locked unit, the second waits for it.
    # SQLite: the lock holder's transaction holds the write lock; the lease waits for it.
    study = study_factory(candidates=("alpha-model", "beta-model"), overlap=1, prompts=b"id,prompt\nq1,Hello?\n")
    locked, release = threading.Event(), threading.Event()

    def hold_lock(_):
        with transaction.atomic():
            Unit.objects.select_for_update().get(study=study)
            locked.set()
            release.wait(10)
        return None

    def ask(_):
        locked.wait(10)
        threading.Timer(0.5, release.set).start()
        return services.assignment_next(study=study, annotator=annotators[0])

    _, lease = _in_threads(2, lambda i: (hold_lock, ask)[i](i))
    assert lease is not None and lease.unit.study_id == study.pk


def test_an_old_tab_voting_on_a_released_lease_while_a_new_one_is_held_is_recorded(study_factory, annotators):
    study = study_factory(candidates=("alpha-model", "beta-model"), overlap=2, prompts=_prompts(3))
    old = services.assignment_next(study=study, annotator=annotators[0])
    services.leases_release_expired(study_id=study.pk, now=timezone.now() + timedelta(hours=1))
    Unit.objects.filter(pk=old.unit_id).update(shuffle=2**31 - 1)  # served last from now on
    new = services.assignment_next(study=study, annotator=annotators[0])
    assert new.unit_id != old.unit_id
    judgment, created = services.judgment_submit(assignment=old, choice="left")
    assert created and judgment.assignment_id == old.pk
    assert services.lease_held(study=study, annotator=annotators[0]).pk == new.pk  # still the one open lease
    _assert_counters_match_rows(study)


def test_an_annotator_waiting_for_generation_is_told_not_yet_rather_than_all_done(client, study_factory, annotators):
    study = study_factory(candidates=("alpha-model",))  # one candidate: no pair yet
    remote = services.candidate_create(study=study, name="remote", backend="openai",
                                       spec={"base_url": "http://127.0.0.1:9/v1", "model": "m"})
    services.generation_start(study=study, candidates=[remote])
    client.force_login(annotators[0])
    html = client.get(reverse("annotation:annotate", args=[study.pk])).content.decode()
    assert "Not ready yet" in html and "All done" not in html and 'hx-trigger="every 10s"' in html
    study.outputs.filter(candidate=remote).update(status="failed")
    html = client.get(reverse("annotation:annotate", args=[study.pk]), HTTP_HX_REQUEST="true").content.decode()
    assert "All done" in html and "Not ready yet" not in html


def test_a_sweep_gives_back_every_place_a_unit_lost(study_factory, annotators):
    study = study_factory(candidates=("alpha-model", "beta-model"), overlap=3, prompts=b"id,prompt\nq1,Hello?\n")
    for annotator in annotators:  # one unit, three leases on it
        services.assignment_next(study=study, annotator=annotator)
    assert Unit.objects.get().taken == 3
    assert services.leases_release_expired(study_id=study.pk, now=timezone.now() + timedelta(hours=1)) == 3
    assert Unit.objects.get().taken == 0
    _assert_counters_match_rows(study)
    assert services.assignment_next(study=study, annotator=annotators[0]) is not None  # the place is free again


@pytest.mark.django_db(transaction=True)
def test_a_request_waiting_on_the_pair_its_annotator_just_leased_takes_no_second_place(study_factory, annotators):
    # PostgreSQL: the second request skips the locked pair, finds nothing, then waits for it;
    # once the first commits, the row is rechecked but the NOT EXISTS beside it is not.
    # SQLite: the second request waits for the first's write lock, then sees its lease.
    study = study_factory(candidates=("alpha-model", "beta-model"), overlap=2, prompts=b"id,prompt\nq1,Hello?\n")
    leased, release = threading.Event(), threading.Event()

    def first(_):
        with transaction.atomic():
            lease = services.assignment_next(study=study, annotator=annotators[0])
            leased.set()
            release.wait(10)
        return lease

    def second(_):
        leased.wait(10)
        threading.Timer(0.5, release.set).start()
        return services.assignment_next(study=study, annotator=annotators[0])

    a, b = _in_threads(2, lambda i: (first, second)[i](i))
    assert a is not None and b is not None and a.pk == b.pk
    assert Unit.objects.get().taken == 1
    _assert_counters_match_rows(study)


@pytest.mark.django_db(transaction=True)
def test_requests_in_flight_hold_one_task_ahead_and_move_it_to_the_screen_once(study_factory, annotators):
    study = study_factory(prompts=_prompts(12), overlap=2)
    current = services.assignment_next(study=study, annotator=annotators[0])
    aheads = _in_threads(8, lambda i: services.assignment_ahead(study=study, annotator=annotators[0]))
    assert len({a.pk for a in aheads}) == 1 and aheads[0].unit_id != current.unit_id
    services.judgment_submit(assignment=current, choice="left")
    shown = _in_threads(8, lambda i: services.assignment_next(study=study, annotator=annotators[0], check_held=False))
    assert {a.pk for a in shown} == {aheads[0].pk}  # the task ahead, moved once; nobody leased another
    assert Assignment.objects.get(pk=aheads[0].pk).slot == 0
    _assert_counters_match_rows(study)


def test_a_task_fetched_ahead_is_served_from_the_moment_it_is_shown(study_factory, annotators):
    study = study_factory(candidates=("alpha-model", "beta-model"), prompts=_prompts(4))
    t0 = timezone.now()
    current = services.assignment_next(study=study, annotator=annotators[0], now=t0)
    ahead = services.assignment_ahead(study=study, annotator=annotators[0], now=t0)
    lease = timedelta(minutes=django_settings.EVALSITE_LEASE_MINUTES)
    assert ahead.slot == 1 and ahead.expires_at == t0 + 2 * lease  # it waits for the task before it
    services.judgment_submit(assignment=current, choice="tie", now=t0 + timedelta(seconds=40))
    shown = services.assignment_next(study=study, annotator=annotators[0], now=t0 + timedelta(seconds=41),
                                     check_held=False)
    assert shown.pk == ahead.pk and shown.unit.prompt.text and shown.unit.output_b.text
    services.judgment_submit(assignment=shown, choice="left", now=t0 + timedelta(seconds=53))
    judgment = Judgment.objects.get(assignment=shown)
    assert (judgment.submitted_at - judgment.served_at).total_seconds() == 12  # not 53: time on screen only
    # the REST API never fetches ahead: its next task is a new lease even with one waiting ahead
    waiting = services.assignment_ahead(study=study, annotator=annotators[0])
    nxt = services.assignment_next(study=study, annotator=annotators[0], check_held=False, promote=False)
    assert nxt.pk != waiting.pk and Assignment.objects.get(pk=waiting.pk).slot == 1
    _assert_counters_match_rows(study)
