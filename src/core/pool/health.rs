//! One backend's health as the gateway sees it, from the outcomes of the attempts sent to it.
//!
//! - **Cooling**: the backend answered 429; it takes nothing until the time it named (or
//!   [`DEFAULT_COOLING_NS`] when it named none). Throttling is the backend's quota, not a fault:
//!   it does not count toward ejection.
//! - **Ejected** (circuit breaker open): [`FAILURES_TO_EJECT`] failures in a row (connect error,
//!   5xx, first-byte timeout, broken head). It stays out for [`BASE_EJECTION_NS`], doubled for
//!   each ejection in a row up to [`MAX_EJECTION_NS`].
//! - **Probing** (half-open): once the ejection is over, exactly one request is let through; its
//!   success closes the breaker (healthy again, the ejection count reset), its failure ejects
//!   the backend again for twice as long. An active health check's answer counts the same.

/// Failures in a row that eject a backend (as Envoy's outlier detection: 5).
pub const FAILURES_TO_EJECT: u32 = 5;
/// The first ejection's length: 5 s.
pub const BASE_EJECTION_NS: u64 = 5_000_000_000;
/// The longest ejection: 5 minutes.
pub const MAX_EJECTION_NS: u64 = 300_000_000_000;
/// How long a 429 without a retry time keeps a backend out: 1 s.
pub const DEFAULT_COOLING_NS: u64 = 1_000_000_000;
/// The longest a backend's 429 can keep it out: 1 hour (a guard against an absurd value).
pub const MAX_COOLING_NS: u64 = 3_600_000_000_000;

/// The state reported in metrics and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Status {
    #[default]
    Healthy,
    Cooling,
    Ejected,
}

impl Status {
    pub const ALL: [Status; 3] = [Status::Healthy, Status::Cooling, Status::Ejected];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::Cooling => "cooling",
            Status::Ejected => "ejected",
        }
    }
}

/// Whether a backend can take an attempt now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Ready,
    /// Ejected, its time is over and no probe is out: the attempt is the probe.
    Probe,
    /// Not before this time (cooling, ejected; with a probe already out, a cooling period from now).
    Wait {
        until_ns: u64,
    },
}

/// What changed, for the one log line and the metrics a change gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub from: Status,
    pub to: Status,
    /// The backend was ejected (or ejected again after a failed probe) by this change, for this long.
    pub ejected_for_ns: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    failures_in_a_row: u32,
    cooling_until_ns: u64,
    /// `Some` while the breaker is open (or half-open).
    ejected_until_ns: Option<u64>,
    ejections_in_a_row: u32,
    probe_out: bool,
    /// The state last reported in a [`Change`]: a cooling period ends by itself, and is
    /// reported as over with the next outcome.
    reported: Status,
}

impl Health {
    pub fn status(&self, now_ns: u64) -> Status {
        if self.ejected_until_ns.is_some() {
            Status::Ejected
        } else if now_ns < self.cooling_until_ns {
            Status::Cooling
        } else {
            Status::Healthy
        }
    }

    pub fn admission(&self, now_ns: u64) -> Admission {
        if let Some(until) = self.ejected_until_ns {
            return if self.probe_out {
                Admission::Wait { until_ns: now_ns.saturating_add(DEFAULT_COOLING_NS) }
            } else if now_ns >= until {
                Admission::Probe
            } else {
                Admission::Wait { until_ns: until }
            };
        }
        if now_ns < self.cooling_until_ns {
            return Admission::Wait { until_ns: self.cooling_until_ns };
        }
        Admission::Ready
    }

    /// An attempt is about to be sent: what it may be now (a probe takes the one probe slot),
    /// or `None` when the backend can no longer take it (another request took the probe).
    pub fn start(&mut self, now_ns: u64) -> Option<Admission> {
        let admission = self.admission(now_ns);
        match admission {
            Admission::Ready => Some(admission),
            Admission::Probe => {
                self.probe_out = true;
                Some(admission)
            }
            Admission::Wait { .. } => None,
        }
    }

    /// The backend answered (anything but a 429 or a 5xx).
    pub fn succeeded(&mut self, now_ns: u64) -> Option<Change> {
        self.failures_in_a_row = 0;
        self.ejections_in_a_row = 0;
        self.probe_out = false;
        self.ejected_until_ns = None;
        self.changed(now_ns)
    }

    /// The backend failed an attempt.
    pub fn failed(&mut self, now_ns: u64) -> Option<Change> {
        self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
        let was_probe = std::mem::take(&mut self.probe_out);
        let eject = was_probe || (self.ejected_until_ns.is_none() && self.failures_in_a_row >= FAILURES_TO_EJECT);
        if !eject {
            return self.changed(now_ns);
        }
        let length = BASE_EJECTION_NS.saturating_mul(1u64 << self.ejections_in_a_row.min(16)).min(MAX_EJECTION_NS);
        self.ejections_in_a_row = self.ejections_in_a_row.saturating_add(1);
        self.ejected_until_ns = Some(now_ns.saturating_add(length));
        let from = std::mem::replace(&mut self.reported, Status::Ejected);
        Some(Change { from, to: Status::Ejected, ejected_for_ns: Some(length) })
    }

