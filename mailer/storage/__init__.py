"""Storage: the database engine and sessions (SQLite with WAL, or PostgreSQL) and migrations.

Domain packages declare their tables in their own ``models.py`` on SQLModel's metadata;
:func:`load_models` discovers them by name so this package never imports a higher one.
"""
