"""REST API under ``/api/v1``: API-key authentication, JSON, errors with a stable code.

Routers call the domain services and hold no business rules.
"""
