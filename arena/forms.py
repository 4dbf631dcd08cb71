from __future__ import annotations

from django import forms

from annotation import usertext
from annotation.forms import TextField
from metrics import judge as judge_math

from .models import Judge


class JudgeForm(forms.Form):
    """An LLM judge: its kind, a spec like a candidate's and the rubric it is asked with."""

    name = TextField(max_length=200)
    kind = forms.ChoiceField(choices=Judge.Kind.choices, required=False, initial=Judge.Kind.PAIRWISE,
                             error_messages={"invalid_choice": "kind: %(value)s is not a judge kind; use pairwise "
                                                               "or likert."},
                             help_text="Pairwise judges answer the study's pairs; Likert judges rate each output "
                                       "on each Likert criterion of the study.")
    backend = forms.ChoiceField(choices=Judge.Backend.choices)
    spec = TextField(widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false"}), max_length=10_000,
                     help_text='JSON, as for a candidate: {"base_url": ..., "model": ..., "api_key_env": '
                               '"EVALSITE_KEY_..."} or {"model": "/models/..."}.')
    rubric = TextField(widget=forms.Textarea(attrs={"rows": 12}), max_length=20_000, required=False,
                       help_text="Leave empty for the default rubric of the kind (shown below). Pairwise: must "
                                 "hold {prompt}, {output_1} and {output_2}; the reply must end with a line "
                                 "VERDICT: 1, VERDICT: 2 or VERDICT: tie. Likert: must hold {prompt}, {output}, "
                                 "{criterion} and {scale} ({description} optional); the reply must end with a "
                                 "line SCORE: <integer on the scale>.")
    max_new_tokens = forms.IntegerField(min_value=1, max_value=32768, initial=512)

    def clean_kind(self) -> str:
        return self.cleaned_data.get("kind") or Judge.Kind.PAIRWISE

    def clean(self):
        data = super().clean()
        rubric, kind = data.get("rubric") or "", data.get("kind")
        if kind and rubric.strip():
            try:
                judge_math.check_rubric(rubric, kind)
            except ValueError as exc:
                self.add_error("rubric", str(exc))
        return data

    def clean_spec(self) -> dict:
        try:  # bounded depth, storable strings, as a candidate's spec (annotation.forms.CandidateForm)
            value = usertext.loads(self.cleaned_data["spec"].strip() or "{}")
        except usertext.JSONTextError as exc:
            raise forms.ValidationError(f"spec{exc}" if str(exc).startswith("[") else f"spec {exc}") from None
        if not isinstance(value, dict):
            raise forms.ValidationError("spec must be a JSON object")
        return value


class JudgeEditForm(forms.Form):
    """A judge's rubric, spec and reply length, edited while it has no verdict or score; its name,
    kind and backend stay (``kind`` checks the rubric's placeholders as :class:`JudgeForm` does)."""

    spec = JudgeForm.base_fields["spec"]
    rubric = JudgeForm.base_fields["rubric"]
    max_new_tokens = JudgeForm.base_fields["max_new_tokens"]
    clean_spec = JudgeForm.clean_spec

    def __init__(self, *args, kind: str = Judge.Kind.PAIRWISE, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.kind = kind

    def clean(self):
        data = super().clean()
        rubric = data.get("rubric") or ""
        if rubric.strip():
            try:
                judge_math.check_rubric(rubric, self.kind)
            except ValueError as exc:
                self.add_error("rubric", str(exc))
        return data
