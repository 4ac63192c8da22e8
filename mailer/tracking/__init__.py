"""Tracking: the links that come back to us from a message.  For now the unsubscribe link
and its RFC 8058 one-click endpoint; opens, clicks and the web version arrive with the
feedback issue.  Tokens are HMAC-signed (``mailer.core.tokens``)."""
