"""django-import-export resources of the attribution app: exchange rates
in and out as CSV (or any format the library reads) from the admin.

A rate import is all or nothing: the library runs it in one transaction
and refuses the file when a row fails validation (``ExchangeRate.clean``:
an ISO code, not the company currency; a rate above zero), naming the row
and field. Rows are matched by (currency, date); an unchanged rate is
skipped. After the real (not dry-run) import, the deals the changed rates
move are recomputed after commit (attribution.money.exchange_rates_changed),
as for a rate edited by hand.
"""
from __future__ import annotations

from import_export import resources

from attribution.models import ExchangeRate
from attribution.money import Changes, exchange_rates_changed
from martech.csvsafe import cell_escape


class ExchangeRateResource(resources.ModelResource):
    class Meta:
        model = ExchangeRate
        fields = ("currency", "date", "rate", "source")
        export_order = fields
        import_id_fields = ("currency", "date")
        clean_model_instances = True
        skip_unchanged = True
        report_skipped = True
        use_transactions = True

    def import_data(self, dataset, dry_run=False, raise_errors=False, use_transactions=None, collect_failed_rows=False,
                    rollback_on_validation_errors=False, **kwargs):
        # All or nothing: one bad row rolls back the rows before it too (the library keeps them by default).
        return super().import_data(
            dataset, dry_run=dry_run, raise_errors=raise_errors, use_transactions=True,
            collect_failed_rows=collect_failed_rows, rollback_on_validation_errors=True, **kwargs,
        )

    def before_import(self, dataset, **kwargs) -> None:
        self._changed: Changes = {}

    def before_import_row(self, row, **kwargs) -> None:
        # Matched by (currency, date): the code as stored (upper case).
        if row.get("currency"):
            row["currency"] = str(row["currency"]).strip().upper()
        if not row.get("source"):
            row["source"] = "csv import"

    def after_save_instance(self, instance: ExchangeRate, row, **kwargs) -> None:
        day = instance.date
        first, last = self._changed.get(instance.currency, (day, day))
        self._changed[instance.currency] = (min(first, day), max(last, day))

    def after_import(self, dataset, result, **kwargs) -> None:
        super().after_import(dataset, result, **kwargs)
        if not self._is_dry_run(kwargs) and not result.has_errors() and not result.has_validation_errors() and self._changed:
            exchange_rates_changed(changes=self._changed)

    def export_resource(self, instance, selected_fields=None, **kwargs):
        return [cell_escape(v) for v in super().export_resource(instance, selected_fields, **kwargs)]
