"""The journey builder's forms: one per step type, and the pickers they and
the workflow form share. Pickers offer only what exists (catalogued, active
event types; forms; lifecycle stages; segments; lead fields; workflows),
so no key is typed by hand. A value already stored that is not among them
(a step made before the builder, through the API or a gallery copy) is
shown as itself, marked, rather than silently replaced by the first choice.

The forms only collect input; ``nurture.builder`` checks and writes it."""
from __future__ import annotations

from django import forms

from martech.models import ConsentChannel, EventType, Form, Lead, LifecycleStage, SubscriptionType
from nurture.builder import PATH_LABELS, update_field_choices
from nurture.graph import TARGETS
from nurture.labels import step_detail, step_type_label
from nurture.models import EmailTemplate, Workflow

NOT_THERE = "not in the catalog: never fires"


def _with_current(choices: list[tuple[str, str]], current, missing: str) -> list[tuple[str, str]]:
    if current not in (None, "") and str(current) not in {str(v) for v, _ in choices}:
        choices = [*choices, (str(current), f"{current} ({missing})")]
    return choices


def event_choices(current: str = "", *, blank: str = "—") -> list[tuple[str, str]]:
    """Active event types of the catalog, by label (the name beside it)."""
    choices = [("", blank)] + [(et.name, f"{et.display_label} ({et.name})")
                               for et in EventType.objects.filter(is_active=True).order_by("label", "name")]
    return _with_current(choices, current, NOT_THERE)


def form_choices(current: str = "") -> list[tuple[str, str]]:
    choices = [("", "—")] + [(f.key, f"{f.name} ({f.key})") for f in Form.objects.filter(is_active=True)]
    return _with_current(choices, current, "no such active form: never fires")


def stage_choices(current: str = "", *, blank: str | None = "—") -> list[tuple[str, str]]:
    choices = [(s.key, s.name) for s in LifecycleStage.objects.filter(is_active=True)]
    choices = ([("", blank)] if blank is not None else []) + choices
    return _with_current(choices, current, "no such active stage")


def lead_field_label(name: str) -> str:
    try:
        return str(Lead._meta.get_field(name).verbose_name).capitalize()
    except Exception:  # noqa: BLE001 - "properties" and the like: humanized
        return name.replace("_", " ").capitalize()


def crm_field_choices() -> list[tuple[str, str]]:
    """Lead fields a CRM change can touch (the CRM field trigger)."""
    from martech.services.leads import LEAD_WRITABLE_FIELDS

    return [(f, lead_field_label(f)) for f in sorted(LEAD_WRITABLE_FIELDS | {"owner", "properties"})]


class StepForm(forms.Form):
    """The fields every step form shares: where each of the step's paths
    goes. Subclasses declare the step's own fields and ``step_type``; they
    turn cleaned data into the step's JSON values in ``step_data`` and name
    in ``error_fields`` the form field a service error on a JSON key belongs
    to."""

    step_type = ""
    error_fields: dict[str, str] = {}

    def __init__(self, *args, workflow: Workflow, step_key: str | None = None, step: dict | None = None, **kwargs):
        self.workflow, self.step_key = workflow, step_key
        if step is not None and "initial" not in kwargs:
            kwargs["initial"] = self.initial_from(step)
        super().__init__(*args, **kwargs)
        steps = (workflow.definition or {}).get("steps") or {}
        others = [(k, f"{k} — {step_type_label(s.get('type', ''))}: {step_detail(s)}".rstrip(": "))
                  for k, s in steps.items() if k != step_key]
        for path in TARGETS[self.step_type]:
            if step_key is None:
                # A new step: its paths continue where its place led, unless told otherwise.
                field = forms.ChoiceField(choices=[("", "Continue with the rest of the journey"), *others],
                                          required=False)
            else:
                field = forms.ChoiceField(choices=others, initial=(step or {}).get(path))
            field.label = f"{PATH_LABELS.get(path, path)} path goes to" if len(TARGETS[self.step_type]) > 1 \
                else "Then go to"
            self.fields[f"path_{path}"] = field

    @classmethod
    def initial_from(cls, step: dict) -> dict:
        return {name: step[name] for name in cls.base_fields if name in step}

    def step_data(self) -> dict:
        return {name: self.cleaned_data[name] for name in self.base_fields}

    def paths(self) -> dict[str, str]:
        return {p: self.cleaned_data[f"path_{p}"] for p in TARGETS[self.step_type] if self.cleaned_data.get(f"path_{p}")}


