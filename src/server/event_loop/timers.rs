//! One loop's deadlines: a binary heap of `(deadline, session slot, generation)`. A session keeps at
//! most one entry armed at a time (re-armed only when its deadline moves earlier, or when the armed
//! entry fires early), so pushing and popping cost O(log n) and nothing ever scans all connections.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// Which session an entry belongs to: its slot and that slot's generation, so an entry left by a
/// closed session never fires on the next one in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Owner {
    pub slot: usize,
    pub generation: u64,
}

#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, Owner)>>,
}

impl Timers {
    /// Makes sure an entry no later than `deadline` is armed for `owner`; `armed` is the owner's
    /// record of its entry.
    pub fn arm(&mut self, owner: Owner, armed: &mut Option<Instant>, deadline: Instant) {
        if armed.is_none_or(|at| deadline < at) {
            self.heap.push(Reverse((deadline, owner)));
            *armed = Some(deadline);
        }
    }

    /// The next entry due at `now`, removed from the heap. The owner must check that the entry is
    /// the one it armed (`armed == Some(at)`), and that its deadline really passed.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, Owner)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(entry)| entry),
            _ => None,
        }
    }

    /// How long the loop may sleep before the next entry is due.
    pub fn wait(&self, now: Instant) -> Option<Duration> {
        self.heap.peek().map(|Reverse((at, _))| at.saturating_duration_since(now))
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_and_one_entry_per_owner_unless_earlier() {
        let mut timers = Timers::default();
        let t0 = Instant::now();
        let (a, b) = (Owner { slot: 0, generation: 1 }, Owner { slot: 1, generation: 1 });
        let (mut armed_a, mut armed_b) = (None, None);
        timers.arm(a, &mut armed_a, t0 + Duration::from_secs(5));
        // A later deadline keeps the armed entry; the owner re-arms when it fires.
        timers.arm(a, &mut armed_a, t0 + Duration::from_secs(9));
        timers.arm(b, &mut armed_b, t0 + Duration::from_secs(3));
        assert_eq!(timers.len(), 2);
        timers.arm(b, &mut armed_b, t0 + Duration::from_secs(1));
        assert_eq!(timers.len(), 3);
        assert_eq!(timers.wait(t0), Some(Duration::from_secs(1)));
        assert_eq!(timers.pop_due(t0), None);
        let late = t0 + Duration::from_secs(10);
        let order: Vec<_> = std::iter::from_fn(|| timers.pop_due(late)).collect();
        let secs: Vec<_> = order.iter().map(|(at, o)| (at.duration_since(t0).as_secs(), o.slot)).collect();
        assert_eq!(secs, [(1, 1), (3, 1), (5, 0)]);
        assert!(timers.is_empty());
    }
}
