"""Hot-path statement of the sign-in rate limits (``services.rate_limits``): one per sign-in
attempt; $1 the keys, $2 now, $3 the window in seconds, $4 whether to sweep dead rows, $5 the
time before which a row is dead."""

# The window restarts at `now` when the stored one has ended; otherwise the count goes up. In
# ON CONFLICT's SET every expression reads the old row, so both CASEs see the same window.
# With $4, dead rows of other keys go too (this check's own keys are left to the upsert: one
# statement must not touch a row twice); without it the DELETE is a one-time filter, no scan.
UPSERT = """
    WITH dead AS (
        DELETE FROM rate_limits
        WHERE $4::boolean AND window_start < $5::timestamptz AND key <> ALL($1::text[])
    )
    INSERT INTO rate_limits AS r (key, window_start, count)
    SELECT k, $2::timestamptz, 1 FROM unnest($1::text[]) AS k
    ON CONFLICT (key) DO UPDATE SET
        window_start = CASE WHEN r.window_start <= $2::timestamptz - make_interval(secs => $3)
                            THEN $2::timestamptz ELSE r.window_start END,
        count = CASE WHEN r.window_start <= $2::timestamptz - make_interval(secs => $3)
                     THEN 1 ELSE least(r.count, 2000000000) + 1 END
    RETURNING key, window_start, count
"""
