"""Alembic revisions. A package so that they ship inside the wheel like any module."""
