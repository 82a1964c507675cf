-- One schema for SQLite and Postgres: only TEXT and BIGINT columns (ids are UUID text,
-- times are unix seconds), so the same file migrates both through sqlx's Any driver.

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);

CREATE TABLE camera_models (
    code           TEXT PRIMARY KEY,
    display_name   TEXT NOT NULL,
    audio          BIGINT NOT NULL,
    ptz            BIGINT NOT NULL,
    max_resolution TEXT NOT NULL,
    night_vision   BIGINT NOT NULL,
    sort_order     BIGINT NOT NULL
);

INSERT INTO camera_models (code, display_name, audio, ptz, max_resolution, night_vision, sort_order) VALUES
    ('CP_PLUS_WIFI_V2', 'CP Plus Wi-Fi Camera V2', 1, 0, '1920x1080', 1, 1),
    ('CP_PLUS_PTZ_4MP', 'CP Plus PTZ Dome 4MP', 1, 1, '2560x1440', 1, 2),
    ('GENERIC_ONVIF_720P', 'Generic ONVIF 720p', 0, 0, '1280x720', 0, 3);

CREATE TABLE devices (
    id               TEXT PRIMARY KEY,
    owner_id         TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    device_name      TEXT NOT NULL,
    camera_model     TEXT NOT NULL REFERENCES camera_models (code),
    -- pending (onboarded, not activated) | offline (activated) | online (camera connected)
    status           TEXT NOT NULL,
    token_hash       TEXT NOT NULL UNIQUE,
    token_expires_at BIGINT NOT NULL,
    device_uid       TEXT,
    secret_hash      TEXT,
    local_ip         TEXT,
    created_at       BIGINT NOT NULL,
    activated_at     BIGINT,
    last_seen        BIGINT,
    -- relay clock (unix ms) of the last presence event applied, to ignore reordered reports
    presence_at_ms   BIGINT
);

-- One active registration per physical camera; NULLs (pending rows) do not collide.
CREATE UNIQUE INDEX devices_device_uid ON devices (device_uid);
CREATE INDEX devices_owner ON devices (owner_id, created_at);
