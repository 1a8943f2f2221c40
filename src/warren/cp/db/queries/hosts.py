"""Hot-path statements about hosts: the scheduler's candidate list, read on every create."""


def candidates(team: str, is_byoc: str, layers: str) -> str:
    """The hosts a team may use (``id``, ``address``, capacity, ``runtimes``, ``default_runtime``,
    ``disk_free_bytes``, ``warm_pools``, ``last_heartbeat_at``, ``created_at``), ordered by age
    (ties by id) so the rotation is stable as hosts come and go, each with what its active
    sandboxes and running build steps take (``used_vcpus``, ``used_memory_mb``:
    ``warren_host_usage``, migration 0020, memory at footprints since 0021, the one rule; the
    scheduler's room check, ``scheduler.fits``; warren_reserve_sandbox and warren_reserve_build
    have the last word) and, for the template's store layers (bottom first), what it already
    holds of them (``host_layers``): ``held_bytes``, and ``missing``, the layers it lacks, in
    chain order. ``team``, ``is_byoc`` (its own hosts only; else the platform's) and ``layers``
    are SQL expressions: parameters here, the resolved team's and template's columns in
    ``queries.sandboxes.RESOLVE``, which reads the candidates in the same statement."""
    # Only the columns the choice and the call read (``scheduler``, ``client_pool.get``): every
    # column more is decoded on every create, a JSONB one by Python's json.loads.
    return f"""
    SELECT h.id, h.address, h.cpu_cores, h.memory_mb, h.runtimes, h.default_runtime, h.disk_free_bytes,
           h.warm_pools, h.last_heartbeat_at, h.created_at, u.vcpus AS used_vcpus,
           u.memory_mb AS used_memory_mb,
           l.held_bytes, coalesce(l.missing, '{{}}'::text[]) AS missing
    FROM hosts h
    CROSS JOIN LATERAL warren_host_usage(h.id) u
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(ly.size_bytes) FILTER (WHERE hl.digest IS NOT NULL), 0) AS held_bytes,
               array_agg(d.digest ORDER BY d.ord) FILTER (WHERE hl.digest IS NULL) AS missing
        FROM unnest(coalesce({layers}, '{{}}'::text[])) WITH ORDINALITY AS d(digest, ord)
        LEFT JOIN host_layers hl ON hl.host_id = h.id AND hl.digest = d.digest
        LEFT JOIN layers ly ON ly.digest = d.digest
    ) l
    WHERE h.status = 'online' AND h.address <> ''
      AND CASE WHEN {is_byoc} THEN h.type = 'byoc' AND h.team_id = {team} ELSE h.type = 'regular' END
    ORDER BY h.created_at, h.id
"""  # noqa: S608 - SQL expressions from this package only, no input


# $1 team, $2 whether it is BYOC, $3 the template's store layers (empty: none).
ELIGIBLE = candidates("$1::uuid", "$2::bool", "$3::text[]")
