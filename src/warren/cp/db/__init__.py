"""PostgreSQL access: table definitions, engine, connection helpers, hot-path queries,
migrations. The conventions are in docs/architecture.md ("Database conventions")."""

from warren.cp.db import tables
from warren.cp.db.engine import autocommit, driver, make_engine, to_async_url, transaction

__all__ = ["autocommit", "driver", "make_engine", "tables", "to_async_url", "transaction"]
