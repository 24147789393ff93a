//! The deployments a gateway serves, ready for the hot path: looked up by name, keys as digests,
//! backend credentials as pre-built header values.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;

use crate::config::metrics::{DeploymentDetail, MetricsConfig};
use crate::config::{BackendSettings, DeploymentConfig};
use crate::core::billing::Prices;
use crate::core::clock::Clock;
use crate::core::estimate::Tokenizer;
use crate::core::keys::{IndexedDigest, KeyDigest, KeyPair};
use crate::core::quota::lease::Lease;
use crate::core::quota::{DeploymentQuota, Limits};
use crate::state::admission_queue::AdmissionQueue;
use crate::state::budget::Budget;
use crate::state::consumer::Consumer;
use crate::state::pool::{BackendPool, BackendRegistry};
use crate::state::totals::UsageCounters;

/// Pre-flights a deployment answers per minute (all its callers together).
pub const DRY_RUNS_PER_MINUTE: u64 = 600;

/// What every deployment of one table build shares.
#[derive(Clone, Copy)]
pub struct BuildContext<'a> {
    /// Backends' health and buckets by URL.
    pub registry: &'a BackendRegistry,
    pub clock: &'a Arc<dyn Clock>,
    pub settings: &'a BackendSettings,
    /// The `[billing]` currency its costs are in.
    pub currency: &'a Arc<str>,
    /// The table's budgets (a deployment keeps those that watch it).
    pub budgets: &'a [Arc<Budget>],
    /// `[metrics]`: the detail each deployment exports.
    pub metrics: &'a MetricsConfig,
}

/// Where a deployment was declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `[[deployments]]` in the configuration file: changed there.
    File,
    /// Created through the admin API.
    Api,
}

/// Whether a deployment can serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Online,
    /// Calls get 503 with this reason.
    Unhealthy(String),
}

/// One serverless-style endpoint: a name, its keys and the backends behind it.
///
/// Laid out in declaration order (`repr(C)`), what every request reads first: at 10,000
/// deployments a request's deployment is rarely in cache, and each line it touches is a miss
/// (callgrind's cache simulation counts them; `benches/scale_cpu.sh` measures the cost).
#[derive(Debug)]
#[repr(C)]
pub struct Deployment {
    pub name: String,
    pub health: Health,
    pub keys: KeyPair,
    /// What `/metrics` keeps of it (`[metrics]`).
    pub metric_detail: MetricDetail,
    pub tokenizer: Tokenizer,
    pub origin: Origin,
    /// Requests waiting for `quota`: made when `max_wait_ms` lets them wait, then kept across
    /// reloads.
    pub queue: Option<Arc<AdmissionQueue>>,
    pub quota: Arc<DeploymentQuota>,
    /// This replica's lease on the shared buckets (`lease_requests` / `lease_tokens`); kept
    /// across reloads.
    pub lease: Option<Arc<Lease>>,
    /// Running usage totals (see [`crate::state::totals`]); kept across reloads.
    pub usage: Arc<UsageCounters>,
    /// Its busiest metric series, resolved once ([`crate::state::metrics::DeploymentSeries`]).
    pub series: crate::state::metrics::LazySeries,
    pub default_max_tokens: u64,
    /// The longest one attempt waits for a backend's response head.
    pub first_byte_timeout: Duration,
    /// The longest a request waits for a response head, all attempts together.
    pub deadline: Duration,
    pub max_attempts: u32,
    /// Its backends (one, or a pool), with their health and own buckets.
    pub pool: BackendPool,
    /// The budgets watching its project or subscription (usually none).
    pub budgets: Vec<Arc<Budget>>,
    /// What its tokens cost, as of this table (a request is billed at the prices of the table it
    /// arrived under); none: its requests cost nothing and the ledger writes no cost.
    pub prices: Option<Prices>,
    pub currency: Arc<str>,
    pub project: String,
    pub model: String,
    // Read off the request path only.
    /// `/projects/{p}/subscriptions/{name}` the deployment depends on, if any.
    pub subscription: Option<String>,
    /// Active health checks of its pool's backends, when set.
    /// (Milliseconds, at most an hour: a `u32`, which keeps the struct in its allocation class;
    /// see [`Deployment::health_check_interval`].)
    health_check_ms: Option<u32>,
    /// When this gateway first served the deployment (Unix seconds; `created` in `/v1/models`).
    pub created_unix: u64,
    /// The backend's last `/info` answer (started afresh by a reload, which may change the backend).
    pub info: InfoCache,
    /// Pre-flights (`?dry-run=true`) take from this instead of `quota`: they cost no quota but
    /// are limited ([`DRY_RUNS_PER_MINUTE`]); made on the first one, kept across reloads
    /// ([`Deployment::dry_runs`]).
    dry_runs: std::sync::OnceLock<Arc<DeploymentQuota>>,
}

