"""Hot-path statements about hosts: the scheduler's candidate list, read on every create."""

# The hosts a team may use, ordered by age (ties by id) so the rotation is stable as hosts come
# and go, each with ``fits``: room for $3 vCPUs and $4 MiB at overcommit ratios $5 (CPU) and $6
# (memory). The same rule as warren_reserve_sandbox (migration 0003), which has the last word.
# $1 team, $2 whether the team is BYOC (its own hosts only; else the platform's).
_COLUMNS = """
    SELECT h.*,
           (h.cpu_cores <= 0 OR u.vcpus + $3 <= h.cpu_cores * $5::float8)
           AND (h.memory_mb <= 0 OR u.memory_mb + $4 <= h.memory_mb * $6::float8) AS fits
"""
_FROM = """
    FROM hosts h
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(s.vcpus), 0) AS vcpus, coalesce(sum(s.memory_mb), 0) AS memory_mb
        FROM sandboxes s
        WHERE s.host_id = h.id AND s.status NOT IN ('stopped', 'error')
    ) u
"""
_WHERE = """
    WHERE h.status = 'online' AND h.address <> ''
      AND CASE WHEN $2 THEN h.type = 'byoc' AND h.team_id = $1 ELSE h.type = 'regular' END
    ORDER BY h.created_at, h.id
"""

ELIGIBLE = _COLUMNS + _FROM + _WHERE

# The same for a template made of store layers $7 (bottom first), with what each host already
# holds of them (``host_layers``): ``held_bytes``, and ``missing``, the layers it lacks, in
# chain order. Creates from `minimal` keep to ELIGIBLE.
ELIGIBLE_WITH_LAYERS = (
    _COLUMNS  # noqa: S608 - module constants only, no input
    + """,
           l.held_bytes, coalesce(l.missing, '{}'::text[]) AS missing
"""
    + _FROM
    + """
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(ly.size_bytes) FILTER (WHERE hl.digest IS NOT NULL), 0) AS held_bytes,
               array_agg(d.digest ORDER BY d.ord) FILTER (WHERE hl.digest IS NULL) AS missing
        FROM unnest($7::text[]) WITH ORDINALITY AS d(digest, ord)
        LEFT JOIN host_layers hl ON hl.host_id = h.id AND hl.digest = d.digest
        LEFT JOIN layers ly ON ly.digest = d.digest
    ) l
"""
    + _WHERE
)
