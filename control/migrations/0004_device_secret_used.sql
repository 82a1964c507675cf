-- When a camera first used its device secret (a relay ticket), unix seconds. After that,
-- a retried activation must present the secret: the secretless retry window (for a camera
-- whose activation answer was lost) is closed, so a stolen QR code cannot take over.
ALTER TABLE devices ADD COLUMN secret_used_at BIGINT;