// An `Arc<Deployment>` fits jemalloc's 512-byte class (with the `Arc`'s two counts).
const _: () = assert!(std::mem::size_of::<Deployment>() <= 496);

/// The backend key as the two headers the API accepts, marked sensitive so they are never logged.
#[derive(Debug)]
pub struct BackendAuth {
    pub api_key: HeaderValue,
    pub bearer: HeaderValue,
}

impl BackendAuth {
    pub fn new(key: &str) -> Option<BackendAuth> {
        let mut api_key = HeaderValue::from_str(key).ok()?;
        let mut bearer = HeaderValue::from_str(&format!("Bearer {key}")).ok()?;
        api_key.set_sensitive(true);
        bearer.set_sensitive(true);
        Some(BackendAuth { api_key, bearer })
    }
}

/// What `/metrics` keeps of one deployment: its detail level, and whether its consumers' and
/// pool backends' series are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricDetail {
    pub deployment: DeploymentDetail,
    pub consumers: bool,
    pub backends: bool,
}

impl Deployment {
    /// The `deployment` label of its counters and limits: its name, or "" (the gateway-wide
    /// series) when `[metrics] deployments = "off"`.
    pub fn counter_label(&self) -> &str {
        if self.metric_detail.deployment == DeploymentDetail::Off { "" } else { &self.name }
    }

    /// The `deployment` label of its histograms, token split, levels and in-flight count: its
    /// name only with full detail, else "" (counted gateway-wide).
    pub fn detail_label(&self) -> &str {
        if self.metric_detail.deployment == DeploymentDetail::Full { &self.name } else { "" }
    }

