//! The node-local policy: counters shared by every worker thread of the node.
//!
//! One map of counters split into shards, each behind its own short mutex: two requests
//! contend only when their keys land in the same shard, and a lock is held for a few
//! arithmetic operations, never across an await. Expired state is reclaimed as the store is
//! used (every [`SWEEP_EVERY`] operations the next shard in turn drops what has expired), so
//! memory follows the number of keys active within a window, not the number ever seen.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::seconds;

const SHARDS: usize = 64;
const SWEEP_EVERY: usize = 256;

/// What a limit-count window said about one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CountState {
    /// Admitted?
    pub allowed: bool,
    /// Requests left in the window (0 when rejected).
    pub remaining: u64,
    /// Seconds until the window resets.
    pub reset: f64,
}

enum Slot {
    /// A fixed window: started by its first request, lasts `window`.
    Fixed { remaining: i64, reset_at: Instant },
    /// A sliding window: counts of the current and previous aligned windows.
    Sliding {
        window: u64,
        current: u64,
        previous: u64,
    },
    /// A leaky bucket: excess in milli-requests at `last`.
    Bucket {
        excess: i64,
        last: Instant,
        idle_after: Instant,
    },
    /// Connections in flight.
    Conns(u64),
}

impl Slot {
    fn expired(&self, now: Instant, epoch: Instant, window_ms: u64) -> bool {
        match self {
            Slot::Fixed { reset_at, .. } => now >= *reset_at,
            Slot::Sliding { window, .. } => {
                let w = window_ms.max(1);
                (now.duration_since(epoch).as_millis() as u64 / w) > window + 1
            }
            Slot::Bucket { idle_after, .. } => now >= *idle_after,
            Slot::Conns(n) => *n == 0,
        }
    }
}

struct Shard {
    map: HashMap<Box<str>, (Slot, u64)>,
}

/// The local counters of one node.
pub struct LocalStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    epoch: Instant,
    ops: AtomicUsize,
}

impl Default for LocalStore {
    fn default() -> Self {
        LocalStore {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                    })
                })
                .collect(),
            hasher: RandomState::new(),
            epoch: Instant::now(),
            ops: AtomicUsize::new(0),
        }
    }
}

impl LocalStore {
    fn with_shard<R>(&self, key: &str, f: impl FnOnce(&mut Shard, Instant) -> R) -> R {
        let ops = self.ops.fetch_add(1, Relaxed) + 1;
        if ops % SWEEP_EVERY == 0 {
            // Shards take turns, whether or not their own keys are busy; the lock of the
            // swept shard is taken alone (never while holding another: no lock order).
            let now = Instant::now();
            let epoch = self.epoch;
            let mut swept = self.shards[(ops / SWEEP_EVERY) % self.shards.len()].lock();
            swept
                .map
                .retain(|_, (slot, window_ms)| !slot.expired(now, epoch, *window_ms));
        }
        let i = (self.hasher.hash_one(key) as usize) % self.shards.len();
        let mut shard = self.shards[i].lock();
        f(&mut shard, Instant::now())
    }

    /// limit-count, fixed window: the window starts with its first request (APISIX's
    /// `incr` with an initial TTL); `cost` is taken even from a rejected request, as there.
    pub fn count_fixed(&self, key: &str, limit: u64, window: Duration, cost: u64) -> CountState {
        self.with_shard(key, |shard, now| {
            let fresh = || Slot::Fixed {
                remaining: i64::try_from(limit).unwrap_or(i64::MAX),
                reset_at: now + window,
            };
            let entry = shard
                .map
                .entry(key.into())
                .or_insert_with(|| (fresh(), window.as_millis() as u64));
            if entry.0.expired(now, now, 0) || !matches!(entry.0, Slot::Fixed { .. }) {
                entry.0 = fresh();
            }
            let Slot::Fixed {
                remaining,
                reset_at,
            } = &mut entry.0
            else {
                unreachable!("just made a fixed window")
            };
            *remaining -= cost as i64;
            CountState {
                allowed: *remaining >= 0,
                remaining: (*remaining).max(0) as u64,
                reset: reset_at.saturating_duration_since(now).as_secs_f64(),
            }
        })
    }

