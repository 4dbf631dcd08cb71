from django.db import migrations


def backfill(apps, schema_editor):
    """Create PromptTag rows for prompts saved before tags had their own table."""
    Prompt = apps.get_model("annotation", "Prompt")
    PromptTag = apps.get_model("annotation", "PromptTag")
    rows = [
        PromptTag(prompt_id=p.pk, study_id=p.study_id, tag=str(tag)[:100])
        for p in Prompt.objects.exclude(tags=[]).only("pk", "study_id", "tags").iterator()
        for tag in (p.tags or [])
        if str(tag).strip()
    ]
    PromptTag.objects.bulk_create(rows, ignore_conflicts=True, batch_size=1000)


class Migration(migrations.Migration):
    dependencies = [("annotation", "0002_prompt_tags")]
    operations = [migrations.RunPython(backfill, migrations.RunPython.noop)]
