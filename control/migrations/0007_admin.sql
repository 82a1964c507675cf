-- Roles and account lifecycle (issue 12). `tokens_valid_after` (unix seconds): login JWTs
-- whose `iat` is before it are refused, so a password change or a disable ends every
-- existing session with one write. `revoked_jwts` holds logged-out tokens by `jti` until
-- they would have expired anyway (then pruned).
ALTER TABLE users ADD COLUMN role TEXT NOT NULL DEFAULT 'user';
ALTER TABLE users ADD COLUMN disabled_at BIGINT;
ALTER TABLE users ADD COLUMN last_login_at BIGINT;
ALTER TABLE users ADD COLUMN tokens_valid_after BIGINT NOT NULL DEFAULT 0;

CREATE TABLE revoked_jwts (
    jti        TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE INDEX revoked_jwts_expires ON revoked_jwts (expires_at);

-- Fleet-wide admin filters.
CREATE INDEX devices_model ON devices (camera_model, id);
CREATE INDEX devices_node ON devices (presence_node, id);
