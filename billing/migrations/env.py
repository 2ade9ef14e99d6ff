"""Alembic environment: runs the billing migrations against the URL `billing.db.upgrade` was given."""
from alembic import context

from billing.db import Deadlines, make_engine
from billing.models import metadata

url = context.config.get_main_option("sqlalchemy.url")
engine = make_engine(url, Deadlines(statement_s=3600, use_s=3600))  # a migration may take long
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=engine.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
