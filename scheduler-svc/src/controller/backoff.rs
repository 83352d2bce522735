//! Per-set back-off after a postponed activation.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::world::Name;

/// The first wait after a set's activation was postponed.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// The longest wait between tries of a postponed set.
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Per-set back-off after a postponed activation (Kubernetes' work queue
/// rate limiter, per item): 250 ms, doubled on each further postponement
/// with the same reason, at most 10 s; reset by a success or by a change to
/// the set's own record.
#[derive(Debug, Default)]
pub struct Backoff {
    sets: BTreeMap<Name, Postponed>,
}

#[derive(Debug)]
struct Postponed {
    /// The set's record and the nodes' leases when it was postponed: a
    /// change to either may unblock it, so it is tried at once.
    set_revision: (i64, u64),
    reason: String,
    delay: Duration,
    until: Instant,
}

impl Backoff {
    /// Whether `set` (at `set_revision`: its record's and the nodes'
    /// version) is still waiting at `now`.
    pub fn waiting(&self, set: &Name, set_revision: (i64, u64), now: Instant) -> bool {
        self.sets
            .get(set)
            .is_some_and(|p| p.set_revision == set_revision && now < p.until)
    }

    /// Records a postponement; answers the wait when the reason is new (to
    /// be logged), `None` when it repeats.
    pub fn postponed(
        &mut self,
        set: Name,
        set_revision: (i64, u64),
        reason: &str,
        now: Instant,
    ) -> Option<Duration> {
        let (delay, new) = match self.sets.get(&set) {
            Some(p) if p.reason == reason && p.set_revision == set_revision => {
                ((p.delay * 2).min(BACKOFF_MAX), false)
            }
            _ => (BACKOFF_FIRST, true),
        };
        self.sets.insert(
            set,
            Postponed {
                set_revision,
                reason: reason.to_owned(),
                delay,
                until: now + delay,
            },
        );
        new.then_some(delay)
    }

    /// When the earliest back-off ends.
    pub fn next_wake(&self) -> Option<Instant> {
        self.sets.values().map(|p| p.until).min()
    }

    /// Forgets `set`'s back-off after an activation that went through.
    pub fn done(&mut self, set: &Name) {
        self.sets.remove(set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str) -> Name {
        ("default".into(), name.into())
    }

    #[test]
    fn a_repeated_postponement_doubles_its_wait_up_to_the_cap_and_is_logged_once() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        assert_eq!(
            b.postponed(set("a"), (7, 0), "claim pending", t0),
            Some(BACKOFF_FIRST)
        );
        let mut waits = Vec::new();
        let mut now = t0;
        for _ in 0..8 {
            assert!(b.waiting(&set("a"), (7, 0), now));
            let until = b.sets[&set("a")].until;
            now = until;
            assert!(
                !b.waiting(&set("a"), (7, 0), now),
                "tried again once the wait is over"
            );
            assert_eq!(
                b.postponed(set("a"), (7, 0), "claim pending", now),
                None,
                "logged once"
            );
            waits.push(b.sets[&set("a")].delay);
        }
        assert_eq!(
            waits.iter().map(Duration::as_millis).collect::<Vec<_>>(),
            [500, 1000, 2000, 4000, 8000, 10000, 10000, 10000]
        );
        // Another set is not held back.
        assert!(!b.waiting(&set("b"), (7, 0), now));
    }

    #[test]
    fn a_new_reason_a_changed_set_or_a_success_starts_over() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        b.postponed(set("a"), (7, 0), "claim pending", t0);
        b.postponed(set("a"), (7, 0), "claim pending", t0);
        assert_eq!(
            b.postponed(set("a"), (7, 0), "node full", t0),
            Some(BACKOFF_FIRST)
        );
        assert!(b.waiting(&set("a"), (7, 0), t0));
        // The set's own record changed (a person edited it): tried at once.
        assert!(!b.waiting(&set("a"), (8, 0), t0));
        assert_eq!(
            b.postponed(set("a"), (8, 0), "node full", t0),
            Some(BACKOFF_FIRST)
        );
        // A node came or went: tried at once.
        assert!(!b.waiting(&set("a"), (8, 1), t0));
        b.done(&set("a"));
        assert!(!b.waiting(&set("a"), (8, 0), t0));
    }
}
