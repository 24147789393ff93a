//! Who waits least: deficit round robin over the callers waiting for a deployment's buckets,
//! weighted by the tokens each request reserves.
//!
//! Callers with waiting requests sit in a ring. The caller at the front is on its *visit*: it
//! is credited `quantum` tokens once, and its requests take turns, oldest first, while the
//! credit covers them; when the next one costs more than the credit left, the visit ends and the
//! next caller's begins. A caller that has nothing left waiting leaves the ring and loses its
//! credit. So while two callers both have requests waiting, the tokens admitted to each differ
//! by at most `quantum` plus twice the largest reservation, however many requests either sends:
//! one caller's burst cannot hold another behind it, and a caller asking for small reservations
//! gets proportionally more requests through. Within a caller, requests go first come, first
//! served. Deployments use a quantum of one token (rounds nobody could use are credited in bulk,
//! so this costs no more than a large one): the closest to an equal share of tokens, and
//! callers of equal reservations simply alternate.
//!
//! This only decides whose turn it is; the turn's holder tries the real buckets
//! (`crate::state::admission_queue`).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// The waiting requests of one deployment, by caller.
#[derive(Debug)]
pub struct FairQueue<C> {
    quantum: u64,
    ring: VecDeque<C>,
    callers: HashMap<C, Waiting>,
    requests: usize,
    tokens: u64,
}

#[derive(Debug, Default)]
struct Waiting {
    /// Request ids and their reserved tokens, oldest first.
    queue: VecDeque<(u64, u64)>,
    /// Credit left on the current visit.
    deficit: u64,
    /// Whether the current visit's quantum was credited.
    visiting: bool,
}

impl<C: Clone + Eq + Hash> FairQueue<C> {
    /// `quantum`: the tokens a caller is credited per visit (at least 1).
    pub fn new(quantum: u64) -> FairQueue<C> {
        FairQueue { quantum: quantum.max(1), ring: VecDeque::new(), callers: HashMap::new(), requests: 0, tokens: 0 }
    }

    /// Requests waiting, and the tokens they reserve.
    pub fn len(&self) -> usize {
        self.requests
    }

    pub fn is_empty(&self) -> bool {
        self.requests == 0
    }

    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Queues request `id` of `caller`, reserving `tokens`, behind the caller's others.
    pub fn push(&mut self, caller: C, id: u64, tokens: u64) {
        let waiting = self.callers.entry(caller.clone()).or_default();
        if waiting.queue.is_empty() {
            self.ring.push_back(caller);
        }
        waiting.queue.push_back((id, tokens));
        self.requests += 1;
        self.tokens = self.tokens.saturating_add(tokens);
    }

    /// The request whose turn it is (it stays queued until [`FairQueue::served`] or
    /// [`FairQueue::remove`]).
    pub fn head(&mut self) -> Option<u64> {
        if self.ring.is_empty() {
            return None;
        }
        // A round visits every caller once; if nobody's credit covers its oldest request in a
        // round, the rounds until one does are credited in bulk (a small quantum then costs
        // nothing), and the next round finds it.
        let round = 2 * self.ring.len() + 1;
        for pass in 0..2 {
            for _ in 0..round {
                let caller = self.ring.front()?;
                let waiting = self.callers.get_mut(caller)?;
                if !waiting.visiting {
                    waiting.deficit = waiting.deficit.saturating_add(self.quantum);
                    waiting.visiting = true;
                }
                let (id, tokens) = *waiting.queue.front()?;
                if tokens <= waiting.deficit {
                    return Some(id);
                }
                waiting.visiting = false;
                self.ring.rotate_left(1);
            }
            if pass == 0 {
                let quantum = self.quantum;
                let rounds = self
                    .callers
                    .values()
                    .filter_map(|w| w.queue.front().map(|(_, t)| t.saturating_sub(w.deficit).div_ceil(quantum)))
                    .min()
                    .unwrap_or(1);
                let credit = rounds.saturating_sub(1).saturating_mul(quantum);
                for waiting in self.callers.values_mut() {
                    waiting.deficit = waiting.deficit.saturating_add(credit);
                }
            }
        }
        None
    }

    /// Request `id` (the head) was admitted: its tokens come off its caller's credit.
    pub fn served(&mut self, id: u64) {
        self.take(id, true);
    }

    /// Request `id` left without being admitted (timed out, its client went away).
    pub fn remove(&mut self, id: u64) {
        self.take(id, false);
    }

