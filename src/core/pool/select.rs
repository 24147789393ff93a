//! Which backend takes the next attempt: the best (lowest) priority tier among the backends that
//! can take it, and within the tier smooth weighted round robin.
//!
//! Why smooth weighted round robin (nginx's `upstream` algorithm) and not power-of-two-choices
//! on in-flight requests: the backends here are quota-bound serverless endpoints, so the split
//! that matters is the *share* of traffic each gets (it must follow the weights, which operators
//! set from each endpoint's quota), and SWRR keeps that share exact over any window of
//! `sum(weights)` picks, interleaved rather than bursty, deterministically (tests can assert it).
//! Load-awareness comes from elsewhere: a backend without room in its own buckets, cooling after
//! a 429 or ejected is not eligible, and the others share its traffic by weight.

/// One backend as selection sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub weight: u32,
    /// Lower first; a higher tier is used only when no backend of a lower one can take the attempt.
    pub priority: u32,
}

/// The round robin's running state: one current weight per member.
#[derive(Debug, Default)]
pub struct SmoothWeighted {
    current: Vec<i64>,
}

impl SmoothWeighted {
    pub fn new(members: usize) -> SmoothWeighted {
        SmoothWeighted { current: vec![0; members] }
    }

    /// Picks among the members for which `eligible` holds, from the best priority tier present
    /// among them; `None` when none is eligible.
    pub fn pick(&mut self, members: &[Member], eligible: impl Fn(usize) -> bool) -> Option<usize> {
        if self.current.len() != members.len() {
            self.current = vec![0; members.len()];
        }
        let tier = (0..members.len()).filter(|&i| eligible(i)).map(|i| members[i].priority).min()?;
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        for (i, member) in members.iter().enumerate() {
            if member.priority != tier || !eligible(i) {
                continue;
            }
            let weight = i64::from(member.weight.max(1));
            self.current[i] += weight;
            total += weight;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        self.current[best] -= total;
        Some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn members(weights: &[u32]) -> Vec<Member> {
        weights.iter().map(|&weight| Member { weight, priority: 0 }).collect()
    }

    #[test]
    fn picks_follow_the_weights_interleaved() {
        let pool = members(&[5, 1, 1]);
        let mut rr = SmoothWeighted::new(3);
        let picks: Vec<usize> = (0..7).map(|_| rr.pick(&pool, |_| true).unwrap_or(99)).collect();
        // nginx's documented sequence for weights 5, 1, 1: a a b a c a a.
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn a_higher_tier_is_used_only_when_the_lower_has_no_eligible_member() {
        let pool = vec![
            Member { weight: 1, priority: 0 },
            Member { weight: 1, priority: 1 },
            Member { weight: 1, priority: 0 },
        ];
        let mut rr = SmoothWeighted::new(3);
        for _ in 0..10 {
            let pick = rr.pick(&pool, |_| true);
            assert!(matches!(pick, Some(0) | Some(2)), "tier 0 first: {pick:?}");
        }
        assert_eq!(rr.pick(&pool, |i| i == 1), Some(1));
        assert_eq!(rr.pick(&pool, |_| false), None);
    }

    #[test]
    fn an_ineligible_member_hands_its_share_to_the_others() {
        let pool = members(&[1, 1, 1]);
        let mut rr = SmoothWeighted::new(3);
        let picks: Vec<usize> = (0..6).map(|_| rr.pick(&pool, |i| i != 1).unwrap_or(99)).collect();
        assert_eq!(picks.iter().filter(|&&p| p == 1).count(), 0);
        assert_eq!(picks.iter().filter(|&&p| p == 0).count(), 3);
        assert_eq!(picks.iter().filter(|&&p| p == 2).count(), 3);
    }

    proptest! {
        /// Over any whole number of rounds (`sum(weights)` picks) each member is picked exactly
        /// its weight's times.
        #[test]
        fn each_round_is_exact(weights in proptest::collection::vec(1u32..20, 1..8), rounds in 1usize..5) {
            let pool = members(&weights);
            let mut rr = SmoothWeighted::new(pool.len());
            let total: u32 = weights.iter().sum();
            let mut counts = vec![0u32; pool.len()];
            for _ in 0..(total as usize * rounds) {
                let pick = rr.pick(&pool, |_| true);
                prop_assert!(pick.is_some());
                counts[pick.unwrap_or_default()] += 1;
            }
            for (count, weight) in counts.iter().zip(&weights) {
                prop_assert_eq!(*count, weight * rounds as u32);
            }
        }
    }
}
