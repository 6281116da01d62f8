"""An erasure's delete of the person in each connected CRM, through the CRM
outbox: object type "erasure", one outbox row per ``CrmDeletion``, so the
drain's claim, lease, backoff, dead letters and health apply unchanged.
HubSpot purges the contact (GDPR delete), Salesforce deletes the Lead or
Contact (``connector.person_delete``)."""
from __future__ import annotations

from django.core.exceptions import ValidationError
from django.utils import timezone

from martech.crm import objects
from martech.crm.connectors.base import AuthError, PermanentError, RateLimited, TransientError
from martech.crm.models import OutboxItem

KEY = "erasure"


def erasures_push(connection, connector, builder, items: list[OutboxItem], run) -> None:
    """The drain's push of claimed "erasure" rows: one delete call each."""
    from martech.crm import services
    from martech.privacy.models import CrmDeletion

    for n, item in enumerate(items):
        deletion = CrmDeletion.objects.filter(pk=item.local_id, connection=connection).first()
        if deletion is None or deletion.status != CrmDeletion.Status.PENDING or not deletion.remote_id:
            services._finish(connection, builder.obj, [item])  # done already (a redelivery) or withdrawn
            run.skipped += 1
            continue
        before = connector.stats.api_calls
        try:
            deleted = connector.person_delete(deletion.remote_id)
        except AuthError:
            services._count_calls(connection, connector.stats.api_calls - before)
            services._release([item])
            raise
        except RateLimited as exc:
            services._count_calls(connection, connector.stats.api_calls - before)
            services._release(items[n:], at=services._pause_for(connection, exc))
            raise
        except (TransientError, PermanentError) as exc:
            services._count_calls(connection, connector.stats.api_calls - before)
            services._fail([item], f"erasure #{deletion.request_id}: {exc}")
            run.failed += 1
            continue
        services._count_calls(connection, connector.stats.api_calls - before)
        # The remote id was kept only to send this call.
        CrmDeletion.objects.filter(pk=deletion.pk).update(
            status=CrmDeletion.Status.DONE if deleted else CrmDeletion.Status.GONE, remote_id="",
            done_at=timezone.now())
        services._finish(connection, builder.obj, [item])
        run.pushed += 1


def _no_write(*, instance, data, source):
    raise ValidationError({KEY: ["Erasures are pushed, never pulled."]})


def register() -> None:
    """From PrivacyConfig.ready: pushed last, after every upsert of the drain."""
    objects.register(objects.ObjectType(
        key=KEY, label="Erasure (CRM delete)", model="privacy.CrmDeletion", hook="erasures", write=_no_write,
        order=99, push=erasures_push))
