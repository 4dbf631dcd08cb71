"""Load battles judged elsewhere into a study, as judgments."""
from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotation import services
from annotation.models import Study
from annotation.uploads import UploadError, parse_battles


class Command(BaseCommand):
    help = "Import battles (Chatbot Arena JSON, JSONL or CSV: model_a, model_b, winner) into STUDY as judgments."

    def add_arguments(self, parser):
        parser.add_argument("study", type=int, help="study id")
        parser.add_argument("path")

    def handle(self, *args, study: int, path: str, **options):
        target = Study.objects.filter(pk=study).first()
        if target is None:
            raise CommandError(f"no study with id {study}")
        file = Path(path)
        if not file.is_file():
            raise CommandError(f"{path}: no such file")
        try:
            battles = parse_battles(file.read_bytes(), file.name, max_bytes=None)
            count = services.battles_import(study=target, model_a=battles.model_a, model_b=battles.model_b,
                                            winner=battles.winner, source=file.name)
        except (UploadError, services.ServiceError) as exc:
            raise CommandError(f"{path}: {exc}") from None
        self.stdout.write(f"Imported {count} battles into study {target.pk} ({target.name}).")
