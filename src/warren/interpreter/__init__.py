"""Warren's code interpreter: the small HTTP server that runs inside a ``code-interpreter-v1``
sandbox on port 49999 and speaks what E2B's ``e2b-code-interpreter`` SDK calls (docs/e2b.md §4):

- ``GET /health``: 200 once the default Python context (a Jupyter kernel) is up, 503 before;
- ``POST /execute``: run code in a context, answered as NDJSON lines streamed as they come
  (``stdout``, ``stderr``, ``result``, ``error``, ``number_of_executions``, ``end_of_execution``);
- ``POST /contexts``, ``GET /contexts``, ``POST /contexts/{id}/restart``, ``DELETE /contexts/{id}``.

It runs in the sandbox, not in Warren: it imports nothing of Warren's outside this package (an
import-linter contract) and only the standard library plus ``jupyter_client`` / ``ipykernel``
(``matplotlib`` for figures). Run it with ``python -m warren.interpreter --port 49999``.
"""
