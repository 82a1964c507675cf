//! Rate limit for unauthenticated answers (Binding responses, 401/438 challenges, 400/420
//! errors) per source, against reflection: a spoofed source address makes the relay send its
//! answers to a victim. The state is a fixed-size table whatever the number of sources
//! (spoofed floods bring millions): `ROWS` rows of GCRA cells (one atomic "theoretical
//! arrival time" each), a source hashed with a per-process random key to one cell per row,
//! count-min style. A source is answered while its least-loaded cell conforms, so an honest
//! source colliding with a flooder in one row is still served through the other row; the
//! answer is charged to every row. Shared lock-free by all UDP shards (SO_REUSEPORT spreads
//! a spoofed flood over all of them).

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const ROWS: usize = 2;

/// What counts as one source: an IPv4 address, or an IPv6 /64 (one subscriber's prefix).
pub fn source_key(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => (u128::from(v6) >> 64) | (1 << 127),
    }
}

/// Fixed-size per-source limiter: `rate` answers per second with bursts of `burst`.
#[derive(Debug)]
pub struct SourceLimiter {
    /// Microseconds between answers at the steady rate (0: no limit).
    interval_us: u64,
    /// How far ahead of now a cell may run: (burst - 1) intervals.
    tolerance_us: u64,
    epoch: Instant,
    cells: Vec<AtomicU64>,
    width: usize,
    hasher: std::collections::hash_map::RandomState,
}

impl SourceLimiter {
    /// `rate` answers per second and per source (0: unlimited), `burst` at once, `width`
    /// cells per row (rounded up to a power of two).
    pub fn new(rate: u32, burst: u32, width: usize, epoch: Instant) -> Self {
        let width = width.max(1).next_power_of_two();
        let interval_us = if rate == 0 {
            0
        } else {
            1_000_000 / u64::from(rate)
        };
        Self {
            interval_us,
            tolerance_us: interval_us * u64::from(burst.max(1) - 1),
            epoch,
            cells: (0..width * ROWS).map(|_| AtomicU64::new(0)).collect(),
            width,
            hasher: Default::default(),
        }
    }

    /// Whether `ip` may be answered at `now`; charges it if so. IPv6 sources count per /64
    /// (one subscriber holds a whole /64).
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        if self.interval_us == 0 {
            return true;
        }
        let key = source_key(ip);
        let hash = self.hasher.hash_one(key);
        let t = now.saturating_duration_since(self.epoch).as_micros() as u64;
        let idx = |row: usize| {
            let part = (hash >> (32 * row)) as usize & (self.width - 1);
            row * self.width + part
        };
        let conforming = (0..ROWS).any(|r| {
            let tat = self.cells[idx(r)].load(Ordering::Relaxed);
            tat <= t + self.tolerance_us
        });
        if !conforming {
            return false;
        }
        for r in 0..ROWS {
            let cell = &self.cells[idx(r)];
            // Races between shards only make the count slightly off; no CAS loop needed.
            let tat = cell.load(Ordering::Relaxed).max(t);
            cell.store(tat + self.interval_us, Ordering::Relaxed);
        }
        true
    }

    /// Cells in the table (the memory bound).
    pub fn cells(&self) -> usize {
        self.cells.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn limits_a_flooding_source_and_not_others() {
        let t0 = Instant::now();
        let l = SourceLimiter::new(10, 5, 64, t0);
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        let b: IpAddr = "198.51.100.2".parse().unwrap();
        let passed = (0..1000).filter(|_| l.allow(a, t0)).count();
        assert_eq!(passed, 5, "only the burst passes at once");
        assert!(l.allow(b, t0), "another source is still answered");
        // 1 s later: 10 more at the steady rate, not 1000.
        let t1 = t0 + Duration::from_secs(1);
        let passed = (0..1000).filter(|_| l.allow(a, t1)).count();
        assert!((5..=11).contains(&passed), "{passed}");
    }

    #[test]
    fn state_stays_fixed_under_spoofed_sources() {
        let t0 = Instant::now();
        let l = SourceLimiter::new(10, 5, 1024, t0);
        let cells = l.cells();
        for i in 0..200_000u32 {
            l.allow(IpAddr::V4(i.into()), t0);
        }
        assert_eq!(l.cells(), cells);
        assert_eq!(cells, 2048);
    }

    #[test]
    fn honest_source_survives_a_flood_of_many_sources() {
        // A spoofed flood over 500 sources spends 500 cells per row of 4096; a fresh honest
        // source is refused only when it collides in both rows (about (500/4096)^2 = 1.5 %;
        // with one row it would be 12 %).
        let t0 = Instant::now();
        let l = SourceLimiter::new(10, 5, 4096, t0);
        for i in 0..500u32 {
            for _ in 0..50 {
                l.allow(IpAddr::V4((0x0a00_0000 + i).into()), t0);
            }
        }
        let served = (0..100u32)
            .filter(|i| l.allow(IpAddr::V4((0xc000_0000 + i).into()), t0))
            .count();
        assert!(served >= 92, "{served}");
    }

    #[test]
    fn ipv6_counts_per_64() {
        let t0 = Instant::now();
        let l = SourceLimiter::new(10, 3, 64, t0);
        let passed = (0..100u16)
            .filter(|i| l.allow(format!("2001:db8::{i:x}").parse().unwrap(), t0))
            .count();
        assert_eq!(passed, 3);
        assert!(l.allow("2001:db8:0:1::1".parse().unwrap(), t0));
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let t0 = Instant::now();
        let l = SourceLimiter::new(0, 0, 16, t0);
        assert!((0..1000).all(|_| l.allow("203.0.113.1".parse().unwrap(), t0)));
    }
}
