"""A workflow is active or paused only once published (the status is set by
publish, pause, resume and archive alone). Rows an earlier admin let be
"Active" without a published version enrolled nobody: they become drafts,
to be published."""
from django.db import migrations


def to_draft(apps, schema_editor):
    Workflow = apps.get_model("nurture", "Workflow")
    Workflow.objects.filter(status__in=["active", "paused"], current_version__isnull=True).update(status="draft")


class Migration(migrations.Migration):
    dependencies = [("nurture", "0007_workflow_campaign")]

    operations = [migrations.RunPython(to_draft, migrations.RunPython.noop)]
