"""Studies, prompts, candidates, outputs, rating units, assignments and judgments.

Each table's identity is a database constraint, so a re-run task or a repeated POST
cannot create a second row (see shared/ARCHITECTURE.md, "Invariants").
"""
from __future__ import annotations

import hashlib
import uuid
from pathlib import PurePosixPath

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Length

from arena import outcomes


class Study(models.Model):
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    overlap = models.PositiveSmallIntegerField(
        default=1, help_text="How many different annotators judge each unit."
    )
    samples_per_prompt = models.PositiveSmallIntegerField(default=1)
    generation_settings = models.JSONField(default=dict, blank=True)
    adaptive_sampling = models.BooleanField(default=False)
    units_total = models.PositiveIntegerField(
        default=0, help_text="Units built so far (kept by units_build, read by the annotator's progress)."
    )
    version = models.PositiveIntegerField(
        default=0, help_text="Bumped when what counts changes (an exclusion); snapshots of older versions are redone."
    )
    lease_sweep_at = models.DateTimeField(
        null=True, blank=True, help_text="When expired leases are next released (amortised, not per request)."
    )
    # What annotators are asked (annotation.taskconfig validates all four in one place).
    task_kinds = models.CharField(
        max_length=20, default="pairwise",
        help_text="pairwise, likert or both: blind pairs, single outputs rated on criteria, or the two mixed.",
    )
    likert_criteria = models.JSONField(
        default=list, blank=True, help_text="[{key, name, scale, labels, allow_na}]: what a Likert task rates."
    )
    failure_tags = models.JSONField(default=list, blank=True, help_text="[{key, label}]: failure modes to tag.")
    ask_rationale = models.CharField(
        max_length=10, default="optional", help_text="off, optional or required: the free-text rationale."
    )
    instructions = models.TextField(blank=True, help_text="Markdown shown to annotators before their first task.")
    # Rendered once when written (annotation.markdown.render: sanitised), like Prompt.html.
    instructions_html = models.TextField(blank=True, default="", db_default="")
    # Known-answer checks (annotation.checks): gold items and attention checks, served to each
    # annotator at this rate among their tasks, looking like any other task.
    check_rate = models.PositiveSmallIntegerField(
        default=0, help_text="Percent of an annotator's tasks that are gold items or attention checks (0-50)."
    )
    gold_pass = models.PositiveSmallIntegerField(
        default=70, help_text="Percent of checks right below which the quality table flags an annotator."
    )
    # The qualification quiz: quiz_size gold items before the first task; 0 means no quiz.
    quiz_size = models.PositiveSmallIntegerField(default=0)
    quiz_pass = models.PositiveSmallIntegerField(default=80, help_text="Percent right to pass the quiz.")
    quiz_attempts = models.PositiveSmallIntegerField(default=2, help_text="How many times the quiz may be taken.")
    # Adjudication (annotation.adjudication): units reserved for a named expert.  The lease looks for
    # them only while this is above zero, so studies without adjudication pay nothing on the vote path.
    adjudications_open = models.PositiveIntegerField(
        default=0, db_default=0, help_text="Units reserved for an expert whose verdict has not come in yet."
    )

    class RatingsMode(models.TextChoices):
        ALL = "all", "All annotators counted"
        EXCLUDE_FLAGGED = "exclude_flagged", "Flagged annotators left out"
        COMPETENCE = "competence", "Weighted by annotator competence (Dawid-Skene)"

    ratings_mode = models.CharField(
        max_length=20, choices=RatingsMode.choices, default=RatingsMode.ALL, db_default=RatingsMode.ALL,
        help_text="Whose judgments count in ratings and Likert means, and how much (arena.modes).",
    )

    class Meta:
        verbose_name_plural = "studies"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name


class StudyMember(models.Model):
    class Role(models.TextChoices):
        EVALUATOR = "evaluator", "Evaluator"
        ANNOTATOR = "annotator", "Annotator"
        MANAGER = "manager", "Manager"

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="members")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="study_memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    group = models.CharField(max_length=100, blank=True)
    excluded = models.BooleanField(
        default=False, help_text="Excluded annotators keep their judgments; aggregates skip them."
    )
    done = models.PositiveIntegerField(default=0, help_text="Judgments this member has submitted (a counter).")
    instructions_seen_at = models.DateTimeField(
        null=True, blank=True, help_text="When the annotator pressed Start on the study's instructions page."
    )
    qualified_at = models.DateTimeField(
        null=True, blank=True, help_text="When the annotator passed the study's qualification quiz."
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["study", "user"], name="member_unique_per_study")
        ]

    def __str__(self) -> str:
        return f"{self.user} ({self.role}) in {self.study}"


