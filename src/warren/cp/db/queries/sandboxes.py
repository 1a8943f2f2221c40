"""Hot-path statements about sandboxes: the per-sandbox lookup behind every verb (exec and file
calls included), the list, and the create and destroy (two statements before the create's RPC
and one after; two and one for a destroy)."""

from warren.cp.db import end_reasons
from warren.cp.db.queries import hosts

# The team's sandbox and its host in one round trip: $1 sandbox, $2 team (another team's
# sandbox is not found, exactly like an unknown id). ``h_id`` is NULL when the host row is gone.
LOOKUP = """
    SELECT s.*, h.id AS h_id, h.address AS h_address
    FROM sandboxes s LEFT JOIN hosts h ON h.id = s.host_id
    WHERE s.id = $1 AND s.team_id = $2
"""

# LOOKUP with only what the unary exec reads (the status check, the touch, the host): the
# other columns (two of them JSONB) were decoded on every exec for nobody.
LOOKUP_BRIEF = """
    SELECT s.id, s.status, s.last_active_at, s.host_id, h.id AS h_id, h.address AS h_address
    FROM sandboxes s LEFT JOIN hosts h ON h.id = s.host_id
    WHERE s.id = $1 AND s.team_id = $2
"""

# Any team's sandbox by id: the envd plane authenticates by the sandbox's own token
# (services/envd_access.py) and learns the team from the row.
LOOKUP_BY_ID = """
    SELECT s.*, h.id AS h_id, h.address AS h_address,
           (SELECT o.user_id FROM users_teams o WHERE o.team_id = s.team_id AND o.role = 'owner' LIMIT 1)
               AS team_owner_id  -- per-owner stream bounds (services/stream_slots.py)
    FROM sandboxes s LEFT JOIN hosts h ON h.id = s.host_id
    WHERE s.id = $1
"""

# The team's sandboxes but those with a status in $2 (the hidden ones), newest first.
LIST = """
    SELECT id, status, template, vcpus, memory_mb, disk_size_mb, timeout_sec, internet, guest_ip,
           host_ip, created_at, started_at, last_active_at, last_updated, runtime, paused_state
    FROM sandboxes
    WHERE team_id = $1 AND status <> ALL($2::text[])
    ORDER BY created_at DESC, id DESC
"""

BY_ID = "SELECT * FROM sandboxes WHERE id = $1"

# Exec activity: $1 sandbox, $2 now; only while it runs.
TOUCH = "UPDATE sandboxes SET last_active_at = $2 WHERE id = $1 AND status = 'running'"

# ------------------------------------------------------------------------------------ create

# The live team $2 with its quotas and egress names, the admin-set platform limits, the
# template version named $1 (the team's own, else the platform's) and the hosts the team may
# place it on, in one round trip: with a tag $3, the newest version carrying it (every version
# answers to `v<version>`), without one the newest version. One row per candidate host (the
# ``candidates`` columns, in their order; ``id`` is the host's), or one with NULL host columns
# when there is none; no row: the team is gone.
RESOLVE = (
    """
    SELECT t.is_byoc, t.quota_sandboxes, t.quota_vcpus, t.quota_memory_mb, t.quota_snapshots,
           t.quota_snapshot_mb, t.quota_store_mb, t.egress_allow,
           (SELECT array_agg(key ORDER BY key) FROM platform_limits) AS limit_keys,
           (SELECT array_agg(value ORDER BY key) FROM platform_limits) AS limit_values,
           tpl.id AS template_id, tpl.team_id AS template_team_id, tpl.type AS template_type,
           tpl.vcpus AS template_vcpus, tpl.memory_mb AS template_memory_mb,
           tpl.host_id AS template_host_id, tpl.base AS template_base, tpl.layers AS template_layers,
           tpl.config::text AS template_config, tpl.snapshot_kind AS template_kind, c.*
    FROM teams t
    LEFT JOIN LATERAL (
        SELECT id, team_id, type, vcpus, memory_mb, host_id, base, layers, config, snapshot_kind
        FROM templates
        WHERE name = $1 AND team_id IN ($2, '00000000-0000-0000-0000-000000000000'::uuid)
          AND ($3::text = '' OR $3 = ANY(tags) OR $3 = 'v' || version)
        -- the team's own template wins; naming rules keep the two from clashing anyway
        ORDER BY (team_id = $2) DESC, version DESC
        LIMIT 1
    ) tpl ON true
    LEFT JOIN LATERAL ("""  # noqa: S608 - module constants only, no input
    + hosts.candidates("t.id", "t.is_byoc", "tpl.layers")
    + """) c ON true
    WHERE t.id = $2 AND t.deleted_at IS NULL
    ORDER BY c.created_at, c.id
"""
)

