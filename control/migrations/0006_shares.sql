-- Camera sharing (issue 12): an owner gives another account viewer access to one camera.
-- `email` is the normalised address the owner typed; `user_id` the account it named when
-- invited. An address with no account is stored as a pending row (user_id NULL) that grants
-- nothing but looks the same to the owner, so inviting cannot enumerate accounts; inviting
-- the address again once it has an account binds it. Nothing is ever bound at registration:
-- emails are not verified, so registering an invited address must not be enough to watch.
-- Deleting the camera or the invitee's account deletes the share.
CREATE TABLE device_shares (
    id         TEXT PRIMARY KEY,
    device_id  TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    email      TEXT NOT NULL,
    user_id    TEXT REFERENCES users (id) ON DELETE CASCADE,
    role       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX device_shares_device_email ON device_shares (device_id, email);
CREATE INDEX device_shares_user ON device_shares (user_id, device_id);
