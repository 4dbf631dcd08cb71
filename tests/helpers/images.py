"""Image studies for tests: outputs made directly as Pillow PNGs (no generation needed).

``make_image_study`` creates a study whose candidates are imported and whose outputs are
finished images (status done, ``image`` and ``thumbnail`` saved through Django's storage,
``text`` empty), one solid colour per candidate with the sample index drawn in a corner, then
builds the units.  Other test modules may reuse it (failure pages, metrics).
"""
from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence

from django.core.files.base import ContentFile
from django.utils import timezone

from annotation import services
from annotation.models import Candidate, Output, Study

# The suggested failure modes of a text-to-image study (README, "Rating images").
DEFAULT_FAILURE_TAGS = [
    {"key": "hands", "label": "Hands"},
    {"key": "text_rendering", "label": "Text rendering"},
    {"key": "anatomy", "label": "Anatomy"},
    {"key": "artifacts", "label": "Artifacts"},
    {"key": "off_prompt", "label": "Off-prompt"},
]
DEFAULT_CRITERIA = [
    {"key": "relevance", "name": "Relevance", "scale": 5,
     "labels": ["Unrelated", "Weak", "Partly", "Mostly", "Exactly the brief"]},
    {"key": "creativity", "name": "Creativity", "scale": 5,
     "labels": ["Stock", "Plain", "Fair", "Fresh", "Striking"]},
]
# Distinct colours, one per candidate in the order given.
PALETTE = [(220, 40, 40), (40, 90, 220), (40, 170, 70), (230, 180, 30), (150, 60, 190), (30, 170, 170)]
PROMPT_TAGS = ["people", "text in image", "product shot", "people;text in image"]
PROMPT_TEXTS = [
    "A summer sale banner with a smiling family on a beach",
    "A banner reading 'FREE SHIPPING' in bold letters",
    "A product shot of a steel water bottle on marble",
    "Two people holding a sign that says 'OPEN'",
]


def png_bytes(colour: tuple[int, int, int], *, size: int = 64, mark: int = 0) -> bytes:
    """A solid ``colour`` PNG of ``size``×``size`` with ``mark`` white squares in the top row
    (so the samples of one candidate differ)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), colour)
    draw = ImageDraw.Draw(img)
    for n in range(mark):
        draw.rectangle([2 + 6 * n, 2, 6 + 6 * n, 6], fill=(255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def zip_of(members: dict[str, bytes]) -> io.BytesIO:
    """A zip archive of ``members`` (name -> bytes), rewound."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    buf.seek(0)
    return buf


def pngs(n: int) -> dict[str, bytes]:
    """``n`` distinct 40-pixel PNGs under ``real/``, as a reference set's members."""
    return {f"real/banner{i}.png": png_bytes((10 * i, 200 - 10 * i, 90), size=40, mark=i % 4) for i in range(n)}


def prompts_csv(n_prompts: int, prompt_tags: Sequence[str] | None = None) -> bytes:
    tags = list(prompt_tags) if prompt_tags is not None else PROMPT_TAGS
    lines = ["id,prompt,tags"]
    for i in range(n_prompts):
        text = PROMPT_TEXTS[i % len(PROMPT_TEXTS)] + (f" (variant {i // len(PROMPT_TEXTS)})" if i >= len(PROMPT_TEXTS) else "")
        lines.append(f'i{i + 1},"{text.replace(chr(34), chr(39))}",{tags[i % len(tags)] if tags else ""}')
    return ("\n".join(lines) + "\n").encode()


def image_output_save(output: Output, data: bytes, *, thumb: bytes | None = None) -> Output:
    """Store ``data`` as ``output``'s image (and a thumbnail) through the default storage."""
    output.image.save("image.png", ContentFile(data), save=False)
    output.thumbnail.save("thumb.png", ContentFile(thumb if thumb is not None else data), save=False)
    Output.objects.filter(pk=output.pk).update(image=output.image.name, thumbnail=output.thumbnail.name)
    return output


