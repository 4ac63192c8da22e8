"""Scheduler: periodic jobs (start due campaigns, recover stalled sends) and, later,
triggers and automations.  ``mailer serve`` runs the loop in-process; at scale one
``mailer worker --scheduler`` runs it.  Every job is idempotent, so two loops are harmless."""