    /// limit-count, sliding window: the previous aligned window's count weighted by how
    /// much of it still overlaps the last `window`, plus the current window's count. A
    /// rejected request is not counted.
    pub fn count_sliding(&self, key: &str, limit: u64, window: Duration, cost: u64) -> CountState {
        let epoch = self.epoch;
        self.with_shard(key, |shard, now| {
            let w = (window.as_millis() as u64).max(1);
            let t = now.duration_since(epoch).as_millis() as u64;
            let id = t / w;
            let entry = shard.map.entry(key.into()).or_insert((
                Slot::Sliding {
                    window: id,
                    current: 0,
                    previous: 0,
                },
                w,
            ));
            if !matches!(entry.0, Slot::Sliding { .. }) {
                entry.0 = Slot::Sliding {
                    window: id,
                    current: 0,
                    previous: 0,
                };
            }
            let Slot::Sliding {
                window: wid,
                current,
                previous,
            } = &mut entry.0
            else {
                unreachable!("just made a sliding window")
            };
            if *wid != id {
                *previous = if *wid + 1 == id { *current } else { 0 };
                *current = 0;
                *wid = id;
            }
            let elapsed = t - id * w;
            let weight = (w - elapsed) as f64 / w as f64;
            let used = *previous as f64 * weight + *current as f64;
            let reset = (w - elapsed) as f64 / 1000.0;
            if used + cost as f64 > limit as f64 {
                return CountState {
                    allowed: false,
                    remaining: 0,
                    reset,
                };
            }
            *current += cost;
            CountState {
                allowed: true,
                remaining: (limit as f64 - used - cost as f64).floor().max(0.0) as u64,
                reset,
            }
        })
    }

    /// limit-req's leaky bucket (`resty.limit.req`): `Some(delay in seconds)` when admitted,
    /// `None` when the excess would pass `burst`. Rates are in requests per second.
    pub fn leaky_bucket(&self, key: &str, rate: f64, burst: f64) -> Option<f64> {
        self.with_shard(key, |shard, now| {
            let rate_m = (rate * 1000.0) as i64;
            let burst_m = (burst * 1000.0) as i64;
            let excess = match shard.map.get(key) {
                Some((Slot::Bucket { excess, last, .. }, _)) => {
                    let elapsed_ms = now.duration_since(*last).as_millis() as i64;
                    // saturating: rate and burst are unbounded in APISIX's schema
                    let drained = rate_m.saturating_mul(elapsed_ms) / 1000;
                    excess.saturating_sub(drained).saturating_add(1000).max(0)
                }
                _ => 0,
            };
            if excess > burst_m {
                return None;
            }
            // The bucket is empty again after excess / rate seconds: reclaimable then.
            let drain = seconds((excess as f64 / 1000.0 + 1.0) / rate.max(1e-9));
            shard.map.insert(
                key.into(),
                (
                    Slot::Bucket {
                        excess,
                        last: now,
                        idle_after: now + drain.min(Duration::from_secs(86_400)),
                    },
                    0,
                ),
            );
            Some(excess as f64 / 1000.0 / rate)
        })
    }

    /// limit-conn: one more connection; `None` when beyond `max` (nothing taken), else the
    /// count including this one.
    pub fn conn_enter(&self, key: &str, max: u64) -> Option<u64> {
        self.with_shard(key, |shard, _| {
            let entry = shard.map.entry(key.into()).or_insert((Slot::Conns(0), 0));
            if !matches!(entry.0, Slot::Conns(_)) {
                entry.0 = Slot::Conns(0);
            }
            let Slot::Conns(n) = &mut entry.0 else {
                unreachable!("just made a connection count")
            };
            if *n + 1 > max {
                return None;
            }
            *n += 1;
            Some(*n)
        })
    }

