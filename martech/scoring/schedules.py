from martech.schedules import Periodic

SCHEDULES = [
    # Decay lowers engagement points with age, and stale MQLs are flagged.
    # A move to SQL whose handoff a lost wake-up left (the capture task or
    # handoff_start crashed, a worker died): started within about a minute.
    Periodic(name="scoring-handoffs-sweep", func="martech.scoring.tasks.handoffs_sweep", minutes=1),
    # Handoff notifications a lost wake-up left, and the failed ones tried again.
    Periodic(name="scoring-handoffs-notify-sweep", func="martech.scoring.tasks.handoffs_notify_sweep", minutes=1),
    Periodic(name="scoring-nightly-decay", func="martech.scoring.tasks.nightly_decay", cron="30 2 * * *",
             bulk=True),
]
