"""What the annotation API takes and gives: input serializers validate, output serializers document.

No rule lives here: the views fetch through ``annotation.access`` and change state through
``annotation.services``; these classes only check the shape of a request and describe the shape of
a response (drf-spectacular reads them for the OpenAPI schema).
"""
from __future__ import annotations

from rest_framework import serializers

from arena import outcomes

from .. import exchange
from ..models import Output, Skip, StudyMember
from ..usertext import text_problem

MAX_POSITIVE_INT = 2**31 - 1
ROLES = StudyMember.Role.choices


# --- studies ---------------------------------------------------------------------------------


class StudySummarySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    description = serializers.CharField()
    created_at = serializers.DateTimeField()
    role = serializers.ChoiceField(choices=ROLES, help_text="The caller's role here (the highest, if several).")
    roles = serializers.ListField(child=serializers.ChoiceField(choices=ROLES))
    url = serializers.CharField(help_text="This study in the API.")


class CandidateSummarySerializer(serializers.Serializer):
    name = serializers.CharField()
    backend = serializers.CharField()
    hidden = serializers.BooleanField(help_text="Hidden candidates get no new pairs.")


class StudyDetailSerializer(StudySummarySerializer):
    overlap = serializers.IntegerField(help_text="How many annotators judge each pair.")
    units_total = serializers.IntegerField(help_text="Pairs built so far.")
    # an annotator's view
    done = serializers.IntegerField(required=False, help_text="Annotators: judgments you have submitted.")
    remaining = serializers.IntegerField(required=False,
                                         help_text="Annotators: pairs you have not judged (an upper bound).")
    tasks_url = serializers.CharField(required=False, help_text="Annotators: where the next task is.")
    # the evaluator's and manager's view
    prompts = serializers.IntegerField(required=False)
    judgments = serializers.IntegerField(required=False)
    samples_per_prompt = serializers.IntegerField(required=False)
    adaptive_sampling = serializers.BooleanField(required=False)
    candidates = CandidateSummarySerializer(many=True, required=False)
    links = serializers.DictField(child=serializers.CharField(), required=False,
                                  help_text="Evaluators and managers: the study's other endpoints.")


# --- tasks and judgments ---------------------------------------------------------------------


class TaskImageSerializer(serializers.Serializer):
    url = serializers.CharField(help_text="The full image (checked for permission on every request).")
    thumb = serializers.CharField(help_text="Its thumbnail.")
    alt = serializers.CharField(help_text='"Image A", or "Sample 2 of A" in a grid of samples.')


class TaskOutputSerializer(serializers.Serializer):
    label = serializers.ChoiceField(choices=["A", "B"], help_text="A is shown on the left, B on the right.")
    text = serializers.CharField(allow_blank=True, help_text="Empty for an image output (see images).")
    images = TaskImageSerializer(many=True, required=False,
                                 help_text="Image outputs only: the image, or the grid of the prompt's samples "
                                           "of that side (absent for a text output).")


class CriterionSerializer(serializers.Serializer):
    """A Likert criterion (Likert tasks only; pairwise tasks send an empty list)."""

    key = serializers.CharField(help_text="The key to rate it under in `ratings`.")
    name = serializers.CharField()
    scale = serializers.IntegerField(help_text="Points 1..scale.")
    labels = serializers.ListField(child=serializers.CharField(), help_text="A label for each point, 1 first.")
    allow_na = serializers.BooleanField(help_text="Whether null (not applicable) is accepted.")


class TagSerializer(serializers.Serializer):
    key = serializers.CharField()
    label = serializers.CharField()


class TaskSerializer(serializers.Serializer):
    state = serializers.ChoiceField(
        choices=["open", "finished", "waiting", "quiz"],
        help_text="open: a task to judge; finished: nothing left for you; waiting: outputs are still being "
                  "generated, ask again later; quiz: pass the study's qualification quiz (in the browser) first.")
    detail = serializers.CharField(help_text="What the state means, in words.")
    token = serializers.CharField(allow_null=True, help_text="The task's opaque token (null when there is none).")
    kind = serializers.ChoiceField(choices=["pairwise", "likert"], allow_null=True,
                                   help_text="pairwise: outputs A and B, send a choice; likert: output A alone, "
                                             "send ratings on the criteria.")
    prompt = serializers.CharField(allow_null=True)
    outputs = TaskOutputSerializer(many=True)
    criteria = CriterionSerializer(many=True)
    tags = TagSerializer(many=True, help_text="Failure-mode tags one may pick (send their keys).")
    done = serializers.IntegerField()
    remaining = serializers.IntegerField()


