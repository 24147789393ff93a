//! Leases at scale, simulated (no network, no Redis): `R` replicas × `D` deployments sharing
//! their quotas through leases, on a virtual clock. The replicas run the gateway's own lease
//! ([`tollgate::core::quota::lease::Lease`], the code the gateway runs) in the order
//! `state::quota_store::leased` does; each deployment's shared buckets are a model of the Redis
//! scripts (`state::quota_store::scripts`: PRELUDE with ADMIT, LEASE and RECONCILE, the same
//! integer levels in 1/60,000 units refilled per millisecond). Prints the store calls a second
//! it takes with and without leases, and the over-admission observed against the bound of
//! `core::quota::lease`, over every window of up to a minute.
//!
//! Traffic: Poisson arrivals at `--rate` a second in all, over deployments by a Zipf law
//! (exponent 1: at 200,000 a second over 10,000 deployments the busiest is called ~20,000 times
//! a second, the quietest twice), each to a replica picked at random (a load balancer; with
//! `--spread K`, to one of K replicas the deployment picks, as a balancer hashing on it would).
//! Each deployment's quota is its demand times a factor drawn between 0.25 and 1.5 (`--factor`
//! for one factor; at least 60 requests a minute; tokens 200 a request, the default ratio):
//! over three minutes, which a full bucket starts with one of, about 40% of the deployments are
//! asked for more than they allow. Leases are `--lease-percent` of each quota (none below 2
//! requests, as the configuration does). A request reserves its prompt (20-200 tokens) +
//! `max_tokens` 64, uses its prompt + 0-64, and settles 0.2-2 s later.
//!
//! Simplifications, each named: a store call takes no time (with a round trip, requests arriving
//! at a replica while its renewal is in flight would go to the store one by one, so the counts
//! here are a floor for leases; the bound does not depend on timing); the reconciler sends what
//! is pending 1 ms after it was queued (one call per key, as its batches do).
//!
//! Under `cargo test` (no `--bench`), a small world instead (3 replicas × 20 deployments):
//! no window may break the bound, and leases must halve the calls at least.
//!
//!   cargo bench --bench lease_sim -- [--replicas 100] [--deployments 10000] [--seconds 60]
//!       [--rate 200000] [--lease-percent 1] [--lease-ms 1000] [--factor F] [--spread K] [--seed 1]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp};
use tollgate::core::quota::bucket::TokenBucket;
use tollgate::core::quota::lease::{Lease, LeaseSize, Renewal, Sweep, Unused};
use tollgate::core::quota::{Buckets, Limits};
use tollgate::state::quota_store::scripts::LEVEL_TO_SCALED;

/// The scripts' units per request or token.
const U: i64 = 60_000;
const SWEEP_NS: u64 = 250_000_000;
const FLUSH_NS: u64 = 1_000_000;
const CHECK_NS: u64 = 1_000_000_000;

#[derive(Clone, Copy)]
struct Args {
    replicas: usize,
    deployments: usize,
    seconds: u64,
    rate: f64,
    lease_percent: u64,
    lease_ms: u64,
    /// Every quota this times its demand (instead of a factor drawn between 0.25 and 1.5).
    factor: Option<f64>,
    /// Each deployment's requests go to this many of the replicas (a load balancer that hashes
    /// on the deployment), instead of to any.
    spread: Option<usize>,
    seed: u64,
}

