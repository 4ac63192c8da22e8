"""Outbound signed webhooks with retries.  Built by the integrations issue; nothing here yet."""
