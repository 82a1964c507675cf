-- Presence by node lease (issue 9): relays report changes only and renew a lease per node;
-- a device is online while the lease of the node and epoch that reported it is alive
-- (control/src/presence.rs). The connection a device was last reported on orders the events.
ALTER TABLE devices ADD COLUMN presence_node TEXT;
ALTER TABLE devices ADD COLUMN presence_epoch BIGINT;
ALTER TABLE devices ADD COLUMN presence_conn BIGINT;

CREATE TABLE node_leases (
    node_id       TEXT PRIMARY KEY,
    -- the node's incarnation (unix ms at its start); a larger one takes the lease over
    epoch         BIGINT NOT NULL,
    renewed_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);

-- Access revoked recently (control/src/presence.rs): relays learn it from their presence
-- acks, close the matching connections and refuse tickets issued before it. `device_id` alone:
-- a deleted or revoked camera; `subject` alone: every ticket of a user (disabled, deleted,
-- password changed); both: that user's access to that camera (a share revoked). Pruned after
-- an hour, longer than any ticket lives.
CREATE TABLE revocations (
    subject       TEXT,
    device_id     TEXT,
    revoked_at_ms BIGINT NOT NULL
);
CREATE INDEX revocations_at ON revocations (revoked_at_ms);
