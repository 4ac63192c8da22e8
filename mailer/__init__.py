"""mailer: a self-hosted email marketing and bulk messaging engine with an SMS channel.

The package is cut by domain (see DESIGN.md); dependencies point downwards only:
interfaces (api, web, cli, workers) -> scheduler -> campaigns, webhooks -> tracking,
bounces, analytics -> audience, accounts -> cleaning, content, delivery, sms, events,
messages -> storage -> core.  The import-linter contract in setup.cfg checks it.
"""

__version__ = "0.1.0"
