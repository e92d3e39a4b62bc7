"""Alembic migrations: the only way the schema is made. ``recording-agi db upgrade`` runs them;
each is written or reviewed by hand and names every constraint."""
