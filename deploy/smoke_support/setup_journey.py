"""Run by the smoke driver through ``manage.py shell`` (the runtime venv, the
production settings): a public capture form and a published journey that
form triggers, whose first step is an email. Written through the services
the admin uses (workflow_save, workflow_publish). Prints one JSON line."""
import json

from martech.models import Form
from nurture.models import Workflow
from nurture.services import workflow_publish, workflow_save

form = Form(
    key="smoke-signup",
    name="Smoke signup",
    fields=[
        {"name": "email", "label": "Work email", "type": "email", "lead_field": "email", "required": True},
        {"name": "first_name", "label": "First name", "type": "text", "lead_field": "first_name"},
    ],
    consent_field="consent",
    consent_text="Email me about the product.",
)
form.full_clean()
form.save()

workflow = Workflow(
    name="Smoke welcome journey",
    trigger=Workflow.Trigger.FORM,
    trigger_config={"form": form.key},
    definition={
        "start": "welcome",
        "steps": {
            "welcome": {
                "type": "send_email",
                "subject": "Welcome, {{first_name|there}}",
                "body": "Thanks for signing up. <a href=\"https://example.com/start\">Get started</a>",
                "next": "done",
            },
            "done": {"type": "end"},
        },
    },
)
workflow_save(workflow=workflow)
version = workflow_publish(workflow=workflow)
print(json.dumps({"form": form.key, "workflow": workflow.pk, "version": version.number}))