def make_image_study(
    evaluator,
    *,
    annotators: Sequence = (),
    managers: Sequence = (),
    candidates: Sequence[str] = ("alpha-model", "beta-model"),
    n_prompts: int = 4,
    samples: int = 1,
    tags: Sequence[dict] | None = None,
    task_kinds: str = "pairwise",
    likert_criteria: Sequence[dict] | None = None,
    overlap: int = 1,
    prompt_tags: Sequence[str] | None = None,
    name: str = "Banner concepts",
) -> Study:
    """A study of ``n_prompts`` prompts and imported candidates whose outputs are PNG images.

    Each candidate gets ``samples`` images per prompt (``Study.samples_per_prompt``), in its own
    colour (:data:`PALETTE`, in the order of ``candidates``; sample ``k`` has ``k`` white marks).
    ``tags``: the study's failure tags (``[{key, label}]``; :data:`DEFAULT_FAILURE_TAGS` when None).
    ``task_kinds``: pairwise, likert or both; Likert studies rate ``likert_criteria``
    (:data:`DEFAULT_CRITERIA` when None).  Prompts are tagged with ``prompt_tags`` in turn
    ("people", "text in image", "product shot", ...).  Units are built before it returns.
    """
    task = {"task_kinds": task_kinds,
            "failure_tags": list(DEFAULT_FAILURE_TAGS if tags is None else tags)}
    if task_kinds in ("likert", "both"):
        task["likert_criteria"] = list(DEFAULT_CRITERIA if likert_criteria is None else likert_criteria)
    study = services.study_create(
        name=name, created_by=evaluator, prompts_data=prompts_csv(n_prompts, prompt_tags),
        prompts_filename="prompts.csv", overlap=overlap, samples_per_prompt=samples,
        annotators=list(annotators), managers=list(managers), tasks=task,
    )
    prompts = list(study.prompts.order_by("pk"))
    now = timezone.now()
    for n, cand_name in enumerate(candidates):
        cand = Candidate.objects.create(study=study, name=cand_name, backend=Candidate.Backend.IMPORTED, spec={})
        colour = PALETTE[n % len(PALETTE)]
        for prompt in prompts:
            for k in range(samples):
                out = Output.objects.create(
                    study=study, prompt=prompt, candidate=cand, sample_index=k, status=Output.Status.DONE,
                    text="", finished_at=now, latency_ms=1000.0 + 100 * n, seed=k,
                    settings={"steps": 2, "guidance_scale": 7.5, "scheduler": "DDIMScheduler", "width": 64,
                              "height": 64, "negative_prompt": "", "seed": k, "device": "cpu",
                              "dtype": "float32"},
                )
                image_output_save(out, png_bytes(colour, mark=k), thumb=png_bytes(colour, size=32, mark=k))
    services.units_build(study=study)
    study.refresh_from_db()
    return study


# What a workflow or a hosted endpoint leaves in its files, naming the model (blindness tests).
SECRET = "SecretModel-XL"


def _c2pa_segment(text: bytes) -> bytes:
    """A JPEG APP11 segment shaped like a C2PA manifest's JUMBF box (enough for a reader to keep it)."""
    payload = b"JP\x00\x01\x00\x00\x00\x01" + b"jumb" + b"c2pa" + text
    return b"\xff\xeb" + (len(payload) + 2).to_bytes(2, "big") + payload


def pattern_image(size: tuple[int, int] = (48, 32)):
    """An RGB Pillow image with a gradient and a few blocks, so equal pixels mean something."""
    from PIL import Image, ImageDraw

    width, height = size
    img = Image.new("RGB", size)
    img.putdata([((7 * x) % 256, (11 * y) % 256, (x * y) % 256) for y in range(height) for x in range(width)])
    draw = ImageDraw.Draw(img)
    draw.rectangle([4, 4, 14, 12], fill=(250, 250, 250))
    draw.ellipse([20, 10, 40, 28], fill=(10, 120, 240))
    return img


def images_with_metadata(size: tuple[int, int] = (48, 32)) -> dict[str, bytes]:
    """The same pixels (:func:`pattern_image`) as files that name :data:`SECRET` in their metadata:
    ``png`` (tEXt "parameters" and iTXt chunks as A1111/ComfyUI write them, EXIF Software),
    ``jpeg`` (EXIF Software, a comment, a C2PA-like APP11 segment), ``webp`` (lossless; EXIF and
    XMP) and ``gif`` (a comment; palette pixels)."""
    from PIL import Image, PngImagePlugin

    img = pattern_image(size)
    exif = Image.Exif()
    exif[0x0131] = f"{SECRET} via ComfyUI"  # Software
    exif[0x010E] = f"made by {SECRET}"  # ImageDescription
    out = {}
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", f"a banner\nSteps: 30, Sampler: DPM++ 2M, Model: {SECRET}, Seed: 42")
    info.add_itxt("prompt", '{"3": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "%s"}}}' % SECRET)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info, exif=exif.tobytes())
    out["png"] = buf.getvalue()
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92, exif=exif.tobytes(), comment=f"generated by {SECRET}".encode())
    jpeg = buf.getvalue()
    out["jpeg"] = jpeg[:2] + _c2pa_segment(f'{{"claim_generator": "{SECRET}/1.0"}}'.encode()) + jpeg[2:]
    buf = io.BytesIO()
    xmp = f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description CreatorTool="{SECRET}"/></x:xmpmeta>'.encode()
    img.save(buf, format="WEBP", lossless=True, exif=exif.tobytes(), xmp=xmp)
    out["webp"] = buf.getvalue()
    buf = io.BytesIO()
    img.convert("P", palette=Image.Palette.ADAPTIVE).save(buf, format="GIF", comment=f"by {SECRET}".encode())
    out["gif"] = buf.getvalue()
    return out


def assert_bare_png(data: bytes, *, like: bytes | None = None) -> None:
    """``data`` is a PNG with no metadata (no text chunk, EXIF, ICC profile, XMP or other ancillary
    chunk but the pixels' own) that names nothing of :data:`SECRET`; with ``like``, it has the
    pixels of that file as Pillow decodes it."""
    from PIL import Image

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert SECRET.encode() not in data and b"c2pa" not in data
    chunks, at = [], 8
    while at < len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        chunks.append(data[at + 4:at + 8].decode("latin-1"))
        at += 12 + length
    assert set(chunks) <= {"IHDR", "PLTE", "tRNS", "IDAT", "IEND"}, chunks
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.format == "PNG" and image.mode in ("RGB", "RGBA")
        assert image.info == {} and dict(image.getexif()) == {} and image.text == {}
        if like is not None:
            with Image.open(io.BytesIO(like)) as original:
                assert image.tobytes() == original.convert(image.mode).tobytes()
