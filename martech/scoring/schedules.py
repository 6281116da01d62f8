from martech.schedules import Periodic

SCHEDULES = [
    # Decay lowers engagement points with age, and stale MQLs are flagged.
    Periodic(name="scoring-nightly-decay", func="martech.scoring.tasks.nightly_decay", cron="30 2 * * *"),
]
