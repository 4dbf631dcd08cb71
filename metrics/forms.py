from __future__ import annotations

from django import forms

from . import text


class MetricRunForm(forms.Form):
    metric = forms.ChoiceField(choices=())
    model = forms.CharField(required=False, max_length=1000,
                            help_text="bertscore, perplexity, nli, hallucination_rate: a local model directory inside a model root "
                                      "(EVALSITE_MODEL_ROOTS). Required, except for bertscore "
                                      "(empty: the shipped all-MiniLM-L6-v2).")
    threshold = forms.FloatField(required=False, min_value=0.0, max_value=1.0,
                                 help_text="hallucination_rate: an output under this entailment probability counts as a hallucination.")
    premise = forms.ChoiceField(required=False, choices=[("", "(default: reference)"),
                                                         *((p, p) for p in text.NLI_PREMISES)],
                                help_text="nli, hallucination_rate: what each output is checked against, its "
                                          "prompt's reference or the prompt itself (the source text).")

    reference = forms.CharField(required=False, max_length=100,
                                help_text="fid, kid: the name of one of the study's reference sets (lower is better).")
    architecture = forms.CharField(required=False, max_length=100,
                                   help_text="clip_score, clip_retrieval: the open_clip architecture of the weights "
                                             "file given as model (default ViT-B-32).")
    k = forms.IntegerField(required=False, min_value=1, max_value=100_000,
                           help_text="clip_retrieval: how many of the study's prompts an image may rank above its own "
                                     "and still count as found (recall@K; default 1).")

    def __init__(self, *args, **kwargs):
        from .services import IMAGE_METRICS

        super().__init__(*args, **kwargs)
        self.fields["metric"].choices = [(m, m) for m in (*text.TEXT_METRICS, *IMAGE_METRICS)]

    def options(self) -> dict:
        d = self.cleaned_data
        return {k: d[k] for k in ("model", "threshold", "premise", "reference", "architecture", "k") if d.get(k) not in (None, "")}


class SummaryBudgetForm(forms.Form):
    """The budget the summary's recommendation keeps to (blank: no limit)."""

    max_cost_per_1000 = forms.FloatField(required=False, min_value=0, label="Most cost per 1,000 outputs")
    max_latency_p95_ms = forms.FloatField(required=False, min_value=0, label="Most p95 latency (ms)")


class ReferenceSetForm(forms.Form):
    """A reference set: a name and a zip of PNG, JPEG or WEBP images."""

    name = forms.CharField(max_length=100, help_text="Letters, digits, spaces, dots, dashes, underscores.")
    archive = forms.FileField(help_text="A .zip of PNG, JPEG or WEBP images (no folders of other files, no "
                                        "archives inside).")
