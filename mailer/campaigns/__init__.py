"""Campaigns: the campaign state machine, the planner that snapshots the audience into the
ledger, and the send pipeline run by the workers (``pipeline.py``, actors in ``tasks.py``)."""
