from martech.schedules import Periodic

SCHEDULES = [
    # The sweep of the touchpoint rebuilds a lost wake-up left (tasks.touchpoints_woken, woken per new events).
    Periodic(name="attribution.touchpoints_sweep", func="attribution.tasks.touchpoints_woken", minutes=1, bulk=True),
    # Markov and Shapley learn from all journeys; between full runs the incremental tasks reuse these values.
    Periodic(name="attribution_recompute_all", func="attribution.tasks.attribution_recompute_all", cron="30 2 * * *",
             bulk=True),
    # The ECB publishes its reference rates around 16:00 CET on working days; a rate fetched twice changes nothing.
    Periodic(name="exchange_rates_fetch", func="attribution.tasks.exchange_rates_fetch", cron="30 16 * * *",
             bulk=True),
    # One snapshot a day; the last one before a month begins is what accuracy measures against.
    Periodic(name="forecast_snapshot", func="attribution.tasks.forecast_snapshot", cron="50 23 * * *", bulk=True),
]
