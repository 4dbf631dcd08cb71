"""``Prompt.html`` and ``Output.html``: each text rendered once, when written, instead of on every page."""
from django.db import migrations, models

from annotation import markdown

BATCH = 500


def _fill(model) -> int:
    """Render the stored text of every row of ``model`` whose html is empty, in batches by primary key."""
    filled, last = 0, 0
    while True:
        rows = list(model.objects.filter(pk__gt=last, html="").exclude(text="").order_by("pk")
                    .only("pk", "text")[:BATCH])
        if not rows:
            return filled
        for row in rows:
            row.html = markdown.render(row.text)
        model.objects.bulk_update(rows, ["html"])
        filled += len(rows)
        last = rows[-1].pk


def fill_rendered_html(apps, schema_editor) -> None:
    for name in ("Prompt", "Output"):
        _fill(apps.get_model("annotation", name))


class Migration(migrations.Migration):
    dependencies = [("annotation", "0010_merge_likert_quality")]
    operations = [
        migrations.AddField(model_name="prompt", name="html",
                            field=models.TextField(blank=True, default="", db_default="")),
        migrations.AddField(model_name="output", name="html",
                            field=models.TextField(blank=True, default="", db_default="")),
        migrations.RunPython(fill_rendered_html, migrations.RunPython.noop),
    ]