    fn take(&mut self, id: u64, served: bool) {
        let Some((caller, at)) =
            self.callers.iter().find_map(|(c, w)| w.queue.iter().position(|(i, _)| *i == id).map(|at| (c.clone(), at)))
        else {
            return;
        };
        let Some(waiting) = self.callers.get_mut(&caller) else { return };
        let Some((_, tokens)) = waiting.queue.remove(at) else { return };
        self.requests -= 1;
        self.tokens = self.tokens.saturating_sub(tokens);
        if served {
            waiting.deficit = waiting.deficit.saturating_sub(tokens);
        }
        if waiting.queue.is_empty() {
            self.callers.remove(&caller);
            self.ring.retain(|c| *c != caller);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Serves `n` turns; returns the callers served, in order.
    fn serve(q: &mut FairQueue<&'static str>, owner: &HashMap<u64, &'static str>, n: usize) -> Vec<&'static str> {
        (0..n)
            .map_while(|_| {
                let id = q.head()?;
                q.served(id);
                owner.get(&id).copied()
            })
            .collect()
    }

    #[test]
    fn a_burst_does_not_hold_the_light_caller_behind_it() {
        let mut q = FairQueue::new(100);
        let mut owner = HashMap::new();
        for id in 0..50 {
            q.push("heavy", id, 100);
            owner.insert(id, "heavy");
        }
        q.push("light", 100, 100);
        owner.insert(100, "light");
        q.push("light", 101, 100);
        owner.insert(101, "light");
        let order = serve(&mut q, &owner, 6);
        // Alternating visits: the light caller's two requests are the 2nd and 4th admitted, not
        // the 51st and 52nd.
        assert_eq!(order, vec!["heavy", "light", "heavy", "light", "heavy", "heavy"]);
        assert_eq!((q.len(), q.tokens()), (46, 4600));
    }

    #[test]
    fn small_reservations_get_more_requests_through_and_a_large_one_still_gets_its_turn() {
        let mut q = FairQueue::new(100);
        let mut owner = HashMap::new();
        for id in 0..20 {
            q.push("small", id, 25);
            owner.insert(id, "small");
        }
        q.push("large", 99, 400);
        owner.insert(99, "large");
        let order = serve(&mut q, &owner, 21);
        let before_large = order.iter().position(|c| *c == "large").unwrap_or(usize::MAX);
        // The large one needs four visits of credit; the small caller takes 4 on each of its
        // four visits before that.
        assert_eq!(before_large, 16, "{order:?}");
        assert_eq!(order.len(), 21);
    }

    #[test]
    fn leaving_removes_a_request_anywhere_and_an_empty_caller_loses_its_credit() {
        let mut q = FairQueue::new(10);
        q.push("a", 1, 5);
        q.push("a", 2, 5);
        q.push("b", 3, 5);
        q.remove(2);
        assert_eq!(q.head(), Some(1));
        q.served(1);
        assert_eq!(q.head(), Some(3));
        q.remove(3);
        assert_eq!((q.head(), q.len(), q.tokens()), (None, 0, 0));
        q.remove(42); // unknown: nothing happens
        q.push("a", 4, 5);
        assert_eq!(q.head(), Some(4));
    }

    proptest! {
        /// While both callers have requests waiting, the tokens admitted to each stay within
        /// quantum + the largest reservation of each other, and each caller's requests are
        /// admitted in the order they came.
        #[test]
        fn fair_between_backlogged_callers(
            a in prop::collection::vec(1u64..500, 20..60),
            b in prop::collection::vec(1u64..500, 20..60),
            quantum in 1u64..300,
        ) {
            let mut q = FairQueue::new(quantum);
            let mut cost = HashMap::new();
            for (i, t) in a.iter().enumerate() {
                q.push(0u8, i as u64, *t);
                cost.insert(i as u64, (0u8, *t));
            }
            for (i, t) in b.iter().enumerate() {
                q.push(1u8, 1000 + i as u64, *t);
                cost.insert(1000 + i as u64, (1u8, *t));
            }
            let largest = a.iter().chain(&b).copied().max().unwrap_or(0);
            let (mut served, mut last) = ([0u64; 2], [None::<u64>; 2]);
            let mut left = [a.len(), b.len()];
            while left[0] > 0 && left[1] > 0 {
                let id = q.head();
                prop_assert!(id.is_some());
                let id = id.unwrap_or_default();
                let (caller, tokens) = cost[&id];
                let c = usize::from(caller);
                prop_assert!(last[c].is_none_or(|l| l < id), "first come, first served within a caller");
                last[c] = Some(id);
                q.served(id);
                served[c] += tokens;
                left[c] -= 1;
                prop_assert!(served[0].abs_diff(served[1]) <= quantum + 2 * largest, "{served:?}");
            }
        }
    }
}
