import json

from django import forms
from django.contrib.auth import get_user_model

from arena import outcomes

from .models import Candidate

User = get_user_model()


class StudyCreateForm(forms.Form):
    name = forms.CharField(max_length=200)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    prompts = forms.FileField(help_text="CSV or JSONL with id, prompt, optional reference and tags.")
    overlap = forms.IntegerField(min_value=1, max_value=20, initial=1, help_text="Annotators per pair.")
    max_new_tokens = forms.IntegerField(min_value=1, max_value=8192, initial=128)
    temperature = forms.FloatField(min_value=0.0, max_value=5.0, initial=0.0, help_text="0 = greedy.")
    seed = forms.IntegerField(initial=0)
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

    def generation_settings(self) -> dict:
        d = self.cleaned_data
        return {"max_new_tokens": d["max_new_tokens"], "temperature": d["temperature"], "seed": d["seed"]}


class StudySettingsForm(forms.Form):
    overlap = forms.IntegerField(min_value=1, max_value=20, help_text="Annotators per pair (new and open pairs).")
    adaptive_sampling = forms.BooleanField(required=False)


class CandidateForm(forms.Form):
    name = forms.CharField(max_length=200)
    backend = forms.ChoiceField(choices=Candidate.Backend.choices)
    spec = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false"}),
        required=False,
        help_text='JSON, e.g. {"model": "/models/my-llm"} or '
        '{"base_url": "http://127.0.0.1:8001/v1", "model": "llama3", "api_key_env": "VLLM_KEY"}',
    )
    outputs = forms.FileField(required=False, help_text="Imported candidates: JSONL with prompt_id, output.")

    def clean_spec(self) -> dict:
        raw = self.cleaned_data["spec"].strip() or "{}"
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"spec is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
        if not isinstance(value, dict):
            raise forms.ValidationError("spec must be a JSON object")
        return value

    def clean(self):
        data = super().clean()
        if data.get("backend") == Candidate.Backend.IMPORTED and not data.get("outputs"):
            self.add_error("outputs", "an imported candidate needs its outputs file")
        return data


class MemberForm(forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=[("annotator", "Annotator"), ("manager", "Manager"), ("evaluator", "Evaluator")])
    group = forms.CharField(max_length=100, required=False)

    def clean_username(self):
        name = self.cleaned_data["username"].strip()
        user = User.objects.filter(username=name).first()
        if user is None:
            raise forms.ValidationError(f"no user named {name!r}")
        return user


class JudgmentForm(forms.Form):
    choice = forms.ChoiceField(choices=[(c, c) for c in outcomes.CHOICES])
    rationale = forms.CharField(required=False, max_length=5000)
    active_ms = forms.IntegerField(required=False, min_value=0)