# Inserts the pending row only while the chosen host is still online, the team live, the
# team within its quotas and the host within its capacity: warren_reserve_sandbox (migration
# 0003, its body in 0011 since) checks all four under the team's and the host's row locks. A
# host delete first flips the host to `draining` under its row lock, and a team delete stops
# the team's sandboxes under the team's row lock, so a create either lands before (and is
# counted and stopped) or finds the host or team gone — never in between; and parallel creates
# cannot all squeeze past a quota or into a host's last slot. The row carries, from the same
# insert, $18 the replica making the create (NULL: none; for the host monitor, migration
# 0010), $19 its runtime and $20 its egress rules (NULL: none; migration 0011).
RESERVE = """
    SELECT * FROM warren_reserve_sandbox(
        $1::uuid, $2::uuid, $3::uuid, $4::text, $5::int, $6::int, $7::int, $8::int, $9::bool,
        $10::timestamptz, $11::uuid, $12::uuid, $13::int, $14::int, $15::int, $16::float8,
        $17::float8, $18::uuid, $19::text, $20::jsonb)
"""

# The agent refused: $1 sandbox, $2 now; only while still pending (end_reasons.CREATE_FAILED).
MARK_FAILED = """
    UPDATE sandboxes SET status = 'error', last_updated = $2, end_reason = $3
    WHERE id = $1 AND status = 'pending'
"""

# The columns of a sandbox as the API shows it (``services.sandboxes.sandbox_model``): what the
# create's last statement returns, rather than every column (each is decoded on every create).
VIEW_COLUMNS = (
    "id, status, template, vcpus, memory_mb, disk_size_mb, timeout_sec, internet, runtime, "
    "paused_state, guest_ip, host_ip, created_at, started_at, last_active_at, last_updated, "
    "public_ports, auto_resume"
)

# Marks it running and writes the audit row in one statement (one round trip, atomic) — only
# while it is still `pending` and its team live.
MARK_RUNNING = (
    """
    WITH u AS (
        UPDATE sandboxes
        SET status = 'running', host_ip = $2, started_at = $3, last_active_at = $3, last_updated = $3,
            disk_size_mb = $11, traffic_token_hash = $12, metadata = $13::jsonb, end_at = $14,
            on_end = $15, all_ports_public = $16
        WHERE id = $1 AND status = 'pending'
          AND EXISTS (SELECT 1 FROM teams WHERE id = $5 AND deleted_at IS NULL)
        RETURNING """  # noqa: S608 - module constants only, no input
    + VIEW_COLUMNS
    + """
    ), a AS (
        INSERT INTO audit_logs (id, team_id, actor_type, actor_id, actor_name, resource_type,
                                resource_id, action, scope, status, metadata, created_at)
        SELECT $4, $5, $6, $7, $8, 'sandbox', $9, 'create', 'team', 'success', $10::jsonb, $3
        FROM u
    )
    SELECT * FROM u
"""
)

TEAM_LIVE = "SELECT deleted_at IS NULL FROM teams WHERE id = $1"

# ----------------------------------------------------------------------------------- destroy

# Marks it stopped with why ($11, end_reasons; an ended one keeps the reason it ended with),
# drops the saved samples of a paused one ($3: they have no reader any more) and writes the
# audit row, in one statement. The destroy read the sandbox as not ended: one the host monitor
# found gone since (``gone_from_host``) most likely went with the destroy's own RPC (a pass
# between the RPC and this mark), so the destroy's reason replaces that one.
MARK_DESTROYED = f"""
    WITH u AS (
        UPDATE sandboxes SET status = 'stopped', last_updated = $2,
            end_reason = CASE WHEN status IN ('stopped', 'error')
                              AND end_reason IS DISTINCT FROM '{end_reasons.GONE_FROM_HOST}'
                              THEN end_reason ELSE $11 END
        WHERE id = $1 RETURNING id
    ), m AS (
        DELETE FROM sandbox_metric_points WHERE $3 AND sandbox_id IN (SELECT id FROM u)
    ), a AS (
        INSERT INTO audit_logs (id, team_id, actor_type, actor_id, actor_name, resource_type,
                                resource_id, action, scope, status, metadata, created_at)
        VALUES ($4, $5, $6, $7, $8, 'sandbox', $9, 'destroy', 'team', 'success', $10::jsonb, $2)
    )
    SELECT count(*) FROM u
"""  # noqa: S608 - an end_reasons constant, no input
