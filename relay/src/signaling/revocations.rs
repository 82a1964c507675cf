//! Access revoked recently, as vc-control lists it in presence acks
//! (`shared::api::Revocation`). The relay verifies tickets by signature alone, so without this a
//! ticket issued before a camera was deleted, a user disabled or a share revoked would keep
//! working until it expires. A ticket issued (`iat`) at or before a matching revocation is
//! refused. Entries are dropped after `keep` (longer than any ticket lives), so the table holds
//! at most the revocations of that window.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use shared::api::Revocation;
use shared::ticket::{Role, SignalingClaims};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    /// Every ticket of a user.
    User(String),
    /// A camera's tickets.
    Device(Uuid),
    /// One user's access to one camera.
    Access(String, Uuid),
}

/// The revocations of the last `keep_secs`; cheap to ask when empty (one atomic load).
#[derive(Debug)]
pub struct Revocations {
    keep_secs: u64,
    any: AtomicBool,
    /// Key -> revoked at, unix seconds (the latest one of the key).
    entries: Mutex<HashMap<Key, u64>>,
}

impl Revocations {
    pub fn new(keep_secs: u64) -> Self {
        Self {
            keep_secs,
            any: AtomicBool::new(false),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Records `rev` and forgets entries older than the window (at `now`, unix seconds).
    pub fn insert(&self, rev: &Revocation, now: u64) {
        let key = match (&rev.subject, rev.device_id) {
            (Some(user), Some(device)) => Key::Access(user.clone(), device),
            (Some(user), None) => Key::User(user.clone()),
            (None, Some(device)) => Key::Device(device),
            (None, None) => return,
        };
        let at = rev.revoked_at_ms / 1000;
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let slot = entries.entry(key).or_insert(at);
        *slot = (*slot).max(at);
        let cutoff = now.saturating_sub(self.keep_secs);
        entries.retain(|_, t| *t >= cutoff);
        self.any.store(!entries.is_empty(), Ordering::Release);
    }

    fn revoked_after(&self, key: &Key, iat: u64) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(key).is_some_and(|&at| iat <= at)
    }

    /// The ticket was issued before its user's or its camera's revocation.
    pub fn refuses(&self, claims: &SignalingClaims) -> bool {
        match claims.role {
            Role::Viewer => self.revoked_after(&Key::User(claims.sub.clone()), claims.iat),
            Role::Camera => claims
                .devices
                .iter()
                .any(|d| self.revoked_after(&Key::Device(*d), claims.iat)),
        }
    }

    /// A viewer ticket of `user` issued at `iat` may no longer reach `device` (share revoked,
    /// or the camera deleted).
    pub fn refuses_access(&self, user: &str, device: Uuid, iat: u64) -> bool {
        self.revoked_after(&Key::Access(user.to_owned(), device), iat)
            || self.revoked_after(&Key::Device(device), iat)
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        !self.any.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(role: Role, sub: &str, devices: Vec<Uuid>, iat: u64) -> SignalingClaims {
        SignalingClaims {
            sub: sub.into(),
            role,
            devices,
            iat,
            exp: iat + 600,
            aud: "vc-signaling".into(),
            jti: "j".into(),
            account: None,
        }
    }

    fn rev(subject: Option<&str>, device: Option<Uuid>, at_s: u64) -> Revocation {
        Revocation {
            subject: subject.map(Into::into),
            device_id: device,
            revoked_at_ms: at_s * 1000,
        }
    }

    #[test]
    fn tickets_issued_before_a_revocation_are_refused_later_ones_pass() {
        let r = Revocations::new(3600);
        let dev = Uuid::new_v4();
        assert!(!r.refuses(&claims(Role::Viewer, "u1", vec![dev], 100)));
        r.insert(&rev(Some("u1"), None, 100), 100);
        assert!(r.refuses(&claims(Role::Viewer, "u1", vec![dev], 100)));
        assert!(!r.refuses(&claims(Role::Viewer, "u1", vec![dev], 101)));
        assert!(!r.refuses(&claims(Role::Viewer, "u2", vec![dev], 50)));
        // A camera's own revocation.
        r.insert(&rev(None, Some(dev), 200), 200);
        assert!(r.refuses(&claims(Role::Camera, &dev.to_string(), vec![dev], 150)));
        assert!(!r.refuses(&claims(Role::Camera, &dev.to_string(), vec![dev], 201)));
        // Viewers lose access to the deleted camera too.
        assert!(r.refuses_access("u9", dev, 150));
    }

    #[test]
    fn a_revoked_share_refuses_that_device_only() {
        let r = Revocations::new(3600);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        r.insert(&rev(Some("guest"), Some(a), 100), 100);
        assert!(r.refuses_access("guest", a, 99));
        assert!(!r.refuses_access("guest", b, 99));
        assert!(!r.refuses_access("owner", a, 99));
        assert!(!r.refuses(&claims(Role::Viewer, "guest", vec![a, b], 99)));
    }

    #[test]
    fn old_entries_are_forgotten() {
        let r = Revocations::new(60);
        assert!(r.is_empty());
        r.insert(&rev(Some("u1"), None, 100), 100);
        r.insert(&rev(Some("u2"), None, 200), 200);
        assert_eq!(r.len(), 1, "u1's entry is past the window");
        assert!(!r.refuses(&claims(Role::Viewer, "u1", vec![], 50)));
    }
}