class Invitation(models.Model):
    """A link that lets whoever opens it join a study in one role (annotator or manager).

    Only the SHA-256 of the link's token is stored, so the link is shown once, when it is
    created.  ``uses`` counts the people who joined through it; it moves by a conditional
    UPDATE (``uses < max_uses``), whose row count decides who gets the last place.
    ``max_uses`` empty: any number of people (a crowd link).
    """

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="invitations")
    role = models.CharField(max_length=16, choices=[(r.value, r.label) for r in
                                                    (StudyMember.Role.ANNOTATOR, StudyMember.Role.MANAGER)])
    group = models.CharField(max_length=100, blank=True)
    token_hash = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    max_uses = models.PositiveIntegerField(null=True, blank=True, help_text="Empty: any number of people.")
    uses = models.PositiveIntegerField(default=0)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(max_uses__isnull=True) | Q(uses__lte=F("max_uses")),
                                   name="invitation_uses_within_limit"),
        ]

    def __str__(self) -> str:
        return f"invitation {self.pk} ({self.role}) to {self.study}"

    @staticmethod
    def hash_token(token: str) -> str:
        """What is stored of a link's token: its SHA-256 (256 random bits need no salt)."""
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()

    def state(self, now) -> str:
        """"open", or why the link can no longer be used: "revoked", "expired" or "used up"."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= now:
            return "expired"
        if self.max_uses is not None and self.uses >= self.max_uses:
            return "used up"
        return "open"


class Prompt(models.Model):
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="prompts")
    external_id = models.CharField(max_length=200)
    text = models.TextField()
    # ``text`` as sanitised HTML (annotation.markdown.render), written with the text: pages print it as
    # is.  Empty means "not rendered yet" (the page renders the text); db_default for raw COPY (bench/).
    html = models.TextField(blank=True, default="", db_default="")
    reference = models.TextField(blank=True)
    tags = models.JSONField(default=list, blank=True)
    image = models.CharField(max_length=500, blank=True)
    is_gold = models.BooleanField(default=False)
    gold_answer = models.TextField(blank=True)
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["study", "position"]
        constraints = [
            models.UniqueConstraint(
                fields=["study", "external_id"], name="prompt_unique_external_id"
            )
        ]

    def __str__(self) -> str:
        return self.external_id


class PromptTag(models.Model):
    """One tag of a prompt, as a row so leaderboards can slice by tag in SQL on any database."""

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="tag_rows")
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="+")
    tag = models.CharField(max_length=100)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["prompt", "tag"], name="prompt_tag_unique")]
        indexes = [models.Index(fields=["study", "tag"])]

    def __str__(self) -> str:
        return self.tag


class Candidate(models.Model):
    class Backend(models.TextChoices):
        TRANSFORMERS = "transformers", "Hugging Face transformers"
        OPENAI = "openai", "OpenAI-compatible endpoint"
        DIFFUSERS = "diffusers", "Diffusers text-to-image pipeline"
        OPENAI_IMAGES = "openai_images", "OpenAI-compatible images endpoint"
        IMPORTED = "imported", "Imported outputs"

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="candidates")
    name = models.CharField(max_length=200)
    backend = models.CharField(max_length=20, choices=Backend.choices)
    spec = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Check(models.TextChoices):
        """Whether the spec's model path was seen on a machine that will load it."""

        NOT_NEEDED = "", "Not needed"  # nothing to look for (an endpoint, imported outputs)
        PENDING = "pending", "Waiting for a worker to look"
        OK = "ok", "Found"
        FAILED = "failed", "Not usable"

    check_state = models.CharField(max_length=10, choices=Check.choices, default=Check.NOT_NEEDED, blank=True)
    check_error = models.TextField(blank=True)
    checked_at = models.DateTimeField(null=True, blank=True)
    hidden = models.BooleanField(
        default=False,
        help_text="Hidden from new pairs: its units are closed (needed = 0); its judgments and ratings stay.",
    )

    class Meta:
        ordering = ["study", "name"]
        constraints = [
            models.UniqueConstraint(fields=["study", "name"], name="candidate_unique_name")
        ]

    def __str__(self) -> str:
        return self.name


