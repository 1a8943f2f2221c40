"""Alembic environment for the control-plane schema (run through ``warren.cp.db.migrate``)."""
