"""Write paths of the core. Admin, API, tasks, commands and tests all call
these functions; there is one write path per change (docs/style.md, 1)."""
