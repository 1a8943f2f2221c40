"""PostgreSQL access: table definitions, engine, migrations."""

from warren.cp.db import tables
from warren.cp.db.engine import make_engine, to_async_url, transaction

__all__ = ["make_engine", "tables", "to_async_url", "transaction"]
