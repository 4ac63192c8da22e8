"""Accounts: tenants and sub-accounts, users and roles, API keys, the audit log.

Passwords are hashed with argon2; API keys are shown once and stored as SHA-256 hashes
(they are long random secrets, so a slow hash adds nothing).  Role checks live in
:mod:`mailer.accounts.roles` and every interface calls them.
"""
