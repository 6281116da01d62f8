from martech.schedules import Periodic

SCHEDULES = [
    # Every minute: a due step waits at most about a minute plus the batch time.
    Periodic(name="nurture.advance_due", func="nurture.tasks.advance_due", minutes=1),
    # The "entering a segment" trigger: an entry is seen within a minute.
    Periodic(name="nurture.segments_sync", func="nurture.tasks.segments_sync", minutes=1),
    Periodic(name="nurture.recover_messages", func="nurture.tasks.recover_messages", minutes=10),
]