    /// The backend answered 429 and asked to be left alone for `retry_ns` (or did not say).
    pub fn throttled(&mut self, now_ns: u64, retry_ns: Option<u64>) -> Option<Change> {
        let wait = retry_ns.unwrap_or(DEFAULT_COOLING_NS).clamp(1, MAX_COOLING_NS);
        self.cooling_until_ns = self.cooling_until_ns.max(now_ns.saturating_add(wait));
        // A throttling backend is alive: a probe that gets a 429 closes the breaker.
        self.failures_in_a_row = 0;
        self.probe_out = false;
        if self.ejected_until_ns.take().is_some() {
            self.ejections_in_a_row = 0;
        }
        self.changed(now_ns)
    }

    /// An attempt ended without an outcome (the client went away first): a probe frees its slot.
    pub fn abandoned(&mut self, admission: Admission) {
        if admission == Admission::Probe {
            self.probe_out = false;
        }
    }

    fn changed(&mut self, now_ns: u64) -> Option<Change> {
        let to = self.status(now_ns);
        let from = std::mem::replace(&mut self.reported, to);
        (to != from).then_some(Change { from, to, ejected_for_ns: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn failures_in_a_row_eject_and_one_probe_closes_the_breaker() {
        let mut h = Health::default();
        for _ in 1..FAILURES_TO_EJECT {
            assert_eq!(h.failed(0), None);
            assert_eq!(h.admission(0), Admission::Ready);
        }
        let change = h.failed(0).unwrap();
        assert_eq!(
            change,
            Change { from: Status::Healthy, to: Status::Ejected, ejected_for_ns: Some(BASE_EJECTION_NS) }
        );
        assert_eq!(h.admission(1), Admission::Wait { until_ns: BASE_EJECTION_NS });
        assert_eq!(h.admission(BASE_EJECTION_NS), Admission::Probe);
        assert_eq!(h.start(BASE_EJECTION_NS), Some(Admission::Probe));
        assert_eq!(h.start(BASE_EJECTION_NS), None);
        // Only one probe at a time.
        assert_eq!(h.admission(BASE_EJECTION_NS), Admission::Wait { until_ns: BASE_EJECTION_NS + DEFAULT_COOLING_NS });
        let back = h.succeeded(BASE_EJECTION_NS + 1).unwrap();
        assert_eq!(back.to, Status::Healthy);
        assert_eq!(h.admission(BASE_EJECTION_NS + 1), Admission::Ready);
    }

    #[test]
    fn a_success_between_failures_resets_the_count() {
        let mut h = Health::default();
        for _ in 0..10 {
            for _ in 1..FAILURES_TO_EJECT {
                assert_eq!(h.failed(0), None);
            }
            assert_eq!(h.succeeded(0), None);
        }
        assert_eq!(h.status(0), Status::Healthy);
    }

    #[test]
    fn a_failed_probe_ejects_for_twice_as_long_up_to_the_cap() {
        let mut h = Health::default();
        for _ in 0..FAILURES_TO_EJECT {
            h.failed(0);
        }
        let mut now = 0;
        let mut expected = BASE_EJECTION_NS;
        for _ in 0..12 {
            now += expected;
            assert_eq!(h.start(now), Some(Admission::Probe));
            expected = (expected * 2).min(MAX_EJECTION_NS);
            let change = h.failed(now).unwrap();
            assert_eq!(change.ejected_for_ns, Some(expected));
            assert_eq!(h.admission(now + expected - 1), Admission::Wait { until_ns: now + expected });
        }
        assert_eq!(expected, MAX_EJECTION_NS);
    }

    #[test]
    fn an_abandoned_probe_frees_the_slot() {
        let mut h = Health::default();
        for _ in 0..FAILURES_TO_EJECT {
            h.failed(0);
        }
        let at = BASE_EJECTION_NS;
        assert_eq!(h.start(at), Some(Admission::Probe));
        h.abandoned(Admission::Probe);
        assert_eq!(h.admission(at), Admission::Probe);
    }

    #[test]
    fn a_429_cools_the_backend_for_the_time_it_names() {
        let mut h = Health::default();
        let change = h.throttled(10 * S, Some(2 * S)).unwrap();
        assert_eq!((change.from, change.to), (Status::Healthy, Status::Cooling));
        assert_eq!(h.admission(11 * S), Admission::Wait { until_ns: 12 * S });
        // A shorter second answer does not shorten the wait.
        assert_eq!(h.throttled(11 * S, Some(S / 2)), None);
        assert_eq!(h.admission(12 * S - 1), Admission::Wait { until_ns: 12 * S });
        assert_eq!(h.admission(12 * S), Admission::Ready);
        assert_eq!(h.status(12 * S), Status::Healthy);
        // The end of the cooling is reported with the next outcome, once.
        let over = h.succeeded(12 * S).unwrap();
        assert_eq!((over.from, over.to), (Status::Cooling, Status::Healthy));
        assert_eq!(h.succeeded(13 * S), None);
    }

    #[test]
    fn a_429_without_a_time_cools_for_the_default_and_absurd_times_are_capped() {
        let mut h = Health::default();
        h.throttled(0, None);
        assert_eq!(h.admission(0), Admission::Wait { until_ns: DEFAULT_COOLING_NS });
        let mut h = Health::default();
        h.throttled(0, Some(u64::MAX));
        assert_eq!(h.admission(0), Admission::Wait { until_ns: MAX_COOLING_NS });
    }

    #[test]
    fn throttling_is_not_a_failure() {
        let mut h = Health::default();
        for i in 0..(FAILURES_TO_EJECT * 3) {
            if i % 2 == 0 {
                h.failed(0);
            } else {
                h.throttled(0, Some(1));
            }
        }
        assert_ne!(h.status(10), Status::Ejected);
    }
}