class JudgmentInputSerializer(serializers.Serializer):
    """A verdict on a pairwise task, in screen sides (the outcome vocabulary's ``CHOICES``), or the
    ratings of a Likert task; failure tags on either."""

    choice = serializers.ChoiceField(choices=list(outcomes.CHOICES), required=False,
                                     help_text="Pairwise: left: A is better; right: B is better; tie; both_bad.")
    ratings = serializers.DictField(child=serializers.IntegerField(allow_null=True), required=False, default=None,
                                    help_text="Likert: {criterion key: point, or null for not applicable}.")
    tags = serializers.ListField(child=serializers.CharField(max_length=40), required=False, default=list,
                                 max_length=50, help_text="Keys of the failure tags seen.")
    rationale = serializers.CharField(required=False, allow_blank=True, default="",
                                      max_length=exchange.MAX_RATIONALE)
    active_ms = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=0,
                                         max_value=MAX_POSITIVE_INT,
                                         help_text="Time the task was on screen and the annotator active.")


class JudgmentOutputSerializer(serializers.Serializer):
    token = serializers.CharField()
    choice = serializers.ChoiceField(choices=list(outcomes.CHOICES), allow_null=True)
    ratings = serializers.DictField(child=serializers.IntegerField(allow_null=True), allow_null=True)
    tags = serializers.ListField(child=serializers.CharField())
    rationale = serializers.CharField()
    active_ms = serializers.IntegerField(allow_null=True)
    submitted_at = serializers.DateTimeField()


class JudgmentSubmitResponseSerializer(serializers.Serializer):
    created = serializers.BooleanField(help_text="false when this repeats the verdict already stored.")
    judgment = JudgmentOutputSerializer()
    next = TaskSerializer()


class SkipInputSerializer(serializers.Serializer):
    reason = serializers.ChoiceField(choices=list(Skip.Reason.values),
                                     help_text="cant_judge, offensive, broken, or other (which needs a note).")
    note = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000,
                                 help_text="The annotator's words; required with reason other.")

    def validate_note(self, value: str) -> str:
        problem = text_problem(value)  # a lone surrogate from a JSON escape: no database stores it
        if problem:
            raise serializers.ValidationError(problem)
        return value


class SkipResponseSerializer(serializers.Serializer):
    created = serializers.BooleanField(help_text="false when the task was skipped already: nothing changed.")
    next = TaskSerializer()


class RefusalSerializer(serializers.Serializer):
    detail = serializers.CharField()
    code = serializers.CharField()


# --- outputs -------------------------------------------------------------------------------


class OutputQuerySerializer(serializers.Serializer):
    candidate = serializers.CharField(required=False, max_length=200, help_text="Only this candidate's outputs.")
    status = serializers.ChoiceField(choices=Output.Status.values, required=False)


class OutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    prompt_id = serializers.CharField()
    candidate = serializers.CharField()
    sample_index = serializers.IntegerField()
    status = serializers.ChoiceField(choices=Output.Status.values)
    text = serializers.CharField()
    error = serializers.CharField()
    latency_ms = serializers.FloatField(allow_null=True)
    prompt_tokens = serializers.IntegerField(allow_null=True)
    completion_tokens = serializers.IntegerField(allow_null=True)
    cost = serializers.FloatField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)


# --- judgments in and out ------------------------------------------------------------------


class ExportQuerySerializer(serializers.Serializer):
    format = serializers.ChoiceField(choices=list(exchange.FORMATS), default="csv", required=False)
    pseudonymize = serializers.BooleanField(
        default=False, required=False,
        help_text="Replace annotators' names by pseudonyms stable within this study (HMAC keyed by the "
                  "site's SECRET_KEY).")


class ImportInputSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="CSV or JSON Lines in the export's columns; the name's extension "
                                           "(.csv, .jsonl) says which.")


class ImportResultSerializer(serializers.Serializer):
    study = serializers.IntegerField()
    imported = serializers.IntegerField()


class UploadRowErrorSerializer(serializers.Serializer):
    line = serializers.IntegerField(allow_null=True, help_text="1-based line of the file (the CSV header is 1).")
    index = serializers.IntegerField(allow_null=True, help_text="Element of a JSON list, when the file is one.")
    field = serializers.CharField(allow_null=True)
    message = serializers.CharField()


class UploadErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
    errors = UploadRowErrorSerializer(many=True)
    total = serializers.IntegerField(help_text="Errors found; at most 50 are listed.")


# --- the audit log ------------------------------------------------------------------------


class AuditEntrySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    at = serializers.DateTimeField()
    actor = serializers.CharField()
    actor_id = serializers.IntegerField(allow_null=True)
    action = serializers.CharField()
    action_label = serializers.CharField()
    target = serializers.CharField()
    detail = serializers.DictField()


class AuditPageSerializer(serializers.Serializer):
    study = serializers.IntegerField()
    count = serializers.IntegerField()
    page = serializers.IntegerField()
    pages = serializers.IntegerField()
    entries = AuditEntrySerializer(many=True)
