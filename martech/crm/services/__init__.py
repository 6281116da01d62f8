"""Sync services: build payloads, drain the outbox, pull changes, owners,
webhooks. Commands, tasks and the admin all call these, by their names here.

One module per concern, each importing only those before it:

- ``payloads``: local records as CRM properties and associations; hashes, previews
- ``allowance``: API calls counted, rate-limit pauses, errors and crashed runs recorded
- ``push``: the outbox claimed, drained in batches and settled (``outbox_drain``)
- ``apply``: pulled records applied to local rows (``pulled_apply_page``)
- ``failures``: pull failures recorded, settled and retried
- ``pull``: an object type's changes read and applied (``pull_changes``)
- ``links``: a link type's changes (``links_pull``); ``pull_one`` by key
- ``owners``: CRM owners; how often the slow reads are asked
- ``deletions``: records and links deleted in the CRM
- ``webhooks``: webhook events received and processed

The private names other modules and tests use are exported here too; a test
that replaces a function patches it in the module that calls it.
"""
from __future__ import annotations

from martech.crm.services.allowance import (
    DEFAULT_LIMIT_WAIT,
    SALESFORCE_RECHECK,
    _count_calls,
    _pause_for,
    _record_error,
    allowance_refresh,
    budget_left,
    connection_pause,
    crash_record,
    pause_end,
    paused_run,
)
from martech.crm.services.apply import _locals_by_remote_ids, pulled_apply, pulled_apply_page
from martech.crm.services.deletions import deleted_keys, deletions_pull, deletions_pull_recorded
from martech.crm.services.failures import PULL_RETRY_BATCH, PullOutcomes, _errors_summary, pull_failure_retry
from martech.crm.services.links import LINK_BATCH, links_pull, pull_one
from martech.crm.services.owners import owners_pull, owners_pull_recorded, slow_ask_due
from martech.crm.services.payloads import (
    PayloadBuilder,
    PayloadError,
    _remote_ids,
    lead_payload_preview,
    payload_hash,
    payload_preview,
    record_hash,
)
from martech.crm.services.pull import (
    FULL_IMPORT_OVERLAP,
    PULL_COMMIT_EVERY,
    READ_AHEAD,
    PullPosition,
    _ReadAhead,
    pull_changes,
    pull_prefetch,
    pulled_digest,
    pulled_link_keys,
    pulled_object_keys,
)
from martech.crm.services.push import _claim, _fail, _finish, _release, _settle, dead_letter_retry, lease, outbox_drain
from martech.crm.services.webhooks import webhook_process, webhook_receive

__all__ = [
    "allowance_refresh", "budget_left", "_claim", "connection_pause", "_count_calls", "crash_record",
    "dead_letter_retry", "DEFAULT_LIMIT_WAIT", "deleted_keys", "deletions_pull", "deletions_pull_recorded",
    "_errors_summary", "_fail", "_finish", "FULL_IMPORT_OVERLAP", "lead_payload_preview", "lease", "LINK_BATCH",
    "links_pull", "_locals_by_remote_ids", "outbox_drain", "owners_pull", "owners_pull_recorded", "pause_end",
    "_pause_for", "paused_run", "payload_hash", "payload_preview", "PayloadBuilder", "PayloadError", "pull_changes",
    "PULL_COMMIT_EVERY", "pull_failure_retry", "pull_one", "pull_prefetch", "PULL_RETRY_BATCH", "pulled_apply",
    "pulled_apply_page", "pulled_digest", "pulled_link_keys", "pulled_object_keys", "PullOutcomes", "PullPosition",
    "READ_AHEAD", "_ReadAhead", "_record_error", "record_hash", "_release", "_remote_ids", "SALESFORCE_RECHECK",
    "_settle", "slow_ask_due", "webhook_process", "webhook_receive",
]
