//! The one rate limiter: fixed-window counters in the `rate_limits` table, so every
//! vc-control instance behind a load balancer shares them (issue 9), plus how a request's
//! client is identified (IPv6 grouped by /64, `X-Forwarded-For` only from trusted proxies).
//!
//! An attempt is *reserved* before the expensive or guessable work runs: one conditional
//! upsert increments the bucket and returns the new count, so N concurrent attempts see
//! N distinct counts and only the first `max` proceed. A caller whose attempt turned out
//! fine may [`Limiter::release`] it.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sqlx::Row;

use crate::db::Db;
use crate::error::ApiError;

/// One limited kind of attempt: at most `max` per `window_secs` per bucket.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub max: u32,
    pub window_secs: u64,
}

/// The outcome of [`Limiter::try_reserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    Admitted,
    Refused {
        /// Seconds until the window ends.
        retry_after: u64,
        /// The bucket's first refusal in this window.
        first_in_window: bool,
    },
}

/// Counters in the database.
#[derive(Debug, Clone)]
pub struct Limiter {
    db: Db,
}

impl Limiter {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Counts one attempt in `bucket`; `Err(RateLimited(secs))` when it is beyond
    /// `limit.max` in the current window (the refused attempt is counted too, which only
    /// matters until the window ends: windows are fixed, never extended).
    pub async fn reserve(&self, bucket: &str, limit: Limit, now: i64) -> Result<(), ApiError> {
        match self.try_reserve(bucket, limit, now).await? {
            Reservation::Admitted => Ok(()),
            Reservation::Refused { retry_after, .. } => Err(ApiError::RateLimited(retry_after)),
        }
    }

    /// [`Limiter::reserve`], telling a refusal that is the bucket's first in this window
    /// apart (exactly one per bucket and window: counts are consecutive, and
    /// [`Limiter::release`] never brings a refused bucket back under its limit), so callers
    /// can record the event once instead of once per refused attempt.
    pub async fn try_reserve(
        &self,
        bucket: &str,
        limit: Limit,
        now: i64,
    ) -> Result<Reservation, ApiError> {
        let window = i64::try_from(limit.window_secs.max(1)).unwrap_or(i64::MAX);
        // Both engines evaluate the SET expressions against the old row, and the upsert
        // holds the row lock (Postgres) / the write lock (SQLite) until it returns, so
        // concurrent reservations get consecutive counts.
        let row = sqlx::query(
            "INSERT INTO rate_limits (bucket, window_start, hits) VALUES ($1, $2, 1) \
             ON CONFLICT (bucket) DO UPDATE SET \
             hits = CASE WHEN rate_limits.window_start <= $3 THEN 1 ELSE rate_limits.hits + 1 END, \
             window_start = CASE WHEN rate_limits.window_start <= $3 THEN $2 \
                            ELSE rate_limits.window_start END \
             RETURNING hits, window_start",
        )
        .bind(bucket)
        .bind(now)
        .bind(now.saturating_sub(window))
        .fetch_one(&self.db.pool)
        .await?;
        let hits: i64 = row.try_get("hits")?;
        let start: i64 = row.try_get("window_start")?;
        if hits > i64::from(limit.max) {
            let left = start.saturating_add(window).saturating_sub(now).max(1);
            return Ok(Reservation::Refused {
                retry_after: left as u64,
                first_in_window: hits == i64::from(limit.max) + 1,
            });
        }
        Ok(Reservation::Admitted)
    }

    /// Gives back one reserved attempt (the attempt succeeded, so it is not a failure),
    /// unless the bucket is already over `limit`: a refused window stays refused, and its
    /// first refusal stays the only one.
    pub async fn release(&self, bucket: &str, limit: Limit) -> Result<(), ApiError> {
        sqlx::query(
            "UPDATE rate_limits SET hits = hits - 1 WHERE bucket = $1 AND hits > 0 AND hits <= $2",
        )
        .bind(bucket)
        .bind(i64::from(limit.max))
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// Deletes rows whose window started more than `max_window_secs` ago (they can no
    /// longer limit anything), so the table stays bounded by recent traffic.
    pub async fn prune(&self, now: i64, max_window_secs: u64) -> Result<u64, sqlx::Error> {
        let window = i64::try_from(max_window_secs.max(1)).unwrap_or(i64::MAX);
        let done = sqlx::query("DELETE FROM rate_limits WHERE window_start <= $1")
            .bind(now.saturating_sub(window))
            .execute(&self.db.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

/// The identity a client is limited by: its IPv4 address, or its IPv6 /64 (one
/// subscriber's allocation, so rotating addresses inside it gives no fresh budget).
pub fn client_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                let prefix = Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{prefix}/64")
            }
        },
    }
}

