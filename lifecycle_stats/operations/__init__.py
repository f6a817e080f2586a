"""Operating the agent: the status file, metrics and their exposition, SIGHUP reload and
systemd readiness. Beside the data flow, never in it."""
