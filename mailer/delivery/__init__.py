"""E-mail transport: MIME assembly, DKIM signing, the SMTP relay transport and the built-in
capture relay; sending domains and their keys.  It moves messages and reports what it saw
as values (``DeliveryResult``); the business reaction lives above it."""
