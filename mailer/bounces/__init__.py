"""Bounces and complaints: DSN and ARF parsing and classification, the inbound receiver,
and the policies that suppress addresses.  Built by the feedback issue; nothing here yet."""
