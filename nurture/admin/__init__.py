"""The nurture ops screens, one ModelAdmin per module (STYLE.md 8)."""
from nurture.admin import audiences, enrollments, messages, workflows  # noqa: F401
