"""The daemon's flow: watch the inbox, take drops in, wait for the gates, run workers, register, report."""
