"""One job in its own process (``python -m lorainbox.worker JOBDIR``): train, export, report as JSON lines."""
