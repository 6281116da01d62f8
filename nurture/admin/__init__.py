"""The nurture ops screens, one ModelAdmin per module (docs/style.md, 8)."""
from nurture.admin import audiences, email_templates, enrollments, messages, workflows  # noqa: F401
