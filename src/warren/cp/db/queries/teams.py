"""Hot-path statements about teams: the caller's role in a team, read by every team request,
and the member list."""

# The team $1 and the role in it of user $2 (NULL when not a member). The mutations append
# ``FOR UPDATE OF t`` to lock the team row for their transaction.
TEAM_AND_ROLE = """
    SELECT t.id, t.name, t.slug, t.is_byoc, t.created_at, t.deleted_at, ut.role
    FROM teams t
    LEFT JOIN users_teams ut ON ut.team_id = t.id AND ut.user_id = $2
    WHERE t.id = $1
"""
MEMBERS = """
    SELECT ut.user_id, u.name, u.email, ut.role, ut.created_at AS joined_at
    FROM users_teams ut JOIN users u ON u.id = ut.user_id
    WHERE ut.team_id = $1
    ORDER BY ut.created_at, ut.user_id
"""