class SendEmailStepForm(StepForm):
    """The send-email step: an email template picked from the saved ones,
    or the subject and bodies written here."""

    step_type = "send_email"
    template = forms.ModelChoiceField(
        queryset=EmailTemplate.objects.order_by("name"), required=False, empty_label="— write the email below —",
        label="Email template", help_text="Publishing keeps a copy of the template with the journey's version.",
    )
    subject = forms.CharField(max_length=500, required=False,
                              help_text="Without a template. Merge fields: {{first_name|there}} (with a fallback).")
    body = forms.CharField(widget=forms.Textarea(attrs={"rows": 8, "cols": 80}), required=False,
                           help_text="Without a template: the text version.")
    html = forms.CharField(widget=forms.Textarea(attrs={"rows": 6, "cols": 80}), required=False, label="HTML body",
                           help_text="Optional; made from the text when empty.")
    marketing = forms.BooleanField(required=False, initial=True, label="Marketing email",
                                   help_text=("Needs the lead's email consent and counts toward the frequency cap. "
                                              "Untick for a transactional email (a receipt, a trial welcome): it "
                                              "goes without marketing consent and outside the cap; bounced, "
                                              "complained and unsubscribed addresses are still never mailed."))
    topic = forms.ChoiceField(required=False, label="Subscription topic",
                              help_text="Leads who left the topic on their preference page are skipped.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        topics = [(t.key, t.name) for t in SubscriptionType.objects.filter(channel=ConsentChannel.EMAIL, is_active=True)
                  .order_by("order", "name")]
        self.fields["topic"].choices = _with_current([("", "— none —"), *topics], self.initial.get("topic"),
                                                     "not an active email topic")

    @classmethod
    def initial_from(cls, step: dict) -> dict:
        return {**super().initial_from(step), "marketing": step.get("marketing", True)}

    def step_data(self) -> dict:
        data = super().step_data()
        if not data.get("topic"):
            data.pop("topic", None)
        template = data.pop("template")
        if template is not None:
            # A template brings its own subject and bodies; typed ones are
            # refused by the service rather than silently dropped.
            data = {"template": template.pk, **{k: v for k, v in data.items() if v not in ("", None)}}
        return data


class SendSmsStepForm(StepForm):
    step_type = "send_sms"
    body = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "cols": 60}), max_length=1600,
                           help_text="Sent only to leads with SMS consent, outside quiet hours.")


class AudienceStepForm(StepForm):
    audience = forms.CharField(max_length=100, help_text="The retargeting audience's name, e.g. cart-retargeting.")


class AudienceAddStepForm(AudienceStepForm):
    step_type = "audience_add"


class AudienceRemoveStepForm(AudienceStepForm):
    step_type = "audience_remove"


class UpdateFieldStepForm(StepForm):
    step_type = "update_field"
    field = forms.ChoiceField(label="Lead field")
    property = forms.CharField(required=False, max_length=64, label="Custom property",
                               help_text="The property's name, when the field is “A custom property”.")
    value = forms.CharField(max_length=1000, required=False, help_text="Merge fields allowed.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["field"].choices = [(f, lead_field_label(f)) for f in update_field_choices()] + [
            ("properties", "A custom property")]

    @classmethod
    def initial_from(cls, step: dict) -> dict:
        field = str(step.get("field", ""))
        if field.startswith("properties."):
            return {"field": "properties", "property": field.removeprefix("properties."), "value": step.get("value")}
        return {"field": field, "value": step.get("value")}

    def clean(self):
        data = super().clean()
        if data.get("field") == "properties" and not data.get("property"):
            self.add_error("property", "Name the custom property.")
        return data

    def step_data(self) -> dict:
        field = self.cleaned_data["field"]
        if field == "properties":
            field = f"properties.{self.cleaned_data['property']}"
        return {"field": field, "value": self.cleaned_data["value"]}


class SetStageStepForm(StepForm):
    step_type = "set_stage"
    stage = forms.ChoiceField(label="Lifecycle stage")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["stage"].choices = stage_choices(self.initial.get("stage", ""), blank=None)


class CreateTaskStepForm(StepForm):
    step_type = "create_task"
    subject = forms.CharField(max_length=255, help_text="For the lead's owner; merge fields allowed.")
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "cols": 60}), required=False)
    due_days = forms.IntegerField(min_value=0, max_value=365, initial=1, label="Due in (days)")


