"""The message ledger: one row per recipient per send (campaign or API, e-mail or SMS).

It answers "who got it, who did not, and why", and is what makes resume, retry and exact
counts possible.  Rows are created and updated in bulk, never one commit per message.
"""