fn args() -> Args {
    let mut a = Args {
        replicas: 100,
        deployments: 10_000,
        seconds: 60,
        rate: 200_000.0,
        lease_percent: 1,
        lease_ms: 1_000,
        factor: None,
        spread: None,
        seed: 1,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let value = || argv.get(i + 1).map(String::as_str).unwrap_or("");
        match argv[i].as_str() {
            "--replicas" => a.replicas = value().parse().unwrap(),
            "--deployments" => a.deployments = value().parse().unwrap(),
            "--seconds" => a.seconds = value().parse().unwrap(),
            "--rate" => a.rate = value().parse().unwrap(),
            "--lease-percent" => a.lease_percent = value().parse().unwrap(),
            "--lease-ms" => a.lease_ms = value().parse().unwrap(),
            "--factor" => a.factor = Some(value().parse().unwrap()),
            "--spread" => a.spread = Some(value().parse().unwrap()),
            "--seed" => a.seed = value().parse().unwrap(),
            _ => {
                i += 1; // `--bench`, and anything else cargo passes
                continue;
            }
        }
        i += 2;
    }
    a
}

/// One deployment's shared buckets, as the scripts keep them in its Redis hash.
struct Shared {
    rpm: i64,
    tpm: i64,
    r: i64,
    t: i64,
    at_ms: i64,
}

impl Shared {
    fn new(limits: Limits) -> Shared {
        let (rpm, tpm) = (limits.requests_per_minute as i64, limits.tokens_per_minute as i64);
        Shared { rpm, tpm, r: rpm * U, t: tpm * U, at_ms: 0 }
    }

    /// PRELUDE: refill to now.
    fn refill(&mut self, now_ms: i64) {
        let elapsed = (now_ms - self.at_ms).max(0);
        self.r = (self.r + elapsed * self.rpm).min(self.rpm * U);
        self.t = (self.t + elapsed * self.tpm).min(self.tpm * U);
        self.at_ms = self.at_ms.max(now_ms);
    }

    /// ADMIT with take = 1.
    fn admit(&mut self, now_ms: i64, want: u64) -> bool {
        self.refill(now_ms);
        let want = want as i64 * U;
        if self.r >= U && self.t >= want {
            self.r -= U;
            self.t -= want;
            return true;
        }
        false
    }

    /// LEASE: (admitted, requests granted, tokens granted).
    fn lease(&mut self, now_ms: i64, want: u64, ask: Unused, back: Unused, renewal: bool) -> (bool, u64, u64) {
        self.refill(now_ms);
        self.r = (self.r + back.requests as i64 * U).min(self.rpm * U);
        self.t = (self.t + back.tokens as i64 * U).min(self.tpm * U);
        let want = if renewal { want as i64 } else { 0 };
        if (self.r >= U || !renewal) && self.t >= want * U {
            let gr = (ask.requests as i64).min(self.r.max(0) / U);
            let gt = (ask.tokens as i64).max(want).min(self.t.max(0) / U);
            self.r -= gr * U;
            self.t -= gt * U;
            return (true, gr as u64, gt as u64);
        }
        (false, 0, 0)
    }

    /// RECONCILE: tokens back (or charged when negative), requests back; never past capacity.
    fn reconcile(&mut self, now_ms: i64, tokens: i64, requests: i64) {
        self.refill(now_ms);
        self.t = if tokens > 0 { (self.t + tokens * U).min(self.tpm * U) } else { self.t + tokens * U };
        if requests > 0 {
            self.r = (self.r + requests * U).min(self.rpm * U);
        }
    }