class NotifyStepForm(StepForm):
    step_type = "notify"
    channel = forms.ChoiceField(choices=[("email", "Email"), ("webhook", "Webhook (e.g. Slack)")])
    to = forms.CharField(max_length=500, help_text="An email address, or the webhook's URL.")
    text = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "cols": 60}), help_text="Merge fields allowed.")


class WebhookStepForm(StepForm):
    step_type = "webhook"
    url = forms.URLField(max_length=2000, assume_scheme="https", label="URL")


WAIT_UNIT_CHOICES = [("minutes", "minutes"), ("hours", "hours"), ("days", "days"), ("business_days", "business days")]


class WaitStepForm(StepForm):
    step_type = "wait"
    amount = forms.IntegerField(min_value=1, max_value=100_000, label="Wait for")
    unit = forms.ChoiceField(choices=WAIT_UNIT_CHOICES, initial="days")
    error_fields = {"seconds": "amount", "hours": "amount", "days": "amount", "business_days": "amount"}

    @classmethod
    def initial_from(cls, step: dict) -> dict:
        if step.get("business_days"):
            return {"amount": step["business_days"], "unit": "business_days"}
        seconds = (step.get("seconds") or 0) + 3600 * (step.get("hours") or 0) + 86400 * (step.get("days") or 0)
        for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
            if seconds and seconds % size == 0:
                return {"amount": seconds // size, "unit": unit}
        return {"amount": max(1, round(seconds / 60)), "unit": "minutes"}

    def step_data(self) -> dict:
        amount, unit = self.cleaned_data["amount"], self.cleaned_data["unit"]
        return {"seconds": amount * 60} if unit == "minutes" else {unit: amount}


class WaitUntilStepForm(StepForm):
    step_type = "wait_until"
    event = forms.ChoiceField(required=False, label="Until the lead does",
                              help_text="An event of the catalog (after the wait started).")
    condition = forms.CharField(required=False, max_length=2000, label="Or until",
                                help_text='A condition, e.g. score >= 50 or lifecycle_stage = "sql".')
    timeout = forms.IntegerField(min_value=1, max_value=8784, label="At most")
    timeout_unit = forms.ChoiceField(choices=[("hours", "hours"), ("days", "days")], initial="days", label="Unit")
    error_fields = {"timeout_hours": "timeout"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["event"].choices = event_choices(self.initial.get("event", ""), blank="— (no event)")

    @classmethod
    def initial_from(cls, step: dict) -> dict:
        hours = step.get("timeout_hours") or 0
        timeout = {"timeout": hours // 24, "timeout_unit": "days"} if hours and hours % 24 == 0 else \
            {"timeout": hours, "timeout_unit": "hours"}
        return {"event": step.get("event", ""), "condition": step.get("condition", ""), **timeout}

    def step_data(self) -> dict:
        hours = self.cleaned_data["timeout"] * (24 if self.cleaned_data["timeout_unit"] == "days" else 1)
        return {"event": self.cleaned_data["event"], "condition": self.cleaned_data["condition"], "timeout_hours": hours}


class BranchStepForm(StepForm):
    step_type = "branch"
    condition = forms.CharField(max_length=2000, widget=forms.Textarea(attrs={"rows": 2, "cols": 80}),
                                help_text='Leads that match take the Yes path, e.g. score >= 60 and country in ("US", "CA").')


class SplitStepForm(StepForm):
    step_type = "split"
    percent = forms.IntegerField(min_value=0, max_value=100, initial=50, label="Share taking path A (%)",
                                 help_text="Each lead always takes the same path; the rest take B.")


class EnrollStepForm(StepForm):
    step_type = "enroll"
    workflow = forms.ChoiceField(label="Enroll in the journey")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        others = Workflow.objects.exclude(status=Workflow.Status.ARCHIVED).exclude(pk=self.workflow.pk)
        self.fields["workflow"].choices = [(str(w.pk), w.name) for w in others]

    def step_data(self) -> dict:
        return {"workflow": int(self.cleaned_data["workflow"])}


class EndStepForm(StepForm):
    step_type = "end"


STEP_FORMS: dict[str, type[StepForm]] = {
    f.step_type: f for f in (
        SendEmailStepForm, SendSmsStepForm, AudienceAddStepForm, AudienceRemoveStepForm, UpdateFieldStepForm,
        SetStageStepForm, CreateTaskStepForm, NotifyStepForm, WebhookStepForm, WaitStepForm, WaitUntilStepForm,
        BranchStepForm, SplitStepForm, EnrollStepForm, EndStepForm,
    )
}
assert set(STEP_FORMS) == set(TARGETS), "every step type the engine runs has a form"
