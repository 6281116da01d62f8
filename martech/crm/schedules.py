from martech.schedules import Periodic

SCHEDULES = [
    Periodic(name="crm-drain-outbox", func="martech.crm.tasks.drain_outbox", minutes=1),
    Periodic(name="crm-pull", func="martech.crm.tasks.pull_all", minutes=5, bulk=True),
    # Segment mirrors whose membership changed with no write (conditions on time).
    Periodic(name="crm-lists-sweep", func="martech.crm.tasks.lists_sweep", minutes=5, bulk=True),
]
