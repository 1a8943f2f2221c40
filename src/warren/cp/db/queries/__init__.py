"""The hot-path statements: SQL text with ``$n`` parameters, one module per resource, run on the
raw driver connection (``warren.cp.db.engine.driver``). A statement lives here when it runs on
every request or every create; everything else is SQLAlchemy Core in its service
(docs/architecture.md, "Database conventions").

Services refer to them through the module (``q.MARK_RUNNING``), so a test can swap one."""
