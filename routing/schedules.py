from martech.schedules import Periodic

SCHEDULES = [
    Periodic(name="routing.assign_waiting", func="routing.tasks.assign_waiting", minutes=1),
    Periodic(name="routing.escalate_sla", func="routing.tasks.escalate_sla", minutes=5),
    Periodic(name="routing.sweep_unrouted", func="routing.tasks.sweep_unrouted", minutes=10),
]
