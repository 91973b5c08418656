//! Weighted round robin over node priority groups, lock-free on the request path.
//!
//! Each priority group precomputes nginx's smooth weighted round-robin sequence once, at
//! config time; a pick is one atomic increment. Lower-priority groups are used only when
//! every node of the higher groups has already been tried for this request.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Longest precomputed schedule; larger weight sums are scaled down to fit.
const MAX_SCHEDULE: u64 = 4096;

struct Group {
    /// Node indices in smooth-WRR order.
    schedule: Vec<usize>,
    /// The distinct node indices of this group.
    members: Vec<usize>,
    cursor: AtomicUsize,
}

/// Picks node indices for an upstream.
pub struct Balancer {
    groups: Vec<Group>,
}

impl Balancer {
    /// Builds the schedule from `(weight, priority)` per node. Zero-weight nodes get no traffic.
    pub fn new(nodes: &[(u32, i64)]) -> Self {
        let mut priorities: Vec<i64> = nodes
            .iter()
            .filter(|(w, _)| *w > 0)
            .map(|(_, p)| *p)
            .collect();
        priorities.sort_unstable_by(|a, b| b.cmp(a));
        priorities.dedup();
        let groups = priorities
            .into_iter()
            .map(|prio| {
                let members: Vec<usize> = nodes
                    .iter()
                    .enumerate()
                    .filter(|(_, (w, p))| *w > 0 && *p == prio)
                    .map(|(i, _)| i)
                    .collect();
                let weights: Vec<u64> = members.iter().map(|&i| u64::from(nodes[i].0)).collect();
                let schedule = smooth_schedule(&weights)
                    .into_iter()
                    .map(|k| members[k])
                    .collect();
                Group {
                    schedule,
                    members,
                    cursor: AtomicUsize::new(0),
                }
            })
            .collect();
        Balancer { groups }
    }

    /// Whether any node can take traffic.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Number of distinct nodes that can take traffic.
    pub fn node_count(&self) -> usize {
        self.groups.iter().map(|g| g.members.len()).sum()
    }

    /// The next node not in `tried`, highest priority group first. A lone node is picked
    /// again whatever was tried: as in APISIX, a retry has nowhere else to go (the caller's
    /// `retries` bounds the tries).
    pub fn pick(&self, tried: &[usize]) -> Option<usize> {
        if let [group] = self.groups.as_slice() {
            if let [only] = group.members.as_slice() {
                return Some(*only);
            }
        }
        for group in &self.groups {
            if group.members.iter().all(|m| tried.contains(m)) {
                continue;
            }
            let len = group.schedule.len();
            for _ in 0..len {
                let at = group.cursor.fetch_add(1, Ordering::Relaxed) % len;
                let node = group.schedule[at];
                if !tried.contains(&node) {
                    return Some(node);
                }
            }
        }
        None
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// nginx's smooth weighted round robin, unrolled over one full cycle.
fn smooth_schedule(weights: &[u64]) -> Vec<usize> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let mut eff: Vec<u64> = weights.iter().map(|w| w / g).collect();
    let mut total: u64 = eff.iter().sum();
    if total > MAX_SCHEDULE {
        // Keep the proportions, give every node at least one slot.
        eff = eff
            .iter()
            .map(|w| (w * MAX_SCHEDULE / total).max(1))
            .collect();
        total = eff.iter().sum();
    }
    let mut current = vec![0i64; eff.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..eff.len() {
            current[i] += eff[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        out.push(best);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_respected_and_interleaved() {
        let b = Balancer::new(&[(5, 0), (1, 0), (1, 0)]);
        let picks: Vec<usize> = (0..7).map(|_| b.pick(&[]).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&n| n == 0).count(), 5);
        assert_eq!(picks.iter().filter(|&&n| n == 1).count(), 1);
        // smooth: the heavy node is not picked five times in a row
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn zero_weight_node_gets_nothing() {
        let b = Balancer::new(&[(0, 0), (1, 0)]);
        for _ in 0..10 {
            assert_eq!(b.pick(&[]), Some(1));
        }
        assert!(Balancer::new(&[(0, 0)]).is_empty());
    }

    #[test]
    fn lower_priority_only_after_higher_tried() {
        let b = Balancer::new(&[(1, 0), (1, 10), (1, 10)]);
        for _ in 0..10 {
            let first = b.pick(&[]).unwrap();
            assert!(first == 1 || first == 2);
        }
        assert_eq!(b.pick(&[1, 2]), Some(0));
        assert_eq!(b.pick(&[0, 1, 2]), None);
    }

    #[test]
    fn retry_skips_tried_node() {
        let b = Balancer::new(&[(1, 0), (1, 0)]);
        for _ in 0..5 {
            assert_eq!(b.pick(&[0]), Some(1));
        }
    }

    #[test]
    fn a_lone_node_is_picked_again_on_retry() {
        let b = Balancer::new(&[(1, 0)]);
        assert_eq!(b.pick(&[0]), Some(0));
        assert_eq!(b.pick(&[0, 0]), Some(0));
        // a zero-weight node takes no traffic: the other one is alone
        assert_eq!(Balancer::new(&[(0, 0), (1, 0)]).pick(&[1]), Some(1));
    }

    #[test]
    fn huge_weights_are_scaled() {
        let b = Balancer::new(&[(1_000_000, 0), (1, 0)]);
        let picks: Vec<usize> = (0..4097).map(|_| b.pick(&[]).unwrap()).collect();
        assert!(picks.contains(&1));
        assert!(picks.iter().filter(|&&n| n == 0).count() > 4000);
    }
}
