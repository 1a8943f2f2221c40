"""Hot-path statements of request authentication (``services.authn``): one per request, the
hottest statements of the CP."""

# A user's row and their role in the team of the token ($1 user, $2 team), and whether that
# team is live.
JWT_CHECK = """
    SELECT u.email, u.name, u.is_admin, ut.role, (t.id IS NOT NULL AND t.deleted_at IS NULL) AS team_live,
           (SELECT o.user_id FROM users_teams o WHERE o.team_id = $2 AND o.role = 'owner' LIMIT 1) AS owner_id
    FROM users u
    LEFT JOIN users_teams ut ON ut.user_id = u.id AND ut.team_id = $2
    LEFT JOIN teams t ON t.id = $2
    WHERE u.id = $1
"""

# Looks the key up through the unique index on key_hash and bumps last_used in the same
# statement. JSON timestamps have one-second precision, so last_used is written at most once a
# second per key: a hot key's reads then stay read-only transactions (no WAL flush, no row lock
# queue) while last_used remains exact at the precision anyone can observe. One statement, so
# it is atomic on its own (its own implicit transaction) without BEGIN/COMMIT round trips.
API_KEY_CHECK = """
    WITH k AS (
        SELECT k.id, k.team_id, k.name, k.last_used
        FROM team_api_keys k JOIN teams t ON t.id = k.team_id
        WHERE k.key_hash = $1 AND t.deleted_at IS NULL
    ), touched AS (
        UPDATE team_api_keys SET last_used = $2
        FROM k
        WHERE team_api_keys.id = k.id
          AND (k.last_used IS NULL OR k.last_used <= $2::timestamptz - interval '1 second')
        RETURNING 1
    )
    SELECT id, team_id, name,
           (SELECT o.user_id FROM users_teams o WHERE o.team_id = k.team_id AND o.role = 'owner' LIMIT 1)
    FROM k
"""

# The team's owner (one per team, never changed: services/teams.py).
TEAM_OWNER = "SELECT user_id FROM users_teams WHERE team_id = $1 AND role = 'owner' LIMIT 1"
