from __future__ import annotations

from django import forms

from annotation import usertext
from annotation.forms import TextField
from metrics import judge as judge_math

from .models import Judge


class JudgeForm(forms.Form):
    """An LLM judge: a spec like a candidate's and the rubric it is asked with."""

    name = TextField(max_length=200)
    backend = forms.ChoiceField(choices=Judge.Backend.choices)
    spec = TextField(widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false"}), max_length=10_000,
                     help_text='JSON, as for a candidate: {"base_url": ..., "model": ..., "api_key_env": '
                               '"EVALSITE_KEY_..."} or {"model": "/models/..."}.')
    rubric = TextField(widget=forms.Textarea(attrs={"rows": 12}), max_length=20_000, required=False,
                       initial=judge_math.DEFAULT_RUBRIC,
                       help_text="Must hold {prompt}, {output_1} and {output_2}; the reply must end with "
                                 "a line VERDICT: 1, VERDICT: 2 or VERDICT: tie.")
    max_new_tokens = forms.IntegerField(min_value=1, max_value=32768, initial=512)

    def clean_spec(self) -> dict:
        try:  # bounded depth, storable strings, as a candidate's spec (annotation.forms.CandidateForm)
            value = usertext.loads(self.cleaned_data["spec"].strip() or "{}")
        except usertext.JSONTextError as exc:
            raise forms.ValidationError(f"spec{exc}" if str(exc).startswith("[") else f"spec {exc}") from None
        if not isinstance(value, dict):
            raise forms.ValidationError("spec must be a JSON object")
        return value