    /// limit-conn: a connection is over.
    pub fn conn_leave(&self, key: &str) {
        self.with_shard(key, |shard, _| {
            if let Some((Slot::Conns(n), _)) = shard.map.get_mut(key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    shard.map.remove(key);
                }
            }
        })
    }

    /// Keys held (for tests and stats).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }

    /// No key held?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_window_admits_count_then_rejects_then_resets() {
        let s = LocalStore::default();
        let w = Duration::from_millis(200);
        for left in (0..3).rev() {
            let st = s.count_fixed("k", 3, w, 1);
            assert!(st.allowed);
            assert_eq!(st.remaining, left);
        }
        let st = s.count_fixed("k", 3, w, 1);
        assert!(!st.allowed && st.remaining == 0 && st.reset > 0.0 && st.reset <= 0.2);
        assert!(
            s.count_fixed("other", 3, w, 1).allowed,
            "keys are independent"
        );
        std::thread::sleep(Duration::from_millis(220));
        let st = s.count_fixed("k", 3, w, 1);
        assert!(st.allowed && st.remaining == 2);
        // a count past i64 (APISIX leaves it unbounded) admits, it does not wrap to -1
        let st = s.count_fixed("huge", u64::MAX, w, 1);
        assert!(st.allowed && st.remaining == i64::MAX as u64 - 1);
    }

    #[test]
    fn sliding_window_never_admits_more_than_limit_in_a_window() {
        let s = LocalStore::default();
        let w = Duration::from_millis(300);
        let admitted = (0..10)
            .filter(|_| s.count_sliding("k", 4, w, 1).allowed)
            .count();
        assert_eq!(admitted, 4);
        // Half-way through the next window about half of the previous count still weighs.
        std::thread::sleep(Duration::from_millis(320));
        let st = s.count_sliding("k", 4, w, 1);
        assert!(st.remaining <= 3);
    }

    #[test]
    fn leaky_bucket_follows_rate_and_burst() {
        let s = LocalStore::default();
        // rate 1/s, burst 1: the first passes with no delay, the second waits ~1 s, the third
        // is rejected.
        assert_eq!(s.leaky_bucket("k", 1.0, 1.0), Some(0.0));
        let d = s.leaky_bucket("k", 1.0, 1.0).expect("within burst");
        assert!(d > 0.9 && d <= 1.0, "{d}");
        assert_eq!(s.leaky_bucket("k", 1.0, 1.0), None);
        // rates and bursts past i64 milli-requests (unbounded in APISIX) saturate
        for _ in 0..3 {
            assert!(s.leaky_bucket("huge", 1e300, 1e300).is_some());
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn connections_are_counted_and_released() {
        let s = LocalStore::default();
        assert_eq!(s.conn_enter("k", 2), Some(1));
        assert_eq!(s.conn_enter("k", 2), Some(2));
        assert_eq!(s.conn_enter("k", 2), None);
        s.conn_leave("k");
        assert_eq!(s.conn_enter("k", 2), Some(2));
        s.conn_leave("k");
        s.conn_leave("k");
        assert!(s.is_empty(), "a key with no connection is dropped");
    }

    #[test]
    fn expired_windows_are_reclaimed() {
        let s = LocalStore::default();
        let w = Duration::from_millis(1);
        for i in 0..5000 {
            s.count_fixed(&format!("k{i}"), 1, w, 1);
        }
        std::thread::sleep(Duration::from_millis(5));
        for i in 0..(SHARDS * SWEEP_EVERY) {
            s.count_fixed(&format!("x{}", i % 8), 1, Duration::from_secs(60), 1);
        }
        assert!(s.len() < 200, "{} keys left", s.len());
    }
}
