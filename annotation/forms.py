from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.validators import ProhibitNullCharactersValidator

from arena import outcomes

from . import taskconfig, usertext
from .generation.base import GenerationSettings
from .models import Candidate, Skip

User = get_user_model()

# PositiveIntegerField's upper bound on PostgreSQL (and the bound Django checks on SQLite).
MAX_POSITIVE_INT = 2**31 - 1


# --- checks on what people type and upload -------------------------------------------


def validate_user_text(value: str) -> None:
    """Refuse text no database can store (see annotation.usertext)."""
    problem = usertext.text_problem(value)
    if problem:
        raise forms.ValidationError(problem, code="unstorable")


class TextField(forms.CharField):
    """A CharField whose text can be stored: Django's NUL check, replaced by one that also
    refuses lone surrogates and says where the character is."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.validators = [v for v in self.validators if not isinstance(v, ProhibitNullCharactersValidator)]
        self.validators.append(validate_user_text)


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def upload_size_error(upload) -> str | None:
    """Why an uploaded file is too big to read, from its size alone, or ``None``."""
    limit = settings.EVALSITE_UPLOAD_MAX_BYTES
    if upload.size > limit:
        return (f"the file is {_megabytes(upload.size)}; the limit is {_megabytes(limit)} "
                "(EVALSITE_UPLOAD_MAX_BYTES)")
    return None


class UploadField(forms.FileField):
    """A file field that refuses a file over ``EVALSITE_UPLOAD_MAX_BYTES`` before it is read."""

    def validate(self, value) -> None:
        super().validate(value)
        if value:
            error = upload_size_error(value)
            if error:
                raise forms.ValidationError(error, code="too_big")


_CRITERIA_HELP = ('JSON list, e.g. [{"key": "factuality", "name": "Factuality", "scale": 3, '
                  '"labels": ["Wrong", "Partly right", "Right"], "allow_na": true, "level": "ordinal"}] '
                  '(scale 2 to 10, a label per point; optional "level" for agreement: nominal, ordinal (default), '
                  'interval or ratio).')
_TAGS_HELP = 'JSON list, e.g. [{"key": "hands", "label": "Malformed hands"}, {"key": "refused", "label": "Refused"}].'


class TaskSettingsMixin(forms.Form):
    """What annotators are asked; checked whole by annotation.taskconfig (the service does it again)."""

    task_kinds = forms.ChoiceField(choices=[("pairwise", "Blind pairs"), ("likert", "Likert ratings of one output"),
                                            ("both", "Both, mixed")], initial="pairwise", required=False)
    likert_criteria = TextField(widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false"}), required=False,
                                help_text=_CRITERIA_HELP)
    failure_tags = TextField(widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false"}), required=False,
                             help_text=_TAGS_HELP)
    ask_rationale = forms.ChoiceField(choices=[("optional", "Optional"), ("required", "Required"), ("off", "Not asked")],
                                      initial="optional", required=False)

    def _json_list(self, name: str) -> list:
        raw = (self.cleaned_data.get(name) or "").strip() or "[]"
        try:
            value = usertext.loads(raw)
        except usertext.JSONTextError as exc:
            raise forms.ValidationError(f"{name} is not valid JSON: {exc}")
        return value

    def clean(self):
        data = super().clean()
        data["tasks"] = None  # not sent: the study keeps what it asks (blind pairs when created)
        if "task_kinds" in self.data and "task_kinds" in data:
            try:
                data["tasks"] = taskconfig.config_validate(
                    task_kinds=data["task_kinds"] or "pairwise", ask_rationale=data.get("ask_rationale") or "optional",
                    likert_criteria=self._json_list("likert_criteria"), failure_tags=self._json_list("failure_tags"))
            except (taskconfig.ConfigError, forms.ValidationError) as exc:
                message = exc.messages[0] if isinstance(exc, forms.ValidationError) else str(exc)
                field = next((f for f in ("likert_criteria", "failure_tags", "task_kinds", "ask_rationale")
                              if message.startswith(f)), None)
                self.add_error(field, message)
        return data

    @staticmethod
    def initial_for(study) -> dict:
        import json

        return {"task_kinds": study.task_kinds, "ask_rationale": study.ask_rationale,
                "likert_criteria": json.dumps(study.likert_criteria, indent=1) if study.likert_criteria else "",
                "failure_tags": json.dumps(study.failure_tags) if study.failure_tags else ""}


INSTRUCTIONS_MAX_CHARS = 20_000


def instructions_field() -> TextField:
    return TextField(max_length=INSTRUCTIONS_MAX_CHARS, required=False, strip=True,
                     widget=forms.Textarea(attrs={"rows": 6}),
                     help_text="Markdown shown to each annotator before their first task (empty: none).")


class InstructionsForm(forms.Form):
    instructions = instructions_field()


class StudyCreateForm(TaskSettingsMixin, forms.Form):
    name = TextField(max_length=200)
    description = TextField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    prompts = UploadField(help_text="CSV or JSONL with id, prompt, optional reference and tags.")
    overlap = forms.IntegerField(min_value=1, max_value=20, initial=1, help_text="Annotators per pair.")
    max_new_tokens = forms.IntegerField(min_value=1, max_value=GenerationSettings.MAX_NEW_TOKENS, initial=128)
    temperature = forms.FloatField(min_value=0.0, max_value=5.0, initial=0.0, help_text="0 = greedy.")
    seed = forms.IntegerField(min_value=0, max_value=GenerationSettings.MAX_SEED, initial=0)
    adaptive_sampling = forms.BooleanField(
        required=False,
        help_text="Serve next the pairs whose vote most narrows the rating intervals (close ratings, few battles).",
    )
    annotators = forms.ModelMultipleChoiceField(
        queryset=User.objects.filter(is_active=True).order_by("username"), required=False,
        widget=forms.CheckboxSelectMultiple,
    )
    managers = forms.ModelMultipleChoiceField(
        queryset=User.objects.filter(is_active=True).order_by("username"), required=False,
        widget=forms.CheckboxSelectMultiple,
    )
    instructions = instructions_field()

    def generation_settings(self) -> dict:
        d = self.cleaned_data
        return {"max_new_tokens": d["max_new_tokens"], "temperature": d["temperature"], "seed": d["seed"]}


class StudySettingsForm(TaskSettingsMixin, forms.Form):
    overlap = forms.IntegerField(min_value=1, max_value=20, help_text="Annotators per pair (new and open pairs).")
    adaptive_sampling = forms.BooleanField(required=False)


class CandidateForm(forms.Form):
    name = TextField(max_length=200)
    backend = forms.ChoiceField(choices=Candidate.Backend.choices)
    spec = TextField(
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false"}),
        required=False,
        help_text='JSON, e.g. {"model": "/models/my-llm"} (a directory under a model root) or '
        '{"base_url": "http://127.0.0.1:8001/v1", "model": "llama3", "api_key_env": "EVALSITE_KEY_VLLM"}; '
        'text-to-image: {"model": "/models/sd15", "steps": 30, "guidance_scale": 7.5, "width": 512, "height": 512}',
    )
    outputs = UploadField(required=False, help_text="Imported candidates: JSONL with prompt_id, output.")

    def clean_spec(self) -> dict:
        raw = self.cleaned_data["spec"].strip() or "{}"
        try:  # bounded depth, storable strings: the spec is stored as JSON and read by workers
            value = usertext.loads(raw)
        except usertext.JSONTextError as exc:
            raise forms.ValidationError(f"spec{exc}" if str(exc).startswith("[") else f"spec {exc}")
        if not isinstance(value, dict):
            raise forms.ValidationError("spec must be a JSON object")
        return value

    def clean(self):
        data = super().clean()
        if data.get("backend") == Candidate.Backend.IMPORTED and not data.get("outputs"):
            self.add_error("outputs", "an imported candidate needs its outputs file")
        return data


class MemberForm(forms.Form):
    username = TextField(max_length=150)
    role = forms.ChoiceField(choices=[("annotator", "Annotator"), ("manager", "Manager"), ("evaluator", "Evaluator")])
    group = TextField(max_length=100, required=False)

    def clean_username(self):
        name = self.cleaned_data["username"].strip()
        user = User.objects.filter(username=name).first()
        if user is None:
            raise forms.ValidationError(f"no user named {name!r}")
        return user


class SkipForm(forms.Form):
    """Why the annotator skips a task: one of a short list, and their words for "other"."""

    reason = forms.ChoiceField(choices=Skip.Reason.choices)
    note = TextField(max_length=2000, required=False)


class JudgmentForm(forms.Form):
    """A pairwise choice or Likert ratings (``rating_<key>``: a point, or ``na``), tags and a reason.

    Whether the answer fits the task and the study's criteria is the service's check
    (annotation.taskconfig); this form only reads the fields."""

    choice = forms.ChoiceField(choices=[(c, c) for c in outcomes.CHOICES], required=False)
    rationale = TextField(required=False, max_length=5000)
    active_ms = forms.IntegerField(required=False, min_value=0, max_value=MAX_POSITIVE_INT)

    def ratings(self) -> dict | None:
        """The ``rating_<key>`` fields as {key: point or None}; None when there are none."""
        ratings = {}
        for name, value in self.data.items():
            if name.startswith("rating_"):
                value = value.strip()
                ratings[name[len("rating_"):]] = None if value == "na" else int(value) if value.isdigit() else value
        return ratings or None

    def tags(self) -> list[str]:
        return self.data.getlist("tag") if hasattr(self.data, "getlist") else []


# --- invitations, roles, candidates ---------------------------------------------------


class InvitationForm(forms.Form):
    role = forms.ChoiceField(choices=[("annotator", "Annotator"), ("manager", "Manager")])
    group = TextField(max_length=100, required=False, help_text="Optional: a label for the people who join.")
    days = forms.IntegerField(min_value=1, help_text="Days until the link expires.")
    uses = forms.IntegerField(min_value=1, max_value=100_000, initial=1, required=False,
                              help_text="How many people may join through it.")
    crowd = forms.BooleanField(required=False, label="Any number of people (a crowd link)")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        days = self.fields["days"]
        days.initial = settings.EVALSITE_INVITATION_DAYS
        days.max_value = settings.EVALSITE_INVITATION_MAX_DAYS
        days.widget.attrs["max"] = days.max_value
        days.validators.append(_at_most(days.max_value, "EVALSITE_INVITATION_MAX_DAYS"))

    def max_uses(self) -> int | None:
        """None for a crowd link; an empty box means the default, one person."""
        return None if self.cleaned_data["crowd"] else (self.cleaned_data["uses"] or 1)


def _at_most(limit: int, setting: str):
    def check(value) -> None:
        if value is not None and value > limit:
            raise forms.ValidationError(f"a link lasts at most {limit} days ({setting})", code="too_long")
    return check


class MemberChangeForm(forms.Form):
    role = forms.ChoiceField(choices=[("annotator", "Annotator"), ("manager", "Manager"), ("evaluator", "Evaluator")])
    group = TextField(max_length=100, required=False)


class CandidateRenameForm(forms.Form):
    name = TextField(max_length=200)


# --- checks and the qualification quiz ------------------------------------------------


class CheckSettingsForm(forms.Form):
    check_rate = forms.IntegerField(min_value=0, max_value=50, label="Checks among tasks (%)",
                                    help_text="Gold items and attention checks served, looking like any task.")
    gold_pass = forms.IntegerField(min_value=0, max_value=100, label="Flag below (% right)",
                                   help_text="The quality table flags annotators under this share of checks right.")
    quiz_size = forms.IntegerField(min_value=0, max_value=50, label="Quiz questions",
                                   help_text="Gold items asked before a first task; 0: no quiz.")
    quiz_pass = forms.IntegerField(min_value=1, max_value=100, label="Quiz pass mark (%)")
    quiz_attempts = forms.IntegerField(min_value=1, max_value=10, label="Quiz tries")


class CheckUploadForm(forms.Form):
    checks = UploadField(help_text="CSV or JSONL: prompt, a, b, better (a, b or tie); or prompt, candidate and "
                                   "rating:<criterion> (a point or a range such as 4-5). Optional: kind "
                                   "(gold or attention), note, sample.")


class AttentionForm(forms.Form):
    count = forms.IntegerField(min_value=1, max_value=500, initial=10)
    criterion = TextField(max_length=100, required=False,
                          help_text="Likert-only studies: the criterion an off-topic answer must score low on.")
    at_most = forms.IntegerField(min_value=1, max_value=10, required=False,
                                 help_text="Likert-only studies: the highest point it may get.")


class QuizAnswerForm(JudgmentForm):
    """One quiz answer: the fields of a task's answer, and which question it answers."""

    index = forms.IntegerField(min_value=0, max_value=100)
