"""Shapes of the arena API's answers, for the OpenAPI schema (the views build plain dicts)."""
from __future__ import annotations

from rest_framework import serializers


class LeaderboardQuerySerializer(serializers.Serializer):
    slice = serializers.CharField(required=False, default="all", max_length=200,
                                  help_text="all, tag:<tag> or group:<group> (the study's slices are listed in "
                                            "`slices`).")


class BoardRowSerializer(serializers.Serializer):
    model = serializers.CharField()
    rating = serializers.FloatField()
    lower = serializers.FloatField(help_text="95% bootstrap interval, low end.")
    upper = serializers.FloatField(help_text="95% bootstrap interval, high end.")
    median = serializers.FloatField()
    rank = serializers.IntegerField()
    battles = serializers.IntegerField()
    wins = serializers.FloatField()
    losses = serializers.FloatField()
    ties = serializers.FloatField()
    both_bad = serializers.FloatField()
    win_rate = serializers.FloatField(allow_null=True)
    both_bad_rate = serializers.FloatField(allow_null=True)
    hidden = serializers.BooleanField(help_text="Hidden from new pairs: keeps its rating, gets no new votes.")


class ProportionSerializer(serializers.Serializer):
    successes = serializers.FloatField()
    trials = serializers.FloatField()
    share = serializers.FloatField(allow_null=True)
    lower = serializers.FloatField(allow_null=True)
    upper = serializers.FloatField(allow_null=True)


class LeaderboardSerializer(serializers.Serializer):
    study = serializers.IntegerField()
    slice = serializers.CharField()
    computed_at = serializers.DateTimeField(allow_null=True, help_text="null: no snapshot computed yet.")
    age_seconds = serializers.FloatField(allow_null=True)
    n_judgments = serializers.IntegerField(required=False)
    rounds = serializers.IntegerField(required=False)
    regularization = serializers.FloatField(required=False)
    note = serializers.CharField(required=False)
    rows = BoardRowSerializer(many=True)
    length_controlled = serializers.DictField(required=False, help_text="The length-controlled fit.")
    position_bias = ProportionSerializer(required=False, allow_null=True)
    length_bias = ProportionSerializer(required=False, allow_null=True)
    slices = serializers.ListField(child=serializers.CharField(), required=False)
    likert = serializers.DictField(
        required=False, allow_null=True,
        help_text="The slice's Likert criteria per candidate (n, mean, Student-t 95% interval, points' distribution, "
                  "n/a count) and failure-tag rates (Wilson 95%), from the same snapshot as the ratings (its "
                  "`computed_at`/`age_seconds`); null when the study rates and tags nothing or nothing is computed yet.")
    ratings_mode = serializers.DictField(
        required=False,
        help_text="Whose judgments the ratings and Likert means count: mode (all | exclude_flagged), left_out "
                  "(annotator ids left out) and the sentence the leaderboard page shows.")


class CandidateProgressSerializer(serializers.Serializer):
    candidate_id = serializers.IntegerField()
    name = serializers.CharField()
    backend = serializers.CharField()
    total = serializers.IntegerField()
    done = serializers.IntegerField()
    failed = serializers.IntegerField()
    running = serializers.IntegerField()
    pending = serializers.IntegerField()
    mean_latency_ms = serializers.FloatField(allow_null=True)
    tokens = serializers.IntegerField()
    cost = serializers.FloatField(allow_null=True)
    stuck = serializers.IntegerField()
    expected = serializers.IntegerField(required=False, help_text="Outputs asked of each candidate.")
    prompts = serializers.IntegerField(required=False)
    prompts_covered = serializers.IntegerField(required=False,
                                               help_text="Prompts with a finished output of this candidate.")
    missing_prompts = serializers.ListField(child=serializers.CharField(), required=False)


class ProgressSerializer(serializers.Serializer):
    study = serializers.IntegerField()
    finished = serializers.BooleanField()
    candidates = CandidateProgressSerializer(many=True)
