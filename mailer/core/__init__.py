"""Core: configuration, errors, ids and signed tokens, clock, DNS, value types, ports.

Nothing here imports another mailer package.
"""
