"""Cleaning: a verdict on one address judged by itself (syntax now; DNS, disposable, role
and typo checks arrive with the audience issue).  Duplicates and suppression are
``audience``'s business, which combines them with this verdict."""
