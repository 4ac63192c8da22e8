"""Audience: contacts, lists, channel status, import.

Segments, consent, suppression and the full cleaning workflow are built on these tables by
the audience issue.
"""