def output_image_path(instance, filename: str) -> str:
    """Where an output's image is stored: an opaque random name under the study, so neither the
    path nor the URL says which candidate made it (blind means blind)."""
    return f"outputs/{instance.study_id}/{uuid.uuid4().hex}{_image_suffix(filename)}"


def output_thumbnail_path(instance, filename: str) -> str:
    return f"outputs/{instance.study_id}/thumbs/{uuid.uuid4().hex}{_image_suffix(filename)}"


def _image_suffix(filename: str) -> str:
    suffix = PurePosixPath(filename).suffix.lower()
    return suffix if suffix in (".png", ".jpg", ".jpeg", ".webp") else ".png"


class Output(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="outputs")
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="outputs")
    candidate = models.ForeignKey(Candidate, on_delete=models.CASCADE, related_name="outputs")
    sample_index = models.PositiveSmallIntegerField(default=0)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    text = models.TextField(blank=True)
    # ``text`` as sanitised HTML (annotation.markdown.render), written with the text: pages print it as
    # is.  Empty means "not rendered yet" (the page renders the text); db_default for raw COPY (bench/).
    html = models.TextField(blank=True, default="", db_default="")
    # Kept by the database, so leaderboards read lengths without moving the texts around.
    text_chars = models.GeneratedField(
        expression=Length("text"), output_field=models.PositiveIntegerField(), db_persist=True
    )
    error = models.TextField(blank=True)
    latency_ms = models.FloatField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    cost = models.FloatField(null=True, blank=True)
    seed = models.BigIntegerField(null=True, blank=True)
    settings = models.JSONField(default=dict, blank=True)
    # A text-to-image output: the image through Django's storage (media root, or S3-compatible
    # storage when several machines share the work) and its thumbnail, made once with it.  Both
    # are indexed: the image view finds the output from the opaque name in its URL.
    image = models.FileField(upload_to=output_image_path, max_length=300, blank=True, default="", db_default="",
                             db_index=True)
    thumbnail = models.FileField(upload_to=output_thumbnail_path, max_length=300, blank=True, default="",
                                 db_default="", db_index=True)
    claim = models.CharField(
        max_length=64, blank=True, help_text="Id of the task run that holds this output."
    )
    claimed_at = models.DateTimeField(null=True, blank=True)
    # Which worker start holds the output (WorkerHeartbeat.worker_id), from receiving its batch
    # to finishing it: freed as soon as that worker is gone, not only after the task time limit.
    claimed_by = models.CharField(max_length=40, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Identity(models.TextChoices):
        """The evaluator's decision on an output that names a model or maker (annotation.identity)."""

        UNCHECKED = "", "Not checked yet"
        CLEAN = "clean", "Names no model"
        FLAGGED = "flagged", "Names a model: awaiting a decision"
        KEPT = "kept", "Kept"
        EXCLUDED = "excluded", "Excluded from pairs"

    identity = models.CharField(max_length=10, choices=Identity.choices, default=Identity.UNCHECKED, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["study", "prompt", "candidate", "sample_index"],
                name="output_unique_per_sample",
            )
        ]
        indexes = [
            models.Index(fields=["study", "status"]),
            # the workers' sweep for stale claims reads, across studies, only the running outputs
            # and the queued ones a worker has received: two small partial indexes
            models.Index(fields=["claimed_at"], condition=Q(status="running"), name="output_running_claimed"),
            models.Index(fields=["claimed_by"], condition=Q(status="queued") & ~Q(claimed_by=""),
                         name="output_queued_received"),
            # the identity guard's list and the study page's count read only outputs awaiting a decision
            models.Index(fields=["study", "identity"], condition=Q(identity__in=["", "flagged"]),
                         name="output_identity_open"),
        ]

    def __str__(self) -> str:
        return f"{self.candidate} on {self.prompt} #{self.sample_index}"


class WorkerHeartbeat(models.Model):
    """One start of a Celery worker: registered at start, beaten while it lives.

    A worker that stops beating for ``EVALSITE_WORKER_DEAD_SECONDS``, stops cleanly, or is
    replaced by a new start under the same node name (Celery node names are unique among
    live workers) is gone; the other workers free the outputs it held.
    """

    worker_id = models.CharField(max_length=40, unique=True)
    nodename = models.CharField(max_length=200)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    beat_at = models.DateTimeField()
    stopped_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.nodename} pid {self.pid} ({self.worker_id})"


