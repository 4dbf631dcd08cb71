"""Instructions shown to annotators before their first task (and when each acknowledged them); skips with a reason."""
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("annotation", "0011_rendered_html"), migrations.swappable_dependency(settings.AUTH_USER_MODEL)]
    operations = [
        migrations.AddField(model_name="study", name="instructions",
                            field=models.TextField(blank=True, help_text="Markdown shown to annotators before "
                                                                         "their first task.")),
        migrations.AddField(model_name="study", name="instructions_html",
                            field=models.TextField(blank=True, default="", db_default="")),
        migrations.AddField(model_name="studymember", name="instructions_seen_at",
                            field=models.DateTimeField(blank=True, null=True, help_text="When the annotator pressed "
                                                       "Start on the study's instructions page.")),
        migrations.CreateModel(
            name="Skip",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("reason", models.CharField(choices=[("cant_judge", "Can't judge"), ("offensive", "Offensive"),
                                                     ("broken", "Broken output"), ("other", "Other")], max_length=12)),
                ("note", models.TextField(blank=True, help_text="The annotator's words (asked for with “other”).")),
                ("skipped_at", models.DateTimeField()),
                ("annotator", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="+",
                                                to=settings.AUTH_USER_MODEL)),
                ("assignment", models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name="skip",
                                                    to="annotation.assignment")),
                ("study", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="skips",
                                            to="annotation.study")),
                ("unit", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="skips",
                                           to="annotation.unit")),
            ],
            options={"indexes": [models.Index(fields=["study", "skipped_at"], name="annotation_skip_study_at")]},
        ),
    ]
