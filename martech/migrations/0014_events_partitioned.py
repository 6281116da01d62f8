"""PostgreSQL: the events table becomes partitioned by month of occurred_at.

Django's state does not change: ``id`` stays the model's primary key and
``client_event_id`` stays unique. In the database (PostgreSQL only; SQLite
keeps the plain table):

- ``martech_event`` is ``PARTITION BY RANGE (occurred_at)`` with ``PRIMARY KEY
  (id, occurred_at)`` (a partitioned table's keys must hold the partition
  key), one partition per month ``martech_event_yYYYYmMM`` from the oldest
  event's month to three months ahead, and ``martech_event_default`` for any
  other time. ``martech.partitions`` creates the months ahead later on.
- The dedupe of ``client_event_id`` moves to ``martech_event_key``
  (client_event_id primary key -> event id, occurred_at), kept by triggers
  on the events table: an insert claims its key first; a key held by a live
  event makes the insert fail with unique_violation as the unique index did,
  or, for an insert tagged with an ingest batch (``events_ingest``), skips the
  row as its ``ON CONFLICT DO NOTHING`` did; a key whose event is gone (its
  month was dropped by retention) passes to the new event. Deleting an event
  releases its key.
- Every other index and foreign key of the table is recreated under the same
  name on the partitioned table (so each partition has them).

On a big install, run the steps of docs/retention.md by hand instead (this
copies the table in one transaction). Reversible: back to a plain table.
"""
from datetime import datetime, timezone

from django.db import migrations

TABLE = "martech_event"
KEYS = "martech_event_key"
AHEAD = 3  # months created ahead of the current one

FUNCTIONS = f"""
CREATE FUNCTION martech_event_key_claim() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE held record;
BEGIN
    LOOP
        INSERT INTO {KEYS} (client_event_id, event_id, occurred_at)
            VALUES (NEW.client_event_id, NEW.id, NEW.occurred_at)
            ON CONFLICT (client_event_id) DO NOTHING;
        IF FOUND THEN
            RETURN NEW;
        END IF;
        -- Taken: lock the key (after its holder commits) and look at it.
        SELECT event_id, occurred_at INTO held FROM {KEYS}
            WHERE client_event_id = NEW.client_event_id FOR UPDATE;
        EXIT WHEN FOUND;  -- else released meanwhile: claim it again
    END LOOP;
    -- The same event moving to another month's partition, or a key whose
    -- event retention dropped: the key passes to this row.
    IF held.event_id = NEW.id OR NOT EXISTS (
            SELECT 1 FROM {TABLE} WHERE id = held.event_id AND occurred_at = held.occurred_at) THEN
        UPDATE {KEYS} SET event_id = NEW.id, occurred_at = NEW.occurred_at
            WHERE client_event_id = NEW.client_event_id;
        RETURN NEW;
    END IF;
    IF NEW.ingest_batch IS NOT NULL THEN
        RETURN NULL;  -- events_ingest: a duplicate is skipped (ON CONFLICT DO NOTHING)
    END IF;
    RAISE unique_violation USING
        MESSAGE = 'duplicate key value violates unique constraint "{KEYS}_pkey"',
        DETAIL = format('Key (client_event_id)=(%s) already exists.', NEW.client_event_id);
END $$;

CREATE FUNCTION martech_event_key_release() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM {KEYS} WHERE client_event_id = OLD.client_event_id AND event_id = OLD.id
        AND occurred_at = OLD.occurred_at;
    RETURN NULL;
END $$;

CREATE FUNCTION martech_event_key_follow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE {KEYS} SET client_event_id = NEW.client_event_id, occurred_at = NEW.occurred_at
        WHERE client_event_id = OLD.client_event_id AND event_id = OLD.id;
    RETURN NULL;
END $$;
"""

TRIGGERS = f"""
CREATE TRIGGER martech_event_key_claim BEFORE INSERT ON {TABLE}
    FOR EACH ROW EXECUTE FUNCTION martech_event_key_claim();
CREATE TRIGGER martech_event_key_release AFTER DELETE ON {TABLE}
    FOR EACH ROW EXECUTE FUNCTION martech_event_key_release();
CREATE TRIGGER martech_event_key_follow AFTER UPDATE OF client_event_id, occurred_at ON {TABLE}
    FOR EACH ROW WHEN (OLD.client_event_id IS DISTINCT FROM NEW.client_event_id
                       OR OLD.occurred_at IS DISTINCT FROM NEW.occurred_at)
    EXECUTE FUNCTION martech_event_key_follow();
"""

DROP_KEYS = f"""
DROP TRIGGER IF EXISTS martech_event_key_claim ON {TABLE};
DROP TRIGGER IF EXISTS martech_event_key_release ON {TABLE};
DROP TRIGGER IF EXISTS martech_event_key_follow ON {TABLE};
DROP FUNCTION IF EXISTS martech_event_key_claim();
DROP FUNCTION IF EXISTS martech_event_key_release();
DROP FUNCTION IF EXISTS martech_event_key_follow();
DROP TABLE IF EXISTS {KEYS};
"""


