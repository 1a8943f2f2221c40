"""Warren's test suite. A package so that the shared harness imports as ``tests.harness`` from
every suite (pytest puts the repository root on ``sys.path`` for this package's conftest)."""
