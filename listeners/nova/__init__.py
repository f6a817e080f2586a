"""The nova side: the notifier driver loaded into nova-compute and the wire protocol it shares
with the hook server. Runs inside nova: imports nothing of the core."""