def _month(year: int, month: int) -> datetime:
    year, month = year + (month - 1) // 12, (month - 1) % 12 + 1
    return datetime(year, month, 1, tzinfo=timezone.utc)


def _secondary(cursor, table: str):
    """The table's indexes (not its primary key or unique constraints) and its
    foreign-key and check constraints, as SQL that recreates each by name."""
    cursor.execute(
        """SELECT i.relname, pg_get_indexdef(x.indexrelid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
           WHERE x.indrelid = %s::regclass AND NOT x.indisprimary
             AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid AND c.contype = 'u')""",
        [table])
    indexes = [(name, sql.replace(" ON ONLY ", " ON ")) for name, sql in cursor.fetchall()]
    cursor.execute("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                   "WHERE conrelid = %s::regclass AND contype IN ('f', 'c')", [table])
    constraints = [(name, f"ALTER TABLE {table} ADD CONSTRAINT {name} {sql}") for name, sql in cursor.fetchall()]
    return indexes, constraints


def _swap(cursor, new: str, indexes, constraints) -> None:
    """Drop the old table, give ``new`` its name, its sequence's name and its
    indexes and constraints; the id sequence continues after the highest id."""
    cursor.execute(f"DROP TABLE {TABLE}")
    cursor.execute(f"ALTER TABLE {new} RENAME TO {TABLE}")
    cursor.execute(f"ALTER TABLE {TABLE} RENAME CONSTRAINT {new}_pkey TO {TABLE}_pkey")
    cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [TABLE])
    cursor.execute(f"ALTER SEQUENCE {cursor.fetchone()[0]} RENAME TO {TABLE}_id_seq")
    cursor.execute(f"SELECT setval('{TABLE}_id_seq', coalesce(max(id), 0) + 1, false) FROM {TABLE}")
    for _name, sql in indexes:
        cursor.execute(sql)
    for _name, sql in constraints:
        cursor.execute(sql)


def partition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as c:
        indexes, constraints = _secondary(c, TABLE)
        new = f"{TABLE}_part"
        c.execute(f"CREATE TABLE {new} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING STORAGE) "
                  "PARTITION BY RANGE (occurred_at)")
        c.execute(f"ALTER TABLE {new} ADD CONSTRAINT {new}_pkey PRIMARY KEY (id, occurred_at)")
        c.execute(f"SELECT min(occurred_at), now() FROM {TABLE}")
        oldest, now = c.fetchone()
        oldest = oldest.astimezone(timezone.utc) if oldest else now.astimezone(timezone.utc)
        now = now.astimezone(timezone.utc)
        lo = _month(oldest.year, oldest.month)
        end = _month(now.year, now.month + AHEAD + 1)
        while lo < end:
            hi = _month(lo.year, lo.month + 1)
            c.execute(f"CREATE TABLE {TABLE}_y{lo:%Y}m{lo:%m} PARTITION OF {new} FOR VALUES FROM (%s) TO (%s)",
                      [lo, hi])
            lo = hi
        c.execute(f"CREATE TABLE {TABLE}_default PARTITION OF {new} DEFAULT")
        c.execute(f"INSERT INTO {new} SELECT * FROM {TABLE}")
        c.execute(f"CREATE TABLE {KEYS} (client_event_id varchar(255) PRIMARY KEY, event_id bigint NOT NULL, "
                  "occurred_at timestamptz NOT NULL)")
        c.execute(f"CREATE INDEX {KEYS}_time_idx ON {KEYS} (occurred_at)")
        c.execute(f"INSERT INTO {KEYS} SELECT client_event_id, id, occurred_at FROM {TABLE}")
        _swap(c, new, indexes, constraints)
        # The look-ups by client id (no longer unique here: martech_event_key is).
        c.execute(f"CREATE INDEX event_client_id_idx ON {TABLE} (client_event_id)")
        c.execute(FUNCTIONS)
        c.execute(TRIGGERS)


def unpartition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as c:
        indexes, constraints = _secondary(c, TABLE)
        indexes = [(name, sql) for name, sql in indexes if name != "event_client_id_idx"]
        c.execute(DROP_KEYS)
        new = f"{TABLE}_plain"
        c.execute(f"CREATE TABLE {new} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING STORAGE)")
        c.execute(f"INSERT INTO {new} SELECT * FROM {TABLE}")
        c.execute(f"ALTER TABLE {new} ADD CONSTRAINT {new}_pkey PRIMARY KEY (id)")
        _swap(c, new, indexes, constraints)
        c.execute(f"ALTER TABLE {TABLE} ADD CONSTRAINT {TABLE}_client_event_id_key UNIQUE (client_event_id)")


class Migration(migrations.Migration):
    atomic = True

    dependencies = [
        ('martech', '0013_event_form_idx'),
        # The touchpoints' foreign key at events is gone first (and back last).
        ('attribution', '0009_touch_event_no_db_constraint'),
    ]

    operations = [
        migrations.RunPython(partition, unpartition),
    ]
