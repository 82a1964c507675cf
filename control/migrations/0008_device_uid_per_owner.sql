-- Issue 11 #8: `device_uid` is what a camera says about itself, not proof of which camera
-- it is (anyone can send any uid), so it cannot be a global key: a stranger activating a
-- victim's uid first would lock the real owner out and the 409 would tell that the uid
-- exists. It is unique per owner (one account re-onboarding a camera replaces its older
-- entry) and never across accounts. A camera proves it is an older registration only by
-- presenting that registration's device secret (transfer on reset, see docs/onboarding.md).
DROP INDEX IF EXISTS devices_device_uid;
CREATE UNIQUE INDEX devices_owner_device_uid ON devices (owner_id, device_uid);
