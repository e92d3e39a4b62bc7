"""Alembic's entry point. The database URL comes from the service's own settings
(RECORDING_DATABASE_URL), unless the caller hands over a connection, as the CLI does."""

import warnings

from alembic import context
from sqlalchemy.exc import SAWarning

from recording.ops.config import Settings
from recording.storage.models import Base
from recording.storage.store import Store, normalize_url

config = context.config


def run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # NOTE: SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction(), warnings.catch_warnings():
        # A batch rebuild of recording_legs reflects the tables its foreign keys name, and
        # SQLite's reflection cannot read the expression index on users (lower(login)); that
        # index is not rebuilt, so the warning a user sees on first start says nothing true.
        warnings.filterwarnings("ignore", "Skipped unsupported reflection", SAWarning)
        context.run_migrations()


def url() -> str:
    return normalize_url(config.get_main_option("sqlalchemy.url") or Settings.load().database_url)


if context.is_offline_mode():
    context.configure(url=url(), target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif config.attributes.get("connection") is not None:
    run(config.attributes["connection"])
else:
    store = Store(url())
    try:
        with store.migrating() as connection:
            run(connection)
    finally:
        store.close()
