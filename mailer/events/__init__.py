"""The append-only event log: what happened to each message (sent, deferred, failed, and
later opened, clicked, bounced...).  Written in bulk; analytics reads it."""
