"""Hot-path statements of the preview proxy (docs/networking.md §3): one per proxied request
whose sandbox the proxy has not read in the last ``proxy_cache_s``."""

# A sandbox by id alone (the proxy authenticates by traffic token, not by team), with what the
# access rules need and its host's address; $1 sandbox.
PREVIEW_LOOKUP = """
    SELECT s.id, s.team_id, s.status, s.traffic_token_hash, s.public_ports, s.auto_resume,
           s.timeout_sec, s.all_ports_public, h.id AS h_id, h.address AS h_address,
           -- the proxy's per-owner bound (cp/proxy/bounds.py)
           (SELECT o.user_id FROM users_teams o WHERE o.team_id = s.team_id AND o.role = 'owner' LIMIT 1)
               AS owner_id
    FROM sandboxes s LEFT JOIN hosts h ON h.id = s.host_id
    WHERE s.id = $1
"""
