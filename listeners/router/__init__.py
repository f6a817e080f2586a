"""The fan-out router: a bus-to-bus relay that hands each host only its own lifecycle events.

Not part of the agent: `lifecycle-stats-router` runs beside the broker (any number of
replicas); agents with ``[notification_listener] source = router`` bind to its output.
"""
