"""Cleaning: a verdict on one e-mail address or phone number, judged by itself.

``verdicts`` holds the values (valid / risky / invalid / unknown and the reasons, with their
Spanish labels); ``service`` the checks that need no I/O (syntax, role accounts, disposable
domains, typos) and ``judge``, which combines them with the DNS verdict; ``dns`` asks DNS
about domains (MX, implicit MX, null MX, NXDOMAIN, no mail host, DNS trouble) once each;
``phones`` checks phone numbers.  Duplicates and suppression are ``audience``'s business,
which combines them with these verdicts.
"""
