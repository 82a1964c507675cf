-- Audit log (issue 12): every admin action and security-relevant event, with who did it, to
-- what, when and from where. Never secrets: `detail` is a short JSON object of non-secret
-- facts. `actor_id` / `target_id` are kept as text without foreign keys, so the trail outlives
-- a deleted account (whose personal data, the email, is not copied here).
CREATE TABLE audit_log (
    id         TEXT PRIMARY KEY,
    at         BIGINT NOT NULL,
    actor_id   TEXT,
    action     TEXT NOT NULL,
    target_id  TEXT,
    client_ip  TEXT,
    detail     TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at, id);
