"""What the routing screens share: saves through ``config_save``."""
from __future__ import annotations

from martech.admin.base import BaseAdmin, ServiceSaveMixin
from routing import services


class ConfigAdmin(ServiceSaveMixin, BaseAdmin):
    """Configuration rows saved through ``routing.services.config_save``
    (model validation; a rep switched off has their leads rerouted)."""

    def save_model(self, request, obj, form, change):
        data = {f: form.cleaned_data[f] for f in form.changed_data if f in form.cleaned_data
                and not getattr(obj._meta.get_field(f), "many_to_many", False)}
        self.call_service(request, services.config_save, instance=obj, data=data, actor=request.user)