    /// The `backend` label of a pool backend's counters: its name, or "" with `backends = "off"`.
    pub fn backend_label<'a>(&self, backend: &'a str) -> &'a str {
        if self.metric_detail.backends { backend } else { "" }
    }

    /// How often its pool's backends are checked (`health_check_interval_ms`), if they are.
    pub fn health_check_interval(&self) -> Option<Duration> {
        self.health_check_ms.map(|ms| Duration::from_millis(u64::from(ms)))
    }

    /// The buckets of its pre-flights, made on the first one. (A first pre-flight racing a table
    /// build may make buckets the new table does not carry over: one minute's allowance more.)
    pub fn dry_runs(&self) -> &DeploymentQuota {
        self.dry_runs.get_or_init(|| {
            let limits = Limits { requests_per_minute: DRY_RUNS_PER_MINUTE, tokens_per_minute: DRY_RUNS_PER_MINUTE };
            Arc::new(DeploymentQuota::new(limits, Arc::clone(self.pool.clock())))
        })
    }

    /// Its queue, when requests may wait in it now.
    pub fn waiting_room(&self) -> Option<&Arc<AdmissionQueue>> {
        self.queue.as_ref().filter(|q| q.waits())
    }

    /// Requests queued and the tokens they reserve.
    pub fn queue_depth(&self) -> (usize, u64) {
        self.queue.as_ref().map_or((0, 0), |q| q.depth())
    }

    /// The name of the subscription it depends on (`s` of `/projects/p/subscriptions/s`).
    pub fn subscription_name(&self) -> Option<&str> {
        self.subscription.as_deref().and_then(|id| id.rsplit('/').next())
    }

    pub fn from_config(config: &DeploymentConfig, clock: &Arc<dyn Clock>) -> Deployment {
        let (registry, settings) = (BackendRegistry::default(), BackendSettings::default());
        let currency: Arc<str> = Arc::from(crate::config::billing::DEFAULT_CURRENCY);
        let metrics = MetricsConfig::standard();
        let context = BuildContext {
            registry: &registry,
            clock,
            settings: &settings,
            currency: &currency,
            budgets: &[],
            metrics: &metrics,
        };
        Deployment::build(config, Origin::File, Health::Online, None, None, &context)
    }

    /// A deployment from its configuration. With `previous` (the same name before a reload or an
    /// admin change) the quota buckets and usage totals carry on: levels are kept, limits updated.
    /// Its backends' health and buckets come from `registry`, by URL.
    pub fn build(
        config: &DeploymentConfig,
        origin: Origin,
        health: Health,
        subscription: Option<String>,
        previous: Option<&Deployment>,
        context: &BuildContext<'_>,
    ) -> Deployment {
        let BuildContext { registry, clock, settings, currency, budgets, metrics } = *context;
        let budgets = budgets
            .iter()
            .filter(|b| b.watches_deployment(&config.project, subscription.as_deref()))
            .cloned()
            .collect();
        let pool = BackendPool::build(&config.backends, previous.map(|p| &p.pool), registry, clock, settings);
        let quota = match previous {
            Some(previous) => {
                previous.quota.set_limits(config.limits);
                Arc::clone(&previous.quota)
            }
            None => Arc::new(DeploymentQuota::new(config.limits, Arc::clone(clock))),
        };
        let dry_runs = std::sync::OnceLock::new();
        if let Some(kept) = previous.and_then(|p| p.dry_runs.get()) {
            let _ = dry_runs.set(Arc::clone(kept));
        }
        // A queue only where requests may wait (most deployments never do: ~650 bytes saved on
        // each); once made it is kept, so a reload that turns waiting off still closes it on
        // shutdown and its waiters finish their turns.
        let queue = match previous.and_then(|p| p.queue.as_ref()) {
            Some(kept) => {
                kept.set_config(config.queue);
                Some(Arc::clone(kept))
            }
            None if !config.queue.max_wait.is_zero() => Some(Arc::new(AdmissionQueue::new(config.queue))),
            None => None,
        };
        // A lease carries on with a new size; one dropped by a reload is still given back by the
        // store's sweeper once it expires.
        let lease = match (config.lease, previous.and_then(|p| p.lease.as_ref())) {
            (Some(size), Some(kept)) => {
                kept.set_size(size);
                Some(Arc::clone(kept))
            }
            (Some(size), None) => Some(Arc::new(Lease::new(size))),
            (None, _) => None,
        };
        Deployment {
            lease,
            name: config.name.clone(),
            model: config.model.clone(),
            project: config.project.clone(),
            origin,
            health,
            subscription,
            pool,
            keys: config.keys.clone(),
            first_byte_timeout: config.first_byte_timeout,
            max_attempts: config.max_attempts,
            deadline: config.deadline,
            health_check_ms: config.health_check_interval.map(|i| u32::try_from(i.as_millis()).unwrap_or(u32::MAX)),
            quota,
            queue,
            dry_runs,
            default_max_tokens: config.default_max_tokens,
            tokenizer: config.tokenizer,
            usage: previous.map_or_else(|| Arc::new(UsageCounters::default()), |p| Arc::clone(&p.usage)),
            created_unix: previous.map_or_else(
                || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                |p| p.created_unix,
            ),
            info: InfoCache::default(),
            series: Default::default(),
            metric_detail: MetricDetail {
                deployment: metrics.detail_of(&config.name),
                consumers: metrics.consumers,
                backends: metrics.backends,
            },
            prices: config.prices,
            currency: Arc::clone(currency),
            budgets,
        }
    }
}

/// All deployments by name, and by key digest (for requests that name no deployment: the key
/// alone then says which one is meant); the consumers by their keys.
#[derive(Debug, Default)]
pub struct DeploymentTable {
    by_name: HashSet<ByName>,
    /// A key of one deployment (the usual case: no allocation beside the slot)...
    by_key: HashMap<IndexedDigest, Arc<Deployment>>,
    /// ...and keys several deployments share, their owners sorted by name.
    shared_keys: HashMap<IndexedDigest, Vec<Arc<Deployment>>>,
    /// The deployments whose pools are health-checked (usually few: the checker looks at these,
    /// not at every deployment, each time).
    health_checked: Vec<Arc<Deployment>>,
    consumers: Vec<Arc<Consumer>>,
    consumer_by_key: HashMap<IndexedDigest, Arc<Consumer>>,
    budgets: Vec<Arc<Budget>>,
}

/// A deployment in a set looked up by its name (the name is not copied into a key: at 10,000
/// deployments the table should cost little beside them).
#[derive(Debug)]
struct ByName(Arc<Deployment>);

impl std::borrow::Borrow<str> for ByName {
    fn borrow(&self) -> &str {
        &self.0.name
    }
}

impl PartialEq for ByName {
    fn eq(&self, other: &ByName) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for ByName {}

impl std::hash::Hash for ByName {
    // As `str` hashes: `Borrow<str>` lookups find it.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.name.as_str().hash(state);
    }
}

