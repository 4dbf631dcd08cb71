"""What the demo study is made of; shared by `load_demo`, `runall` and the tests."""
from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent / "demo"
DEMO_PROMPTS = DEMO_DIR / "support_prompts.csv"
DEMO_IMPORTED = DEMO_DIR / "imported_outputs.jsonl"
DEMO_STUDY_NAME = "Customer-support assistants (demo)"

# (username, role, password) — demo only; `load_demo` refuses to run with DEBUG off.
DEMO_USERS = [
    ("evaluator", "evaluator", "evaluator-demo"),
    ("manager", "manager", "manager-demo"),
    ("annotator1", "annotator", "annotator1-demo"),
    ("annotator2", "annotator", "annotator2-demo"),
    ("annotator3", "annotator", "annotator3-demo"),
]

# Tiny models built from configs on first run: (name, kind, seed). Their text is gibberish.
DEMO_MODELS = [
    ("tiny-gpt-a", "causal", 1),
    ("tiny-gpt-b", "causal", 2),
    ("tiny-t5", "seq2seq", 3),
]

# The text-to-image demo: 12 banner briefs, two tiny diffusers pipelines assembled from configs
# (their images are noise: they show the flow, not a model), 3 images per brief, and a small
# generated reference set of "real banners" (coloured shapes) for FID and KID.
BANNER_STUDY_NAME = "Banner concepts (demo)"
BANNER_PROMPTS = DEMO_DIR / "banner_prompts.csv"
BANNER_PIPELINES = [("tiny-diffusion-a", 11), ("tiny-diffusion-b", 12)]  # (name, seed)
BANNER_CRITERIA = [
    {"key": "relevance", "name": "Relevance to the brief", "scale": 5,
     "labels": ["Off brief", "Weak", "Partly", "Mostly", "On brief"]},
    {"key": "creativity", "name": "Creativity", "scale": 5,
     "labels": ["Generic", "Plain", "Fair", "Fresh", "Striking"]},
    {"key": "style", "name": "Style consistency", "scale": 5,
     "labels": ["Clashing", "Uneven", "Fair", "Consistent", "On brand"]},
]
BANNER_TAGS = [
    {"key": "hands", "label": "Hands"},
    {"key": "text_rendering", "label": "Text rendering"},
    {"key": "anatomy", "label": "Anatomy"},
    {"key": "artifacts", "label": "Artifacts"},
    {"key": "off_prompt", "label": "Off-prompt"},
]
BANNER_REFERENCE_IMAGES = 24