class Unit(models.Model):
    """One thing to judge: a pair of outputs for one prompt (``output_a.id < output_b.id``).

    ``taken`` counts the places held: judgments and unreleased leases of annotators who
    are not excluded.  It changes only by conditional UPDATE (``taken < needed``), so the
    row count decides a lease and a unit is never taken beyond ``needed``.  The candidate
    pair is copied here (``cand_lo < cand_hi``, ``a_is_lo`` says which is ``output_a``'s)
    so leasing and aggregation never join the outputs.
    """

    class Kind(models.TextChoices):
        PAIRWISE = "pairwise", "Blind pairwise"
        LIKERT = "likert", "Likert ratings of one output"

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="units")
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.PAIRWISE)
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="units")
    output_a = models.ForeignKey(Output, on_delete=models.CASCADE, related_name="+")
    # A Likert unit is about output_a alone: output_b and cand_hi are empty, cand_lo is its candidate.
    output_b = models.ForeignKey(Output, on_delete=models.CASCADE, related_name="+", null=True, blank=True)
    needed = models.PositiveSmallIntegerField(default=1)
    taken = models.PositiveSmallIntegerField(default=0)
    extra = models.PositiveSmallIntegerField(
        default=0, db_default=0,
        help_text="Places asked beyond the study's overlap by adjudication (kept when the overlap changes).",
    )
    cand_lo = models.ForeignKey(Candidate, on_delete=models.CASCADE, related_name="+", db_index=False)
    cand_hi = models.ForeignKey(Candidate, on_delete=models.CASCADE, related_name="+", db_index=False,
                                null=True, blank=True)
    a_is_lo = models.BooleanField(help_text="Whether output_a belongs to cand_lo.")
    pair_seq = models.PositiveIntegerField(
        default=0, help_text="Position among the units of its candidate pair; its parity balances the sides."
    )
    shuffle = models.IntegerField(default=0, help_text="A random key: open units are served in this order.")
    is_gold = models.BooleanField(
        default=False,
        help_text="A known-answer check (gold item or attention check): created closed (needed = 0), served "
                  "at the study's check rate once to each annotator, never counted in ratings or summaries.",
    )
    # A check's known answer (metrics.gold): {"kind": "gold"|"attention", "better": "a"|"b"|"tie"} for a
    # pair (in terms of output_a/output_b), or {"kind": ..., "ratings": {criterion: [low, high]}}; "note"
    # is the evaluator's reason, shown in the quiz's feedback.
    expected = models.JSONField(null=True, blank=True)
    rule_tie = models.BooleanField(
        default=False,
        help_text="The two outputs are identical or nearly so (EVALSITE_NEAR_IDENTICAL): recorded as a tie "
                  "by rule, created closed (needed = 0) and never served.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["study", "kind", "output_a", "output_b"], name="unit_unique_pair"
            ),
            models.CheckConstraint(
                condition=Q(output_a__lt=F("output_b")), name="unit_pair_ordered"
            ),
            models.CheckConstraint(condition=Q(cand_lo__lt=F("cand_hi")), name="unit_candidates_ordered"),
            # one Likert unit per output; a check may show an output again (an attention check
            # shows another prompt's output)
            models.UniqueConstraint(fields=["study", "output_a"], condition=Q(kind="likert", is_gold=False),
                                    name="unit_unique_likert"),
            models.CheckConstraint(
                condition=Q(kind="likert", output_b__isnull=True, cand_hi__isnull=True)
                | (~Q(kind="likert") & Q(output_b__isnull=False, cand_hi__isnull=False)),
                name="unit_single_or_pair",
            ),
        ]
        indexes = [
            # the units still open, fewest places taken first: what a lease scans
            models.Index(
                fields=["study", "taken", "shuffle"], condition=Q(taken__lt=F("needed")), name="unit_open"
            ),
            # the same per candidate pair, for adaptive sampling
            models.Index(
                fields=["study", "cand_lo", "cand_hi", "taken", "shuffle"],
                condition=Q(taken__lt=F("needed")), name="unit_open_pair",
            ),
            # the study's checks, which a check lease scans (few: tens, not thousands)
            models.Index(fields=["study", "shuffle"], condition=Q(is_gold=True), name="unit_check"),
        ]

    def __str__(self) -> str:
        return f"unit {self.pk} ({self.kind})"