impl DeploymentTable {
    // `ByName` hashes and compares the deployment's name only, which never changes.
    #[allow(clippy::mutable_key_type)]
    pub fn from_deployments(deployments: Vec<Arc<Deployment>>) -> DeploymentTable {
        let mut by_name: HashSet<ByName> = HashSet::with_capacity(deployments.len());
        for deployment in deployments {
            by_name.replace(ByName(deployment)); // as a map would: the last of a name stays
        }
        let mut owners_of: HashMap<IndexedDigest, Vec<Arc<Deployment>>> = HashMap::new();
        let mut by_key: HashMap<IndexedDigest, Arc<Deployment>> = HashMap::with_capacity(by_name.len());
        for ByName(deployment) in &by_name {
            let keys = &deployment.keys;
            let secondary = keys.secondary.filter(|s| !s.ct_eq(&keys.primary));
            for digest in std::iter::once(keys.primary).chain(secondary) {
                let digest = IndexedDigest(digest);
                if let Some(owners) = owners_of.get_mut(&digest) {
                    owners.push(Arc::clone(deployment));
                } else if let Some(first) = by_key.remove(&digest) {
                    owners_of.insert(digest, vec![first, Arc::clone(deployment)]);
                } else {
                    by_key.insert(digest, Arc::clone(deployment));
                }
            }
        }
        for owners in owners_of.values_mut() {
            owners.sort_by(|a, b| a.name.cmp(&b.name));
        }
        let health_checked = by_name
            .iter()
            .filter(|d| d.0.health_check_ms.is_some() && d.0.pool.len() > 1)
            .map(|d| Arc::clone(&d.0))
            .collect();
        DeploymentTable {
            by_name,
            by_key,
            shared_keys: owners_of,
            health_checked,
            consumers: Vec::new(),
            consumer_by_key: HashMap::new(),
            budgets: Vec::new(),
        }
    }

    /// The table with these consumers (built over its deployments).
    /// The table with these budgets (its deployments and consumers hold those watching them).
    pub fn with_budgets(mut self, budgets: Vec<Arc<Budget>>) -> DeploymentTable {
        self.budgets = budgets;
        self
    }

    pub fn budgets(&self) -> &[Arc<Budget>] {
        &self.budgets
    }

    pub fn with_consumers(mut self, consumers: Vec<Arc<Consumer>>) -> DeploymentTable {
        self.consumer_by_key = consumers
            .iter()
            .flat_map(|c| {
                std::iter::once(c.keys.primary).chain(c.keys.secondary).map(move |k| (IndexedDigest(k), Arc::clone(c)))
            })
            .collect();
        self.consumers = consumers;
        self
    }

    /// The deployments a key may call: those whose keys include this digest, or the consumer's
    /// whose key it is (sorted by name; usually one).
    pub fn for_key(&self, digest: &KeyDigest) -> &[Arc<Deployment>] {
        let digest_key = IndexedDigest(*digest);
        if let Some(only) = self.by_key.get(&digest_key) {
            return std::slice::from_ref(only);
        }
        match self.shared_keys.get(&digest_key) {
            Some(owners) => owners,
            None => self.consumer_for_key(digest).map_or(&[], |c| c.deployments.as_slice()),
        }
    }

    /// The consumer whose key this digest is.
    pub fn consumer_for_key(&self, digest: &KeyDigest) -> Option<&Arc<Consumer>> {
        if self.consumer_by_key.is_empty() {
            return None;
        }
        self.consumer_by_key.get(&IndexedDigest(*digest))
    }

    /// The consumer `name` of `project`.
    pub fn consumer(&self, project: &str, name: &str) -> Option<&Arc<Consumer>> {
        self.consumers.iter().find(|c| c.project == project && c.name == name)
    }

    pub fn consumers(&self) -> &[Arc<Consumer>] {
        &self.consumers
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Deployment>> {
        self.by_name.iter().map(|d| &d.0)
    }

    /// The deployments with `health_check_interval_ms` and a pool of more than one backend.
    pub fn health_checked(&self) -> &[Arc<Deployment>] {
        &self.health_checked
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Deployment>> {
        self.by_name.get(name).map(|d| &d.0)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// One deployment's last `/info` answer, made on the first `/info` call (most deployments never
/// get one, and an idle deployment should cost little).
#[derive(Debug, Default)]
pub struct InfoCache {
    slot: std::sync::OnceLock<Box<tokio::sync::Mutex<Option<Kept>>>>,
}

#[derive(Debug)]
pub struct Kept {
    pub at_ns: u64,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

impl InfoCache {
    /// Held across the fetch: concurrent misses wait for the one fetch instead of each forwarding.
    pub fn slot(&self) -> &tokio::sync::Mutex<Option<Kept>> {
        self.slot.get_or_init(Default::default)
    }
}