/// An email as part of a bucket name. Logins take any string as the email (an unparsable
/// one just fails), so a long one is hashed: rows stay small whatever a client sends.
pub fn email_key(email: &str) -> String {
    // 254: the longest valid address (RFC 5321 path limit).
    if email.len() <= 254 {
        email.to_owned()
    } else {
        let digest = ring::digest::digest(&ring::digest::SHA256, email.as_bytes());
        format!("sha256:{}", hex::encode(digest.as_ref()))
    }
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy; then the
/// right-most address in `X-Forwarded-For` that is not a trusted proxy (addresses left of
/// it were written by the client and prove nothing).
pub fn client_ip(peer: IpAddr, forwarded_for: &[&str], trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    for hop in forwarded_for
        .iter()
        .rev()
        .flat_map(|h| h.rsplit(','))
        .map(str::trim)
    {
        // Garbage cannot be the client: stop at the last hop we could read.
        let Ok(ip) = hop.parse::<IpAddr>() else { break };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// An address block (`10.0.0.0/8`, `2001:db8::/32`, or a bare address), as configured
/// in `trusted_proxies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                prefix_eq(u32::from(n).into(), u32::from(a).into(), self.prefix, 32)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                prefix_eq(u128::from(n), u128::from(a), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, prefix: u8, bits: u8) -> bool {
    let shift = u32::from(bits - prefix);
    shift >= 128 || (a >> shift) == (b >> shift)
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an address or CIDR block");
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (s.trim(), None),
        };
        let net: IpAddr = addr.parse().map_err(|_| bad())?;
        let bits = if net.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(bits);
        if prefix > bits {
            return Err(bad());
        }
        Ok(Self { net, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    async fn limiter() -> (Limiter, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/l.db?mode=rwc", dir.path().display());
        (Limiter::new(Db::connect(&url, 4).await.unwrap()), dir)
    }

    #[tokio::test]
    async fn concurrent_reservations_admit_exactly_max() {
        let (l, _dir) = limiter().await;
        let limit = Limit {
            max: 5,
            window_secs: 60,
        };
        let tries = (0..20).map(|_| {
            let l = l.clone();
            tokio::spawn(async move { l.reserve("b", limit, 1_000).await })
        });
        let mut admitted = 0;
        for t in tries {
            match t.await.unwrap() {
                Ok(()) => admitted += 1,
                Err(ApiError::RateLimited(s)) => assert_eq!(s, 60),
                Err(e) => panic!("{e:?}"),
            }
        }
        assert_eq!(admitted, 5);
        // Other buckets are independent; the window's end resets the count.
        assert!(l.reserve("other", limit, 1_000).await.is_ok());
        match l.reserve("b", limit, 1_059).await {
            Err(ApiError::RateLimited(1)) => {}
            other => panic!("{other:?}"),
        }
        assert!(l.reserve("b", limit, 1_060).await.is_ok());
    }

    #[tokio::test]
    async fn release_gives_an_attempt_back_and_prune_bounds_the_table() {
        let (l, _dir) = limiter().await;
        let limit = Limit {
            max: 1,
            window_secs: 60,
        };
        l.reserve("b", limit, 1_000).await.unwrap();
        l.release("b", limit).await.unwrap();
        l.reserve("b", limit, 1_001).await.unwrap();
        assert!(l.reserve("b", limit, 1_002).await.is_err());
        l.reserve("c", limit, 1_050).await.unwrap();
        assert_eq!(
            l.prune(1_100, 60).await.unwrap(),
            1,
            "only b's window ended"
        );
        assert_eq!(l.prune(1_110, 60).await.unwrap(), 1);
        // A pruned bucket starts afresh.
        l.reserve("b", limit, 1_110).await.unwrap();
    }

    #[tokio::test]
    async fn one_first_refusal_per_window_even_with_releases() {
        let (l, _dir) = limiter().await;
        let limit = Limit {
            max: 1,
            window_secs: 60,
        };
        let refused = |first_in_window| Reservation::Refused {
            retry_after: 60,
            first_in_window,
        };
        assert_eq!(
            l.try_reserve("b", limit, 1_000).await.unwrap(),
            Reservation::Admitted
        );
        assert_eq!(
            l.try_reserve("b", limit, 1_000).await.unwrap(),
            refused(true)
        );
        // The admitted attempt succeeds late: giving it back must not re-arm the first
        // refusal (an audit record per refusal would follow).
        l.release("b", limit).await.unwrap();
        assert_eq!(
            l.try_reserve("b", limit, 1_000).await.unwrap(),
            refused(false)
        );
        assert_eq!(
            l.try_reserve("b", limit, 1_000).await.unwrap(),
            refused(false)
        );
        // A new window has its own first refusal.
        assert_eq!(
            l.try_reserve("b", limit, 1_060).await.unwrap(),
            Reservation::Admitted
        );
        assert_eq!(
            l.try_reserve("b", limit, 1_060).await.unwrap(),
            refused(true)
        );
    }

    #[test]
    fn long_emails_are_hashed_in_bucket_names() {
        assert_eq!(email_key("a@b.cd"), "a@b.cd");
        let long = "x".repeat(60_000);
        let key = email_key(&long);
        assert!(key.starts_with("sha256:") && key.len() == 71, "{key}");
        assert_eq!(key, email_key(&long));
        assert_ne!(key, email_key(&"y".repeat(60_000)));
    }

    #[test]
    fn ipv6_clients_are_grouped_by_64() {
        assert_eq!(client_key(ip("203.0.113.7")), "203.0.113.7");
        assert_eq!(client_key(ip("2001:db8:1:2::1")), "2001:db8:1:2::/64");
        assert_eq!(
            client_key(ip("2001:db8:1:2:ffff:1:2:3")),
            client_key(ip("2001:db8:1:2::1"))
        );
        assert_ne!(
            client_key(ip("2001:db8:1:3::1")),
            client_key(ip("2001:db8:1:2::1"))
        );
        assert_eq!(client_key(ip("::ffff:203.0.113.7")), "203.0.113.7");
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()];
        let xff = ["198.51.100.1, 203.0.113.9", "10.1.2.3"];
        // Untrusted peer: the header is the client's own words.
        assert_eq!(client_ip(ip("192.0.2.1"), &xff, &trusted), ip("192.0.2.1"));
        assert_eq!(client_ip(ip("192.0.2.1"), &xff, &[]), ip("192.0.2.1"));
        // Trusted peer: right-most untrusted hop, skipping our own proxies.
        assert_eq!(client_ip(ip("10.0.0.1"), &xff, &trusted), ip("203.0.113.9"));
        assert_eq!(client_ip(ip("::1"), &xff, &trusted), ip("203.0.113.9"));
        // No header, or garbage right after the proxy: the proxy itself.
        assert_eq!(client_ip(ip("10.0.0.1"), &[], &trusted), ip("10.0.0.1"));
        assert_eq!(
            client_ip(ip("10.0.0.1"), &["1.2.3.4, bogus"], &trusted),
            ip("10.0.0.1")
        );
        // Localhost is not trusted unless configured.
        assert_eq!(client_ip(ip("127.0.0.1"), &xff, &trusted), ip("127.0.0.1"));
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let c: Cidr = "192.168.0.0/16".parse().unwrap();
        assert!(c.contains(ip("192.168.4.5")));
        assert!(c.contains(ip("::ffff:192.168.4.5")));
        assert!(!c.contains(ip("192.169.0.1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        assert!(!all.contains(ip("2001:db8::1")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope".parse::<Cidr>().is_err());
        assert_eq!(c.to_string(), "192.168.0.0/16");
    }
}