    fn buckets(&self) -> Buckets {
        Buckets {
            requests: TokenBucket::at_level(self.rpm as u64, i128::from(self.r) * LEVEL_TO_SCALED),
            tokens: TokenBucket::at_level(self.tpm as u64, i128::from(self.t) * LEVEL_TO_SCALED),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Arrive,
    Settle { deployment: u32, replica: u32, reserved: u32, actual: u32, leased: bool },
    Sweep { replica: u32 },
    Flush { replica: u32 },
    Check,
}

#[derive(Default)]
struct Calls {
    admit: u64,
    lease: u64,
    reconcile: u64,
}

#[derive(Default)]
struct Outcome {
    arrived: u64,
    admitted: u64,
    refused_locally: u64,
    calls: Calls,
    /// The largest `admitted in a window - (capacity + refill)` over every deployment and
    /// window of up to a minute (requests; tokens), with the leases held at its start.
    worst_requests: (i64, i64),
    worst_tokens: (i64, i64),
    /// Windows where that exceeded what the leases held at the start (the bound broken).
    violations: u64,
    /// The largest that all replicas held of one deployment at a checkpoint (requests).
    most_held: u64,
    /// The largest over-admission (requests) as a share of its bound, `replicas × lease`.
    bound_share: f64,
    /// Admitted / what a lone exact bucket per deployment would admit at most (the smaller of
    /// what was asked and the quota plus refill), over all deployments.
    efficiency: f64,
    /// Requests asked and store calls, by how often a replica sees the deployment in a lease's
    /// life ([`CLASSES`]).
    by_class: [(u64, [u64; 3]); 4],
}

/// Classes of deployments by the requests one replica gets in `lease_ms`: below 1, 1-10,
/// 10-100, 100 or more.
const CLASSES: [&str; 4] = ["<1", "1-10", "10-100", ">=100"];

struct Sim<'a> {
    args: &'a Args,
    leases: bool,
    limits: &'a [Limits],
    /// Each deployment's lease (none: admitted by the store alone).
    sizes: &'a [Option<LeaseSize>],
    now: u64,
    seq: u64,
    events: BinaryHeap<Reverse<(u64, u64, Event)>>,
    shared: Vec<Shared>,
    /// Per replica, per deployment: its lease (made on first use).
    held: Vec<Vec<Option<Arc<Lease>>>>,
    /// Per replica: the deployments whose lease the sweeper watches.
    listed: Vec<Vec<u32>>,
    /// Per replica: sums waiting for the reconciler (tokens, requests) by deployment.
    pending: Vec<HashMap<u32, (i64, i64)>>,
    flushing: Vec<bool>,
    /// Per deployment: requests admitted, tokens admitted (reserved, less refunds), asked.
    admitted_requests: Vec<i64>,
    admitted_tokens: Vec<i64>,
    asked: Vec<u64>,
    /// Per deployment: store calls made for it.
    calls_of: Vec<[u64; 3]>,
    /// Per checkpoint, per deployment: (admitted requests, tokens, held requests, tokens).
    checkpoints: Vec<Vec<(i64, i64, i64, i64)>>,
    out: Outcome,
}

impl<'a> Sim<'a> {
    fn new(args: &'a Args, leases: bool, limits: &'a [Limits], sizes: &'a [Option<LeaseSize>]) -> Sim<'a> {
        Sim {
            args,
            leases,
            limits,
            sizes,
            now: 0,
            seq: 0,
            events: BinaryHeap::new(),
            shared: limits.iter().map(|&l| Shared::new(l)).collect(),
            held: (0..args.replicas).map(|_| vec![None; args.deployments]).collect(),
            listed: vec![Vec::new(); args.replicas],
            pending: vec![HashMap::new(); args.replicas],
            flushing: vec![false; args.replicas],
            admitted_requests: vec![0; args.deployments],
            admitted_tokens: vec![0; args.deployments],
            asked: vec![0; args.deployments],
            calls_of: vec![[0; 3]; args.deployments],
            checkpoints: Vec::new(),
            out: Outcome::default(),
        }
    }

    fn at(&mut self, t: u64, event: Event) {
        self.seq += 1;
        self.events.push(Reverse((t, self.seq, event)));
    }

    fn now_ms(&self) -> i64 {
        (self.now / 1_000_000) as i64
    }

    fn queue(&mut self, replica: usize, deployment: u32, tokens: i64, requests: i64) {
        if tokens == 0 && requests == 0 {
            return;
        }
        let entry = self.pending[replica].entry(deployment).or_default();
        entry.0 += tokens;
        entry.1 += requests;
        if !self.flushing[replica] {
            self.flushing[replica] = true;
            self.at(self.now + FLUSH_NS, Event::Flush { replica: replica as u32 });
        }
    }

    /// `hold_grant`: held up to the lease's size, listed with the sweeper, excess given back.
    fn hold(&mut self, replica: usize, deployment: u32, renewal: Renewal, requests: u64, tokens: u64) {
        let shared = self.shared[deployment as usize].buckets().state();
        let granted = renewal.granted(requests, tokens, shared, self.now + self.args.lease_ms * 1_000_000);
        if granted.unlisted {
            self.listed[replica].push(deployment);
        }
        let excess = granted.excess;
        self.queue(replica, deployment, excess.tokens as i64, excess.requests as i64);
    }

    /// `state::quota_store::leased`, then the store without the lease: true when admitted.
    fn admit(&mut self, replica: usize, deployment: u32, reserved: u64) -> bool {
        let d = deployment as usize;
        let now_ms = self.now_ms();
        let size = match (self.leases, self.sizes[d]) {
            (true, Some(size)) => size,
            _ => {
                self.out.calls.admit += 1;
                self.calls_of[d][0] += 1;
                return self.shared[d].admit(now_ms, reserved);
            }
        };
        let lease = Arc::clone(self.held[replica][d].get_or_insert_with(|| Arc::new(Lease::new(size))));
        if let Some(taken) = lease.take(reserved, self.now) {
            if taken.low {
                if let Some(top_up) = lease.top_up() {
                    self.out.calls.lease += 1;
                    self.calls_of[d][1] += 1;
                    let (ok, requests, tokens) = self.shared[d].lease(now_ms, 0, top_up.ask, top_up.unused, false);
                    if ok {
                        self.hold(replica, deployment, top_up, requests, tokens);
                    }
                }
            }
            return true;
        }
        if lease.still_refused(reserved, self.now).is_some() {
            self.out.refused_locally += 1;
            return false;
        }
        let Some(renewal) = lease.renew(self.now) else {
            self.out.calls.admit += 1;
            self.calls_of[d][0] += 1;
            return self.shared[d].admit(now_ms, reserved);
        };
        self.out.calls.lease += 1;
        self.calls_of[d][1] += 1;
        let (ok, requests, tokens) = self.shared[d].lease(now_ms, reserved, renewal.ask, renewal.unused, true);
        if !ok {
            lease.refused(self.shared[d].buckets(), self.now, self.args.replicas as u64);
            return false;
        }
        self.hold(replica, deployment, renewal, requests - 1, tokens - reserved);
        true
    }

    fn run(mut self, weights: &[f64]) -> Outcome {
        let mut rng = StdRng::seed_from_u64(self.args.seed);
        let gaps = Exp::new(self.args.rate).unwrap();
        let end = self.args.seconds * 1_000_000_000;
        self.at(0, Event::Arrive);
        self.at(0, Event::Check);
        for replica in 0..self.args.replicas {
            // Sweepers tick out of step, as separate processes do.
            let phase = rng.random_range(0..SWEEP_NS);
            self.at(phase, Event::Sweep { replica: replica as u32 });
        }
        while let Some(Reverse((t, _, event))) = self.events.pop() {
            if t > end {
                break;
            }
            self.now = t;
            match event {
                Event::Arrive => {
                    let gap = (gaps.sample(&mut rng) * 1e9) as u64;
                    self.at(t + gap.max(1), Event::Arrive);
                    let pick: f64 = rng.random();
                    let deployment = weights.partition_point(|&w| w < pick).min(self.args.deployments - 1) as u32;
                    let replica = match self.args.spread {
                        // The deployment's own `spread` replicas, from a place its number picks.
                        Some(spread) => {
                            let first = (deployment as usize).wrapping_mul(7_919) % self.args.replicas;
                            (first + rng.random_range(0..spread.clamp(1, self.args.replicas))) % self.args.replicas
                        }
                        None => rng.random_range(0..self.args.replicas),
                    };
                    let prompt: u64 = rng.random_range(20..=200);
                    let (reserved, actual) = (prompt + 64, prompt + rng.random_range(0..=64));
                    let latency = rng.random_range(200_000_000..2_000_000_000u64);
                    self.out.arrived += 1;
                    self.asked[deployment as usize] += 1;
                    if self.admit(replica, deployment, reserved) {
                        self.out.admitted += 1;
                        self.admitted_requests[deployment as usize] += 1;
                        self.admitted_tokens[deployment as usize] += reserved as i64;
                        let settle = Event::Settle {
                            deployment,
                            replica: replica as u32,
                            reserved: reserved as u32,
                            actual: actual as u32,
                            leased: self.leases,
                        };
                        self.at(t + latency, settle);
                    }
                }
                Event::Settle { deployment, replica, reserved, actual, leased } => {
                    let back = i64::from(reserved) - i64::from(actual);
                    self.admitted_tokens[deployment as usize] -= back;
                    let rest = match (leased, &self.held[replica as usize][deployment as usize]) {
                        (true, Some(lease)) => lease.settle(back),
                        _ => back,
                    };
                    self.queue(replica as usize, deployment, rest, 0);
                }
                Event::Flush { replica } => {
                    let r = replica as usize;
                    self.flushing[r] = false;
                    let now_ms = self.now_ms();
                    for (deployment, (tokens, requests)) in std::mem::take(&mut self.pending[r]) {
                        self.out.calls.reconcile += 1;
                        self.calls_of[deployment as usize][2] += 1;
                        self.shared[deployment as usize].reconcile(now_ms, tokens, requests);
                    }
                }
                Event::Sweep { replica } => {
                    let r = replica as usize;
                    let listed = std::mem::take(&mut self.listed[r]);
                    let mut keep = Vec::with_capacity(listed.len());
                    for deployment in listed {
                        let Some(lease) = self.held[r][deployment as usize].clone() else { continue };
                        match lease.expire(t) {
                            Sweep::Keep => keep.push(deployment),
                            Sweep::Unlist(unused) => {
                                self.queue(r, deployment, unused.tokens as i64, unused.requests as i64)
                            }
                        }
                    }
                    self.listed[r] = keep;
                    self.at(t + SWEEP_NS, Event::Sweep { replica });
                }
                Event::Check => {
                    let mut row = Vec::with_capacity(self.args.deployments);
                    for d in 0..self.args.deployments {
                        let (mut hr, mut ht) = (0, 0);
                        for replica in &self.held {
                            if let Some(lease) = &replica[d] {
                                let held = lease.held();
                                (hr, ht) = (hr + held.requests as i64, ht + held.tokens as i64);
                            }
                        }
                        self.out.most_held = self.out.most_held.max(hr as u64);
                        row.push((self.admitted_requests[d], self.admitted_tokens[d], hr, ht));
                    }
                    self.checkpoints.push(row);
                    self.at(t + CHECK_NS, Event::Check);
                }
            }
        }
        self.judge();
        self.out
    }

    /// Every window between two checkpoints at most a minute apart, for every deployment.
    fn judge(&mut self) {
        let (mut worst_r, mut worst_t, mut violations, mut share) = ((i64::MIN, 0), (i64::MIN, 0), 0, 0.0f64);
        for (i, start) in self.checkpoints.iter().enumerate() {
            for (gap, stop) in self.checkpoints[i + 1..].iter().take(60).enumerate() {
                let seconds = gap as i64 + 1;
                for (d, (a, b)) in start.iter().zip(stop).enumerate() {
                    let (rpm, tpm) =
                        (self.limits[d].requests_per_minute as i64, self.limits[d].tokens_per_minute as i64);
                    let (allow_r, allow_t) = (rpm + (rpm * seconds + 59) / 60, tpm + (tpm * seconds + 59) / 60);
                    let (over_r, over_t) = (b.0 - a.0 - allow_r, b.1 - a.1 - allow_t);
                    if over_r > worst_r.0 {
                        worst_r = (over_r, a.2);
                    }
                    if over_t > worst_t.0 {
                        worst_t = (over_t, a.3);
                    }
                    if over_r > a.2 || over_t > a.3 {
                        violations += 1;
                    }
                    if let Some(size) = self.sizes[d] {
                        let bound = (self.args.replicas as u64 * size.requests) as f64;
                        share = share.max(over_r as f64 / bound);
                    }
                }
            }
        }
        self.out.worst_requests = worst_r;
        self.out.worst_tokens = worst_t;
        self.out.violations = violations;
        self.out.bound_share = share;
        let seconds = self.args.seconds as f64;
        let (mut admitted, mut admissible) = (0.0, 0.0);
        for d in 0..self.args.deployments {
            let allowance = self.limits[d].requests_per_minute as f64 * (1.0 + seconds / 60.0);
            admitted += self.admitted_requests[d] as f64;
            admissible += (self.asked[d] as f64).min(allowance);
        }
        self.out.efficiency = admitted / admissible;
        let seen = |d: usize| {
            let replicas = self.args.spread.unwrap_or(self.args.replicas).clamp(1, self.args.replicas);
            self.asked[d] as f64 / self.args.seconds as f64 * self.args.lease_ms as f64 / 1000.0 / replicas as f64
        };
        for d in 0..self.args.deployments {
            let class = match seen(d) {
                x if x < 1.0 => 0,
                x if x < 10.0 => 1,
                x if x < 100.0 => 2,
                _ => 3,
            };
            self.out.by_class[class].0 += self.asked[d];
            for kind in 0..3 {
                self.out.by_class[class].1[kind] += self.calls_of[d][kind];
            }
        }
    }
}

/// The deployments: Zipf weights (exponent 1) as a cumulative distribution, each one's quota
/// (its demand times the factor, at least 60 a minute, 200 tokens a request), and its lease.
fn world(args: &Args) -> (Vec<f64>, Vec<Limits>, Vec<Option<LeaseSize>>) {
    let raw: Vec<f64> = (1..=args.deployments).map(|k| 1.0 / k as f64).collect();
    let total: f64 = raw.iter().sum();
    let mut weights = Vec::with_capacity(raw.len());
    let mut sum = 0.0;
    for w in &raw {
        sum += w / total;
        weights.push(sum);
    }
    let mut rng = StdRng::seed_from_u64(args.seed ^ 0x5eed);
    let limits: Vec<Limits> = raw
        .iter()
        .map(|w| {
            let demand_per_minute = args.rate * w / total * 60.0;
            let factor = args.factor.unwrap_or_else(|| rng.random_range(0.25..1.5));
            let rpm = ((demand_per_minute * factor) as u64).clamp(60, 1_000_000_000);
            Limits { requests_per_minute: rpm, tokens_per_minute: (rpm * 200).min(1_000_000_000) }
        })
        .collect();
    let sizes =
        limits.iter().map(|&l| Some(LeaseSize::share(l, args.lease_percent)).filter(|s| s.requests >= 2)).collect();
    (weights, limits, sizes)
}

fn main() {
    let args = args();
    let (weights, limits, sizes) = world(&args);
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test` runs this unoptimised and without `--bench`: a small world instead,
        // checking that no window broke the bound and that leases saved calls.
        let small = Args { replicas: 3, deployments: 20, seconds: 30, rate: 3_000.0, lease_percent: 5, ..args };
        let (weights, limits, sizes) = world(&small);
        let calls = |out: &Outcome| out.calls.admit + out.calls.lease + out.calls.reconcile;
        let without = Sim::new(&small, false, &limits, &sizes).run(&weights);
        let with = Sim::new(&small, true, &limits, &sizes).run(&weights);
        assert_eq!((without.violations, with.violations), (0, 0), "a window admitted more than the bound");
        assert!(with.worst_requests.0 <= with.worst_requests.1, "over the quota by more than was held");
        assert!(
            calls(&with) * 2 < calls(&without),
            "leases saved no calls: {} against {}",
            calls(&with),
            calls(&without)
        );
        return;
    }
    let leased = sizes.iter().filter(|s| s.is_some()).count();
    let mut rpms: Vec<u64> = limits.iter().map(|l| l.requests_per_minute).collect();
    rpms.sort_unstable();
    println!(
        "{} replicas x {} deployments, {} requests/s for {} s (Zipf 1); quotas {}..{} requests a minute (median {}); leases {}% of the quota on the {} deployments where that is 2 requests or more; lease_ms {}; each deployment to {} replicas",
        args.replicas,
        args.deployments,
        args.rate,
        args.seconds,
        rpms[0],
        rpms[rpms.len() - 1],
        rpms[rpms.len() / 2],
        args.lease_percent,
        leased,
        args.lease_ms,
        args.spread.unwrap_or(args.replicas).clamp(1, args.replicas)
    );
    println!(
        "{:<10} {:>11} {:>10} {:>9} {:>9} {:>11} {:>9} {:>13} {:>13} {:>10} {:>11} {:>10} {:>6}",
        "mode",
        "admitted/s",
        "calls/s",
        "admit/s",
        "lease/s",
        "reconcile/s",
        "calls/req",
        "over_req(H)",
        "over_tok(H)",
        "most_held",
        "bound_used",
        "efficiency",
        "broken"
    );
    let mut classes = Vec::new();
    for leases in [false, true] {
        let started = Instant::now();
        let out = Sim::new(&args, leases, &limits, &sizes).run(&weights);
        classes.push(out.by_class);
        let s = args.seconds as f64;
        let calls = out.calls.admit + out.calls.lease + out.calls.reconcile;
        println!(
            "{:<10} {:>11.0} {:>10.0} {:>9.0} {:>9.0} {:>11.0} {:>9.3} {:>13} {:>13} {:>10} {:>11.3} {:>10.4} {:>6}   ({:.0} s to simulate; {} refusals answered by a lease)",
            if leases { "leases" } else { "no leases" },
            out.admitted as f64 / s,
            calls as f64 / s,
            out.calls.admit as f64 / s,
            out.calls.lease as f64 / s,
            out.calls.reconcile as f64 / s,
            calls as f64 / out.arrived.max(1) as f64,
            format!("{}({})", out.worst_requests.0, out.worst_requests.1),
            format!("{}({})", out.worst_tokens.0, out.worst_tokens.1),
            out.most_held,
            out.bound_share,
            out.efficiency,
            out.violations,
            started.elapsed().as_secs_f64(),
            out.refused_locally,
        );
    }
    println!("calls per request by the requests one replica gets of a deployment in lease_ms:");
    for (i, class) in CLASSES.iter().enumerate() {
        let (asked, without) = classes[0][i];
        let with = classes[1][i].1;
        let per = |calls: u64| calls as f64 / asked.max(1) as f64;
        let (without, all) = (without.iter().sum::<u64>(), with.iter().sum::<u64>());
        println!(
            "  {:<7} {:>5.1}% of requests: {:.3} without leases, {:.3} with ({:.1}x fewer; admit {:.3}, lease {:.3}, reconcile {:.3})",
            class,
            100.0 * asked as f64 / classes[0].iter().map(|c| c.0).sum::<u64>().max(1) as f64,
            per(without),
            per(all),
            per(without) / per(all).max(1e-9),
            per(with[0]),
            per(with[1]),
            per(with[2])
        );
    }
    println!(
        "over_*: the most admitted in a window of up to a minute beyond the quota plus its refill, and (H) what the replicas held at its start; \
         bound (core::quota::lease): over <= H <= replicas x lease; bound_used: the largest over / (replicas x lease); broken: windows where over > H"
    );
}
