-- Rate-limit counters shared by every vc-control instance on this database: one row per
-- bucket (e.g. `login:pair:<email>|<client>`), counting attempts in a fixed window that
-- started at `window_start` (unix seconds). Rows whose window ended are pruned.

CREATE TABLE rate_limits (
    bucket       TEXT PRIMARY KEY,
    window_start BIGINT NOT NULL,
    hits         BIGINT NOT NULL
);

CREATE INDEX rate_limits_window ON rate_limits (window_start);
