from martech.schedules import Periodic

SCHEDULES = [
    # Markov and Shapley learn from all journeys; between full runs the incremental tasks reuse these values.
    Periodic(name="attribution_recompute_all", func="attribution.tasks.attribution_recompute_all", cron="30 2 * * *"),
]
