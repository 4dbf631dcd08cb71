"""Reference image sets: upload validation (each refusal names the member, nothing is kept), the
happy path with six PNGs, and who may see the images."""
from __future__ import annotations

import io
import os

import pytest
from django.conf import settings
from django.urls import reverse

from annotation.services import ServiceError
from metrics.models import ReferenceImage, ReferenceSet
from metrics.references import reference_set_upload
from tests.conftest import client_for
from tests.helpers.images import make_image_study, png_bytes, pngs, zip_of

pytestmark = pytest.mark.django_db


def storage_files() -> set[str]:
    root = settings.MEDIA_ROOT
    return {os.path.join(d, f) for d, _, files in os.walk(root) for f in files} if os.path.isdir(root) else set()


@pytest.fixture
def study(evaluator, annotators, manager):
    return make_image_study(evaluator, annotators=annotators, managers=[manager])


def gif_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="GIF")
    return buf.getvalue()


def bomb() -> io.BytesIO:
    """A member that inflates to more than its header says (the archives module's zip bomb)."""
    buf = zip_of({**pngs(2), "big.png": b"\0" * 200_000})
    data = bytearray(buf.getvalue())
    # shrink the declared size in the central directory and the local header of big.png
    name = b"big.png"
    for sig, size_off in ((b"PK\x01\x02", 24), (b"PK\x03\x04", 22)):
        pos = 0
        while (pos := data.find(sig, pos)) != -1:
            name_off = 46 if sig == b"PK\x01\x02" else 30
            if data[pos + name_off:pos + name_off + len(name)] == name:
                data[pos + size_off:pos + size_off + 4] = (1000).to_bytes(4, "little")
            pos += 4
    return io.BytesIO(bytes(data))


