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

-- Devices deleted (or revoked) recently: relays learn them from their presence acks and close
-- the cameras' connections. Pruned after an hour (control/src/presence.rs).
CREATE TABLE device_revocations (
    device_id     TEXT NOT NULL,
    revoked_at_ms BIGINT NOT NULL
);
CREATE INDEX device_revocations_at ON device_revocations (revoked_at_ms);
