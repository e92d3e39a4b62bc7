"""Storage: the database (models, store, its hot path), the journal that keeps writes while the
database is away, group commit, and the directory of users and the apiKey hash held in memory.
Imports nothing from the doors or from the service."""
