from martech.schedules import Periodic

SCHEDULES = [
    Periodic(name="crm-drain-outbox", func="martech.crm.tasks.drain_outbox", minutes=1),
    Periodic(name="crm-pull", func="martech.crm.tasks.pull_all", minutes=5),
]
