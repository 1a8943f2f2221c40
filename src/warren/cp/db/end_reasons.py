"""Why a sandbox ended: the closed vocabulary of ``sandboxes.end_reason`` (migration 0022).

Each statement that moves a sandbox to ``stopped`` or ``error`` sets one of these in the same
statement, and only where the status actually changes there: the first path to end a sandbox
gives the reason, a later one never overwrites it. NULL while the sandbox is active (and on
rows that ended before the column existed). docs/api.md §2 says what each means to a tenant.
Here (not in ``services``) so ``cp.hosts`` (the monitor) can name them too.
"""

from __future__ import annotations

from typing import Final

DELETED: Final = "deleted"  # DELETE /v1/sandboxes/{id} (or E2B kill, the dashboard's destroy)
LIFETIME_ENDED: Final = "lifetime_ended"  # its end_at passed (E2B timeout) with on_end 'kill'
TEAM_DELETED: Final = "team_deleted"  # its team was deleted
HOST_DELETED: Final = "host_deleted"  # its host was deleted (with ?force=true)
HOST_LOST: Final = "host_lost"  # its host stopped heartbeating, came back without it
GONE_FROM_HOST: Final = "gone_from_host"  # its agent no longer has it (the container ended)
CREATE_FAILED: Final = "create_failed"  # its create failed or was abandoned (status 'error')

ALL: Final = (DELETED, LIFETIME_ENDED, TEAM_DELETED, HOST_DELETED, HOST_LOST, GONE_FROM_HOST, CREATE_FAILED)