class Assignment(models.Model):
    """An annotator's lease on a unit; the browser only ever sees ``token``.

    It holds a place on its unit (``Unit.taken``) from the lease until it is released
    (expired and swept, or its annotator excluded); a submitted one holds it for good.
    An annotator has at most one open lease per study and slot (the task on screen, and the
    next one fetched ahead by the page), which the database enforces.
    """

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="+")
    unit = models.ForeignKey(Unit, on_delete=models.CASCADE, related_name="assignments")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments"
    )
    token = models.CharField(max_length=43, unique=True)
    left_is_a = models.BooleanField(help_text="Whether unit.output_a is shown on the left.")
    leased_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    submitted_at = models.DateTimeField(null=True, blank=True)
    released = models.BooleanField(default=False, help_text="Its place on the unit was given back.")
    slot = models.PositiveSmallIntegerField(
        default=0, db_default=0,
        help_text="0: the task on screen; 1: the next task, fetched ahead so that a vote shows it at once.",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["unit", "annotator"], name="assignment_unique_per_annotator"
            ),
            # one open lease per slot: the task on screen and the one fetched ahead
            models.UniqueConstraint(
                fields=["study", "annotator", "slot"], condition=Q(submitted_at__isnull=True, released=False),
                name="assignment_one_open_lease",
            ),
        ]
        indexes = [
            models.Index(fields=["annotator", "submitted_at"]),
            models.Index(
                fields=["study", "expires_at"], condition=Q(submitted_at__isnull=True, released=False),
                name="assignment_open_expiry",
            ),
        ]

    def __str__(self) -> str:
        return f"assignment {self.pk}"


class Judgment(models.Model):
    """A submitted pairwise verdict, stored in terms of outputs, not screen sides."""

    # The stored spellings and their codes live in arena.outcomes.
    Outcome = models.TextChoices(
        "Outcome", [(name.upper(), (name, label)) for name, label in zip(outcomes.STORED, outcomes.LABELS)]
    )

    assignment = models.OneToOneField(
        Assignment, on_delete=models.CASCADE, related_name="judgment"
    )
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="judgments")
    unit = models.ForeignKey(Unit, on_delete=models.CASCADE, related_name="judgments")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="judgments"
    )
    outcome = models.CharField(max_length=10, choices=Outcome.choices, blank=True)
    left_is_a = models.BooleanField()
    rationale = models.TextField(blank=True)
    # Likert: {criterion key: point, or null for "not applicable"}; null on pairwise judgments,
    # whose outcome is set (a Likert judgment's outcome is empty).
    ratings = models.JSONField(null=True, blank=True)
    tags = models.JSONField(null=True, blank=True, help_text="Failure-mode tag keys chosen (any kind of task).")
    served_at = models.DateTimeField()
    submitted_at = models.DateTimeField(auto_now_add=True)
    active_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["study", "submitted_at"])]

    def __str__(self) -> str:
        return f"judgment {self.pk}: {self.outcome}"


class Skip(models.Model):
    """An annotator passed on a task, with a reason.  Not a judgment: ratings and progress
    never count it.  Its assignment is closed and released (``submitted_at`` set,
    ``released`` true): the place went back to the unit, and the lease statements never
    serve that unit to the same annotator again."""

    class Reason(models.TextChoices):
        CANT_JUDGE = "cant_judge", "Can't judge"
        OFFENSIVE = "offensive", "Offensive"
        BROKEN = "broken", "Broken output"
        OTHER = "other", "Other"

    assignment = models.OneToOneField(Assignment, on_delete=models.CASCADE, related_name="skip")
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="skips")
    unit = models.ForeignKey(Unit, on_delete=models.CASCADE, related_name="skips")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    reason = models.CharField(max_length=12, choices=Reason.choices)
    note = models.TextField(blank=True, help_text="The annotator's words (asked for with “other”).")
    skipped_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["study", "skipped_at"], name="annotation_skip_study_at")]

    def __str__(self) -> str:
        return f"skip {self.pk}: {self.reason}"


class Adjudication(models.Model):
    """A unit reserved for a named expert (annotation.adjudication.units_send_to_expert).

    The expert is served it before any other task; their verdict is an ordinary Judgment of
    (unit, expert), found through this row, so it counts as one more judgment in ratings and
    summaries, and the judgments before it are never changed.  ``closed_at`` is filled when the
    expert's lease next finds the unit answered or skipped.
    """

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="adjudications")
    unit = models.ForeignKey(Unit, on_delete=models.CASCADE, related_name="adjudications")
    expert = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                     related_name="+")
    requested_at = models.DateTimeField()
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["unit", "expert"], name="adjudication_unique_per_expert")]
        indexes = [models.Index(fields=["study", "expert"], condition=Q(closed_at__isnull=True),
                                name="adjudication_open")]

    def __str__(self) -> str:
        return f"adjudication of unit {self.unit_id} by {self.expert_id}"