REFUSED = {
    "corrupt zip": (lambda: io.BytesIO(b"PK\x03\x04 this is not a zip at all"), "zip"),
    "not an image": (lambda: zip_of({**pngs(2), "notes/readme.png": b"hello, not a picture"}), "notes/readme.png"),
    "truncated image": (lambda: zip_of({**pngs(2), "cut.png": png_bytes((1, 2, 3), size=40)[:60]}), "cut.png"),
    "wrong type": (lambda: zip_of({**pngs(2), "anim.gif": gif_bytes()}), "anim.gif"),
    "nested archive": (lambda: zip_of({**pngs(2), "more.zip": zip_of(pngs(2)).getvalue()}), "more.zip"),
    "nested archive by content": (lambda: zip_of({**pngs(2), "sneaky.png": zip_of(pngs(2)).getvalue()}),
                                  "sneaky.png"),
    "zip bomb": (bomb, "big.png"),
    "absolute path": (lambda: zip_of({**pngs(2), "/etc/x.png": png_bytes((1, 1, 1))}), "/etc/x.png"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_refused_archive_names_the_member_and_keeps_nothing(study, case):
    make, named = REFUSED[case]
    before = storage_files()
    with pytest.raises(ServiceError) as err:
        reference_set_upload(study=study, name="real banners", upload=make(), actor=study.created_by)
    assert named in str(err.value), str(err.value)
    assert not ReferenceSet.objects.exists() and not ReferenceImage.objects.exists()
    assert storage_files() == before


def test_an_oversized_archive_is_refused_by_the_settings_limits(study, settings):
    before = storage_files()
    settings.EVALSITE_ARCHIVE_MAX_BYTES = 5_000
    with pytest.raises(ServiceError, match="EVALSITE_ARCHIVE_MAX_BYTES"):
        reference_set_upload(study=study, name="big", upload=zip_of(pngs(6) | {"x.png": b"\0" * 6000}))
    settings.EVALSITE_ARCHIVE_MAX_BYTES = 10**9
    settings.EVALSITE_ARCHIVE_MAX_MEMBERS = 3
    with pytest.raises(ServiceError, match="EVALSITE_ARCHIVE_MAX_MEMBERS"):
        reference_set_upload(study=study, name="many", upload=zip_of(pngs(6)))
    assert not ReferenceSet.objects.exists() and storage_files() == before


def test_six_pngs_make_a_set_whose_images_only_evaluators_and_managers_see(study, evaluator, manager, annotators):
    client = client_for(evaluator)
    url = reverse("metrics:references", args=[study.pk])
    members = {**pngs(6), "__MACOSX/._banner0.png": b"junk"}
    response = client.post(url, {"name": "real banners", "archive": _upload(zip_of(members))})
    assert response.status_code == 302
    ref = ReferenceSet.objects.get(study=study)
    assert ref.n_images == 6 and ref.images.count() == 6
    stored = sorted(ref.images.values_list("width", "height"))
    assert stored == [(40, 40)] * 6
    for img in ref.images.all():
        assert img.file.name.startswith(f"references/{study.pk}/") and "banner" not in img.file.name
    page = client.get(url).content.decode()
    assert "real banners" in page and ">6<" in page
    name = os.path.basename(ref.images.first().file.name)
    image_url = reverse("metrics:reference_image", args=[study.pk, name])
    assert image_url in page
    original = sorted(pngs(6).values())
    for user in (evaluator, manager):
        got = client_for(user).get(image_url)
        assert got.status_code == 200 and got["Cache-Control"] == "private, no-store"
        assert b"".join(got.streaming_content) in original
    assert client_for(annotators[0]).get(image_url).status_code == 403
    # the same name again is refused, naming the field
    again = client.post(url, {"name": "real banners", "archive": _upload(zip_of(pngs(2)))})
    assert again.status_code == 400 and "already has a reference set" in again.content.decode()


def test_the_page_shows_the_refusal(study, evaluator):
    response = client_for(evaluator).post(reverse("metrics:references", args=[study.pk]),
                                          {"name": "x", "archive": _upload(zip_of({**pngs(2), "a.gif": gif_bytes()}))})
    assert response.status_code == 400
    assert "a.gif" in response.content.decode() and "only PNG, JPEG and WEBP" in response.content.decode()
    assert not ReferenceSet.objects.exists()


def _upload(buf: io.BytesIO):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile("refs.zip", buf.getvalue(), content_type="application/zip")


def _set_with_features(study, name: str, n: int = 3) -> ReferenceSet:
    from django.core.files.base import ContentFile

    ref = reference_set_upload(study=study, name=name, upload=zip_of(pngs(n)), actor=study.created_by)
    ref.features.save("features.npz", ContentFile(b"cached features"), save=True)
    return ref


def test_an_evaluator_removes_a_set_with_its_files_and_the_audit_says_so(study, evaluator, manager, annotators,
                                                                         django_capture_on_commit_callbacks):
    from annotation.models import AuditEntry

    before = storage_files()
    ref = _set_with_features(study, "old banners")
    assert len(storage_files() - before) == 4  # three images and the cached features
    url = reverse("metrics:reference_remove", args=[study.pk, ref.pk])
    for user in (manager, annotators[0]):
        assert client_for(user).post(url).status_code == 403
    assert ReferenceSet.objects.filter(pk=ref.pk).exists()
    client = client_for(evaluator)
    page = client.get(reverse("metrics:references", args=[study.pk])).content.decode()
    assert url in page
    with django_capture_on_commit_callbacks(execute=True) as callbacks:  # the files go once the rows have
        response = client.post(url, follow=True)
    assert response.redirect_chain[-1][1] == 302 and len(callbacks) == 1
    assert "Reference set &#x27;old banners&#x27; removed, with its 3 images." in response.content.decode()
    assert not ReferenceSet.objects.exists() and not ReferenceImage.objects.exists()
    assert storage_files() == before
    entries = list(AuditEntry.objects.filter(study=study).order_by("pk").values_list("action", "target", "detail"))
    assert entries[-2:] == [("reference_set_added", "old banners", {"images": 3}),
                            ("reference_set_removed", "old banners", {"images": 3})]
    # removed twice, or another study's set: a 404, nothing else touched
    assert client.post(url).status_code == 404
    other = make_image_study(evaluator, n_prompts=2)
    theirs = reference_set_upload(study=other, name="theirs", upload=zip_of(pngs(2)))
    assert client.post(reverse("metrics:reference_remove", args=[study.pk, theirs.pk])).status_code == 404
    assert ReferenceSet.objects.filter(pk=theirs.pk).exists()


def test_a_set_a_queued_or_running_run_compares_with_stays(study, evaluator):
    from metrics.models import MetricRun

    ref = _set_with_features(study, "in use")
    files = storage_files()
    client = client_for(evaluator)
    url = reverse("metrics:reference_remove", args=[study.pk, ref.pk])
    for status in ("queued", "running"):
        run = MetricRun.objects.create(study=study, metric="fid", options={"reference": ref.pk},
                                       options_hash=status, status=status)
        response = client.post(url)
        assert response.status_code == 400
        assert f"in use by fid (run {run.pk})" in response.content.decode()
        assert ReferenceSet.objects.filter(pk=ref.pk).exists() and ref.images.count() == 3
        assert storage_files() == files
        run.status = "done"
        run.config = {"reference_set": "in use"}
        run.save()
    # finished runs keep their figures and the set's name; starting one again names the missing set
    assert client.post(url).status_code == 302
    assert MetricRun.objects.filter(study=study, config__reference_set="in use").count() == 2
    from metrics.references import reference_set_for_option

    with pytest.raises(ServiceError, match="no reference set 'in use'"):
        reference_set_for_option(study.pk, "in use")


def test_the_page_costs_the_same_whatever_the_number_of_sets(study, evaluator):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = client_for(evaluator)
    url = reverse("metrics:references", args=[study.pk])
    counts = []
    for n in range(3):
        reference_set_upload(study=study, name=f"set {n}", upload=zip_of(pngs(5)))
        with CaptureQueriesContext(connection) as queries:
            page = client.get(url).content.decode()
        counts.append(len(queries))
        assert page.count('alt="reference image') == 4 * (n + 1)  # the first 4 images of each set
    assert counts[0] == counts[1] == counts[2], counts


def _huge_png(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (width, height), 0).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def test_an_image_over_the_pixel_limit_is_refused_from_its_header_before_decoding(study, settings, monkeypatch):
    from PIL import ImageFile

    big = _huge_png(9000, 9000)  # 81 million pixels, a few tens of KB zipped
    assert len(zip_of({"huge.png": big}).getvalue()) < 200_000
    assert settings.EVALSITE_REFERENCE_MAX_PIXELS == 4096 * 4096
    decoded: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def load(self):
        decoded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    before = storage_files()
    with pytest.raises(ServiceError) as err:
        reference_set_upload(study=study, name="bombs", upload=zip_of({**pngs(2), "real/huge.png": big}))
    message = str(err.value)
    assert "'real/huge.png'" in message and "9000×9000" in message and "81,000,000" in message
    assert "EVALSITE_REFERENCE_MAX_PIXELS" in message and "16,777,216" in message
    assert (9000, 9000) not in decoded  # refused from the header: its pixels were never decoded
    assert not ReferenceSet.objects.exists() and storage_files() == before
    # the limit comes from the setting, and an image at the limit is accepted
    settings.EVALSITE_REFERENCE_MAX_PIXELS = 40 * 40
    ref = reference_set_upload(study=study, name="at the limit", upload=zip_of(pngs(2)))
    assert ref.n_images == 2
    with pytest.raises(ServiceError, match=r"'real/banner2.png' is 41×40 pixels"):
        reference_set_upload(study=study, name="over", upload=zip_of({**pngs(2), "real/banner2.png":
                                                                      _huge_png(41, 40)}))


def test_a_reference_image_missing_from_storage_is_a_404(study, evaluator):
    from django.core.files.storage import default_storage

    ref = reference_set_upload(study=study, name="real", upload=zip_of(pngs(2)))
    image = ref.images.order_by("pk").first()
    url = reverse("metrics:reference_image", args=[study.pk, os.path.basename(image.file.name)])
    client = client_for(evaluator)
    assert client.get(url).status_code == 200
    default_storage.delete(image.file.name)
    response = client.get(url)
    assert response.status_code == 404
