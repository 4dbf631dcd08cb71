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