class QuizAttempt(models.Model):
    """One go at a study's qualification quiz: ``quiz_size`` gold items in a fixed order.

    ``items`` are the gold units asked, ``sides`` whether each one's output_a is shown on the
    left, and ``answers`` what was answered, item by item ({"answer", "correct"}).  Quiz answers
    are not judgments: they count for nothing but the quiz.  ``passed`` is set when the last
    item is answered.
    """

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="quiz_takes")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    number = models.PositiveSmallIntegerField()
    items = models.JSONField(default=list)
    sides = models.JSONField(default=list)
    answers = models.JSONField(default=list)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    passed = models.BooleanField(null=True, blank=True)

    class Meta:
        ordering = ["study", "user", "number"]
        constraints = [models.UniqueConstraint(fields=["study", "user", "number"], name="quiz_attempt_unique")]

    def __str__(self) -> str:
        return f"quiz attempt {self.number} of {self.user} in {self.study}"


class AuditEntry(models.Model):
    """One change to a study: who made it, when, and what (read by the study's evaluators).

    Written by the services that make the change, in the same transaction; never edited.
    ``actor_name`` keeps the name if the account is later deleted.
    """

    class Action(models.TextChoices):
        STUDY_CREATED = "study_created", "Study created"
        SETTINGS_CHANGED = "settings_changed", "Settings changed"
        CANDIDATE_ADDED = "candidate_added", "Candidate added"
        SPEC_CHANGED = "spec_changed", "Candidate spec changed"
        MEMBER_ADDED = "member_added", "Member added"
        MEMBER_REMOVED = "member_removed", "Member removed"
        MEMBER_EXCLUDED = "member_excluded", "Annotator excluded"
        MEMBER_READMITTED = "member_readmitted", "Annotator re-admitted"
        PROMPTS_ADDED = "prompts_added", "Prompts added"
        OUTPUTS_IMPORTED = "outputs_imported", "Outputs imported"
        GENERATION_STARTED = "generation_started", "Generation started"
        OUTPUTS_RETRIED = "outputs_retried", "Outputs retried"
        MEMBER_ROLE_CHANGED = "member_role_changed", "Member's role changed"
        MEMBER_GROUP_CHANGED = "member_group_changed", "Member's group changed"
        INVITATION_CREATED = "invitation_created", "Invitation created"
        INVITATION_ACCEPTED = "invitation_accepted", "Invitation accepted"
        INVITATION_REVOKED = "invitation_revoked", "Invitation revoked"
        CANDIDATE_RENAMED = "candidate_renamed", "Candidate renamed"
        CANDIDATE_REMOVED = "candidate_removed", "Candidate removed"
        CANDIDATE_HIDDEN = "candidate_hidden", "Candidate hidden from new pairs"
        CANDIDATE_SHOWN = "candidate_shown", "Candidate shown in new pairs again"
        JUDGMENTS_IMPORTED = "judgments_imported", "Judgments imported"
        OUTPUT_IDENTITY_KEPT = "output_identity_kept", "Output naming a model kept"
        OUTPUT_IDENTITY_EXCLUDED = "output_identity_excluded", "Output naming a model excluded"
        CHECKS_ADDED = "checks_added", "Gold items or attention checks added"
        CHECK_REMOVED = "check_removed", "Check removed"
        CHECK_SETTINGS_CHANGED = "check_settings_changed", "Check and quiz settings changed"
        UNITS_SENT_FOR_MORE = "units_sent_for_more", "Units sent to more annotators"
        UNITS_SENT_TO_EXPERT = "units_sent_to_expert", "Units sent to an expert"
        RATINGS_MODE_CHANGED = "ratings_mode_changed", "Ratings mode changed"
        REFERENCE_SET_ADDED = "reference_set_added", "Reference image set added"
        REFERENCE_SET_REMOVED = "reference_set_removed", "Reference image set removed"
        JUDGE_CHANGED = "judge_changed", "LLM judge's rubric or spec changed"

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="audit_entries")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                              related_name="+")
    actor_name = models.CharField(max_length=150, blank=True)
    at = models.DateTimeField(auto_now_add=True)
    action = models.CharField(max_length=32, choices=Action.choices)
    target = models.CharField(max_length=200, blank=True, help_text="What changed: a candidate, a member...")
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["study", "-at"], name="audit_study_at")]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.actor_name or '-'} {self.action} {self.target}"
