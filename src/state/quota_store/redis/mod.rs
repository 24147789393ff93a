//! Quota buckets shared by every replica, in Redis.
//!
//! - **Admission** is one round trip: `EVALSHA` of the admit script (see [`super::scripts`]),
//!   which refills both buckets from Redis's clock and takes from both or neither. On `NOSCRIPT`
//!   (a restarted or flushed Redis) the `redis` crate loads the script and calls it again.
//! - **Reconciliation** never waits on Redis: settled reservations go to a background task that
//!   adds them up per deployment and sends one pipelined script call per deployment per batch.
//!   While Redis is away the sums wait (one entry per deployment, so bounded) and are sent when
//!   it returns.
//! - **One multiplexed connection** carries every call, pipelined by the crate: to one server, to
//!   the primary Sentinel names, or to a Redis Cluster (see `connection.rs`); it reconnects by
//!   itself. Each call is bounded by `store_timeout_ms`.
//! - **Outages**: the first failed call marks the store down (logged once, counted in
//!   `tollgate_quota_store_errors_total`, `tollgate_quota_store_up` 0); requests then go straight
//!   to the `on_store_error` fallback without waiting on Redis, and a probe (`PING`) every
//!   [`PROBE_INTERVAL`] brings the store back up when Redis answers (logged, counted in
//!   `tollgate_quota_store_recoveries_total`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::Script;

use self::connection::{Connection, Connector};
use self::reconcile::{Pending, reconciler};
use super::scripts::{self, LEVEL_TO_SCALED};
use crate::config::{OnStoreError, RedisStoreConfig};
use crate::core::clock::Clock;
use crate::core::quota::bucket::TokenBucket;
use crate::core::quota::period::{PeriodLimits, PeriodState, PeriodUsage, Stamp};
use crate::core::quota::{Buckets, Denial, DeploymentQuota, Limits, QuotaState};
use crate::state::budget::Budget;
use crate::state::consumer::{Consumer, ConsumerGrant};
use crate::state::deployment::Deployment;
use crate::state::metrics::Metrics;

/// What the consumer admission script answered (see [`scripts::admit_consumer`]).
pub struct ConsumerReply {
    /// 1 admitted, 0 a bucket lacks room, 2 the grant's period quota is used up, 3 the consumer's.
    pub status: i64,
    /// With status 2 or 3: 1 requests per day, 2 tokens per day, 3 tokens per month.
    pub exceeded: i64,
    pub deployment: Buckets,
    pub grant: Option<Buckets>,
    /// The grant's and the consumer's period quotas (after admission when admitted).
    pub periods: [Option<PeriodState>; 2],
}

/// When a period hash may expire: a day after its month ends (a month's tokens are needed until
/// then; a day of margin for clocks that disagree).
/// A period hash's fields (`d`, `dt`, `dr`, `m`, `mt`, as [`scripts::admit_consumer`] writes
/// them) as the usage in `stamp`'s periods: a day or month that has ended counts nothing.
fn period_usage(fields: &[Option<u64>], stamp: Stamp) -> PeriodUsage {
    let field = |i: usize| fields.get(i).copied().flatten();
    let today = field(0) == Some(stamp.day);
    let this_month = field(3) == Some(stamp.month);
    PeriodUsage {
        stamp,
        day_tokens: if today { field(1).unwrap_or(0) } else { 0 },
        day_requests: if today { field(2).unwrap_or(0) } else { 0 },
        month_tokens: if this_month { field(4).unwrap_or(0) } else { 0 },
    }
}

/// Buckets of `limits` at the levels a script answered (its 1/60,000 units).
fn shared_buckets(limits: Limits, requests: i64, tokens: i64) -> Buckets {
    Buckets {
        requests: TokenBucket::at_level(limits.requests_per_minute, i128::from(requests) * LEVEL_TO_SCALED),
        tokens: TokenBucket::at_level(limits.tokens_per_minute, i128::from(tokens) * LEVEL_TO_SCALED),
    }
}

pub fn period_expiry(stamp: Stamp) -> u64 {
    stamp.month_end() + 86_400
}

/// How often an unreachable store is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// Why the store could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum StoreSetupError {
    #[error("cannot read limits.redis_ca_file {path}: {error}")]
    CaFile { path: String, error: std::io::Error },
    #[error("limits.redis_url: {0}")]
    Url(String),
}

/// The shared store did not answer (an error, or no answer within `store_timeout_ms`): already
/// counted in the metrics, logged once and the store marked down; the caller falls back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the quota store did not answer {op}")]
pub struct StoreUnreachable {
    pub op: &'static str,
}

pub struct RedisStore {
    settings: RedisStoreConfig,
    connector: Connector,
    connection: ArcSwapOption<Connection>,
    up: AtomicBool,
    admit_script: Script,
    reconcile_script: Script,
    admit_consumer_script: Script,
    take_period_script: Script,
    reconcile_period_script: Script,
    lease_script: Script,
    /// Leases this replica holds (or held, until the sweeper sees them gone back), with the
    /// deployment (its name, and limits as of the grant) they go back to.
    leases: Mutex<Vec<ListedLease>>,
    pending: Mutex<Pending>,
    /// Wakes the reconciler when something is pending (and when the store is dropped, so that it
    /// ends).
    wake: Arc<tokio::sync::Notify>,
    /// Names this process in the scripts' record of applied batches (`q:<replica>` in a
    /// deployment's hash), so that a batch sent again after a timeout is not applied twice.
    replica: String,
    /// `local` fallback buckets (limit / replicas), created on first use and kept across outages.
    fallback: Mutex<HashMap<String, Arc<DeploymentQuota>>>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("settings", &self.settings).field("up", &self.is_up()).finish()
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        // The reconciler holds only a weak reference: woken, it finds the store gone and ends.
        self.wake.notify_one();
    }
}

impl RedisStore {
    /// Connects (or, when Redis cannot be reached yet, starts down and keeps trying) and starts
    /// the reconciler and the probe. Must run inside a Tokio runtime.
    pub async fn start(
        settings: RedisStoreConfig,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<RedisStore>, StoreSetupError> {
        let connector = Connector::new(&settings)?;
        let store = Arc::new(RedisStore {
            connector,
            connection: ArcSwapOption::empty(),
            up: AtomicBool::new(false),
            admit_script: Script::new(&scripts::admit()),
            reconcile_script: Script::new(&scripts::reconcile()),
            admit_consumer_script: Script::new(&scripts::admit_consumer()),
            take_period_script: Script::new(&scripts::take_period()),
            reconcile_period_script: Script::new(&scripts::reconcile_period()),
            lease_script: Script::new(&scripts::lease()),
            leases: Mutex::new(Vec::new()),
            pending: Mutex::new(Pending::default()),
            wake: Arc::new(tokio::sync::Notify::new()),
            replica: format!("{:016x}", rand::random::<u64>()),
            fallback: Mutex::new(HashMap::new()),
            clock,
            metrics,
            settings,
        });
        store.metrics.quota_store_up.set(0);
        if store.connect().await {
            store.mark_up(false);
        } else {
            tracing::warn!(
                on_store_error = store.settings.on_error.as_str(),
                "quota store (Redis) unreachable at start; deciding admissions by on_store_error until it answers"
            );
        }
        tokio::spawn(probe(Arc::downgrade(&store)));
        tokio::spawn(reconciler(Arc::downgrade(&store), Arc::clone(&store.wake)));
        tokio::spawn(lease::sweeper(Arc::downgrade(&store)));
        Ok(store)
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn on_error(&self) -> OnStoreError {
        self.settings.on_error
    }

    /// `<prefix>{<name>}` for a deployment's buckets (or a pool backend's, `backend:<url>`): the
    /// name is the key's hash tag, so a consumer's buckets on the deployment
    /// ([`Self::grant_keys`]) are in its hash slot and one script can take from both on Redis
    /// Cluster.
    fn key(&self, deployment: &str) -> String {
        let mut key = String::with_capacity(self.settings.key_prefix.len() + deployment.len() + 2);
        key.push_str(&self.settings.key_prefix);
        key.push('{');
        key.push_str(deployment);
        key.push('}');
        key
    }

    /// A consumer's buckets and period quotas on a deployment: `<prefix>{<deployment>}:consumer:<p/c>`
    /// and `<prefix>{<deployment>}:period:<p/c>` (the deployment's hash slot), made once per grant.
    fn grant_keys<'a>(&self, deployment: &str, caller: &'a ConsumerGrant) -> &'a [Arc<str>; 2] {
        caller.grant().store_keys.get_or_init(|| {
            let base = self.key(deployment);
            let label = &caller.consumer.label;
            [Arc::from(format!("{base}:consumer:{label}")), Arc::from(format!("{base}:period:{label}"))]
        })
    }

    /// A consumer's period quotas over all its deployments: `<prefix>{consumer:<p/c>}:period`.
    /// The one key of an admission in a slot of its own (the consumer's deployments may each be
    /// in another): one server runs the admission script with it; on Redis Cluster, which would
    /// refuse that (`CROSSSLOT`), it is taken by a second call ([`Self::take_consumer_period`]).
    fn consumer_key<'a>(&self, consumer: &'a Consumer) -> &'a Arc<str> {
        consumer
            .store_key
            .get_or_init(|| Arc::from(format!("{}{{consumer:{}}}:period", self.settings.key_prefix, consumer.label)))
    }

    /// A consumer's admission in one round trip: every level in one script (see
    /// [`scripts::admit_consumer`]); `stamp` is the periods the request counts in.
    pub async fn admit_consumer(
        &self,
        deployment: &Deployment,
        caller: &ConsumerGrant,
        tokens: u64,
        stamp: Stamp,
    ) -> Result<ConsumerReply, StoreUnreachable> {
        let op = "admit";
        let grant = caller.grant();
        let limits = deployment.quota.limits();
        let grant_limits = grant.quota.as_ref().map(|q| q.limits());
        let grant_periods = grant.periods.as_ref().map(|p| p.limits());
        let consumer_periods = caller.consumer.periods.as_ref().map(|p| p.limits());
        // On a cluster the consumer's own period hash (over all its deployments) is in a slot of
        // its own: taken by a second call once the rest admitted (see `take_consumer_period`).
        let apart = consumer_periods.filter(|_| self.connector.is_cluster());
        let consumer_periods = consumer_periods.filter(|_| apart.is_none());
        let [grant_key, grant_period_key] = self.grant_keys(&deployment.name, caller);
        let mut invocation = self.admit_consumer_script.key(self.key(&deployment.name));
        if grant_limits.is_some() {
            invocation.key(&**grant_key);
        }
        if grant_periods.is_some() {
            invocation.key(&**grant_period_key);
        }
        if consumer_periods.is_some() {
            invocation.key(&**self.consumer_key(&caller.consumer));
        }
        let signed = |v: Option<u64>| v.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX));
        invocation.arg(limits.requests_per_minute).arg(limits.tokens_per_minute).arg(tokens);
        invocation
            .arg(signed(grant_limits.map(|l| l.requests_per_minute)))
            .arg(signed(grant_limits.map(|l| l.tokens_per_minute)));
        for periods in [grant_periods, consumer_periods] {
            let p = periods.unwrap_or_default();
            invocation.arg(signed(p.tokens_per_day)).arg(signed(p.tokens_per_month)).arg(signed(p.requests_per_day));
        }
        invocation.arg(stamp.day).arg(stamp.month).arg(period_expiry(stamp));
        let values: Vec<i64> = self.invoke(op, &invocation).await?;
        if values.len() < 11 {
            self.failed(op, &format!("the consumer admission script answered {} values", values.len()));
            return Err(StoreUnreachable { op });
        }
        let buckets = shared_buckets;
        let usage = |limits: Option<PeriodLimits>, dt: i64, mt: i64, dr: i64| {
            limits.map(|limits| PeriodState {
                limits,
                usage: PeriodUsage {
                    stamp,
                    day_tokens: dt.max(0) as u64,
                    month_tokens: mt.max(0) as u64,
                    day_requests: dr.max(0) as u64,
                },
            })
        };
        let mut reply = ConsumerReply {
            status: values[0],
            exceeded: values.get(11).copied().unwrap_or(0),
            deployment: buckets(limits, values[1], values[2]),
            grant: grant_limits.map(|l| buckets(l, values[3], values[4])),
            periods: [
                usage(grant_periods, values[5], values[6], values[7]),
                usage(consumer_periods, values[8], values[9], values[10]),
            ],
        };
        if let (Some(periods), 1) = (apart, reply.status) {
            let taken = self.take_consumer_period(&caller.consumer, periods, tokens, stamp).await;
            if !matches!(taken, Ok((1, ..))) {
                // Not taken (used up, or the call failed): what the first call took goes back.
                let want = i64::try_from(tokens).unwrap_or(i64::MAX);
                self.reconcile_key(&deployment.name, limits, want, 1);
                if let Some(limits) = grant_limits {
                    self.queue_sum(grant_key, reconcile::ConsumerSum::Bucket { limits, tokens: want, requests: 1 });
                }
                if grant_periods.is_some() {
                    let sum = reconcile::ConsumerSum::Period {
                        day: stamp.day,
                        month: stamp.month,
                        day_charge: -want,
                        month_charge: -want,
                        day_requests: 1,
                        expire_at: period_expiry(stamp),
                    };
                    self.queue_sum(grant_period_key, sum);
                }
            }
            let (status, state, why) = taken?;
            reply.periods[1] = usage(Some(periods), state[0], state[1], state[2]);
            if status != 1 {
                (reply.status, reply.exceeded) = (3, why);
            }
        }
        Ok(reply)
    }

    /// A consumer's own period quotas taken on their own (Redis Cluster; see
    /// [`scripts::take_period`]): the status (1 taken, 3 used up), the day's tokens, the month's
    /// tokens and the day's requests after it, and which quota is used up.
    async fn take_consumer_period(
        &self,
        consumer: &Consumer,
        periods: PeriodLimits,
        tokens: u64,
        stamp: Stamp,
    ) -> Result<(i64, [i64; 3], i64), StoreUnreachable> {
        let op = "admit";
        let signed = |v: Option<u64>| v.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX));
        let mut invocation = self.take_period_script.key(&**self.consumer_key(consumer));
        invocation
            .arg(signed(periods.tokens_per_day))
            .arg(signed(periods.tokens_per_month))
            .arg(signed(periods.requests_per_day))
            .arg(tokens)
            .arg(stamp.day)
            .arg(stamp.month)
            .arg(period_expiry(stamp));
        match self.invoke::<Vec<i64>>(op, &invocation).await? {
            v if v.len() == 5 => Ok((v[0], [v[1], v[2], v[3]], v[4])),
            v => {
                self.failed(op, &format!("the period script answered {} values", v.len()));
                Err(StoreUnreachable { op })
            }
        }
    }

    /// One script call, bounded by `store_timeout_ms` and timed in
    /// `tollgate_quota_store_duration_seconds{op}`; failed or unanswered, it is counted, logged
    /// and marks the store down.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreUnreachable> {
        let Some(connection) = self.connection.load_full() else {
            self.failed(op, "not connected");
            return Err(StoreUnreachable { op });
        };
        let mut connection = Connection::clone(&connection);
        let started = Instant::now();
        let reply = tokio::time::timeout(self.settings.timeout, invocation.invoke_async::<T>(&mut connection)).await;
        let value = self.answered(op, reply)?;
        self.metrics.quota_store_duration.with_label_values(&[op]).observe(started.elapsed().as_secs_f64());
        Ok(value)
    }

    /// A call's answer; an error or no answer in time is counted, logged and marks the store down.
    fn answered<T>(
        &self,
        op: &'static str,
        reply: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, StoreUnreachable> {
        match reply {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                self.failed(op, &error.to_string());
                Err(StoreUnreachable { op })
            }
            Err(_) => {
                self.failed(op, "timed out");
                Err(StoreUnreachable { op })
            }
        }
    }

    /// A budget's spend hash: `<prefix>{budget:<name>}` (a period hash: day and month spend in
    /// micro-units, charged by the reconciler's batches).
    fn budget_key<'a>(&self, budget: &'a Budget) -> &'a Arc<str> {
        budget.store_key.get_or_init(|| Arc::from(format!("{}{{budget:{}}}", self.settings.key_prefix, budget.name)))
    }

    /// Queues a request's cost for the budget's shared spend (sent with the next batch).
    pub fn charge_budget(&self, budget: &Budget, stamp: Stamp, micros: u64) {
        let charge = i64::try_from(micros).unwrap_or(i64::MAX);
        let sum = reconcile::ConsumerSum::Period {
            day: stamp.day,
            month: stamp.month,
            day_charge: charge,
            month_charge: charge,
            day_requests: 0,
            expire_at: period_expiry(stamp),
        };
        self.queue_sum(self.budget_key(budget), sum);
    }

    /// Every budget's shared spend in `stamp`'s day and month, in one pipelined round trip
    /// (`None` while the store cannot be read).
    pub async fn read_budgets(&self, budgets: &[Arc<Budget>], stamp: Stamp) -> Option<Vec<(u64, u64)>> {
        if budgets.is_empty() {
            return Some(Vec::new());
        }
        let op = "read";
        if !self.is_up() {
            return None;
        }
        let connection = self.connection.load_full()?;
        let mut connection = Connection::clone(&connection);
        let mut pipe = ::redis::pipe();
        for budget in budgets {
            pipe.cmd("HMGET").arg(&**self.budget_key(budget)).arg(&["d", "dt", "dr", "m", "mt"]);
        }
        let saved = self.read_all(&mut connection, &pipe, op).await?;
        Some(saved.iter().map(|f| period_usage(f, stamp)).map(|u| (u.day_tokens, u.month_tokens)).collect())
    }

    /// The `HMGET` replies of `pipe`, in order (`None`, counted and logged, when the store could
    /// not answer them all).
    async fn read_all(
        &self,
        connection: &mut Connection,
        pipe: &redis::Pipeline,
        op: &'static str,
    ) -> Option<Vec<Vec<Option<u64>>>> {
        let reply = tokio::time::timeout(self.settings.timeout, connection.send_all(pipe)).await;
        let replies = self.answered(op, reply).ok()?;
        let mut saved = Vec::with_capacity(replies.len());
        for reply in replies {
            match reply.and_then(|value| redis::from_redis_value::<Vec<Option<u64>>>(value).map_err(Into::into)) {
                Ok(fields) => saved.push(fields),
                Err(error) => {
                    self.failed(op, &error.to_string());
                    return None;
                }
            }
        }
        Some(saved)
    }

    /// Claims the sending of a budget crossing's webhook for this replica (`SET NX` until the
    /// period's end): false when another replica has claimed it. A store that cannot answer
    /// lets it be sent (twice at worst, never lost).
    pub async fn claim_crossing(&self, id: &str, until_unix: u64) -> bool {
        let Some(connection) = self.connection.load_full() else { return true };
        let mut connection = Connection::clone(&connection);
        let key = format!("{}{{budget-sent}}:{id}", self.settings.key_prefix);
        let mut cmd = ::redis::cmd("SET");
        cmd.arg(&key).arg(&self.replica).arg("NX").arg("EXAT").arg(until_unix + 86_400);
        match tokio::time::timeout(self.settings.timeout, cmd.query_async::<Option<String>>(&mut connection)).await {
            Ok(Ok(set)) => set.is_some(),
            _ => true,
        }
    }

    /// A consumer's period usage now (no change), in one pipelined round trip: each grant's with
    /// period quotas, then the consumer-wide one. `None` while the store cannot be read.
    pub async fn read_periods(&self, consumer: &Arc<Consumer>, stamp: Stamp) -> Option<Vec<PeriodUsage>> {
        let op = "read";
        if consumer.periods.is_none() && consumer.grants.iter().all(|g| g.periods.is_none()) {
            return Some(Vec::new()); // nothing to read (and an empty pipeline is an error)
        }
        if !self.is_up() {
            return None;
        }
        let Some(connection) = self.connection.load_full() else {
            self.failed(op, "not connected");
            return None;
        };
        let mut connection = Connection::clone(&connection);
        let mut pipe = ::redis::pipe();
        for (index, grant) in consumer.grants.iter().enumerate() {
            if grant.periods.is_some() {
                let caller = ConsumerGrant { consumer: Arc::clone(consumer), index };
                pipe.cmd("HMGET")
                    .arg(&*self.grant_keys(&grant.deployment, &caller)[1])
                    .arg(&["d", "dt", "dr", "m", "mt"]);
            }
        }
        if consumer.periods.is_some() {
            pipe.cmd("HMGET").arg(&**self.consumer_key(consumer)).arg(&["d", "dt", "dr", "m", "mt"]);
        }
        let saved = self.read_all(&mut connection, &pipe, op).await?;
        Some(saved.iter().map(|fields| period_usage(fields, stamp)).collect())
    }

    /// Admission in one round trip: `Ok(Ok(state))` admitted, `Ok(Err(denial))` refused by the
    /// shared buckets, `Err(StoreUnreachable)` the store failed (already counted, logged and
    /// marked down).
    pub async fn admit(
        &self,
        deployment: &str,
        limits: Limits,
        tokens: u64,
    ) -> Result<Result<QuotaState, Denial>, StoreUnreachable> {
        let (admitted, buckets) = self.call_admit(&self.key(deployment), limits, tokens, true, "admit").await?;
        if admitted { Ok(Ok(buckets.state())) } else { Ok(Err(buckets.denial(tokens))) }
    }

    /// The shared buckets now (no change), `None` when the store cannot be read.
    pub async fn read(&self, deployment: &str, limits: Limits) -> Option<QuotaState> {
        if !self.is_up() {
            return None;
        }
        self.call_admit(&self.key(deployment), limits, 0, false, "read").await.ok().map(|(_, buckets)| buckets.state())
    }

    /// A consumer's own buckets on a deployment now (no change), `None` when the store cannot
    /// be read. Same read-only script as [`Self::read`], on the grant's key.
    pub async fn read_grant(&self, deployment: &str, caller: &ConsumerGrant, limits: Limits) -> Option<QuotaState> {
        if !self.is_up() {
            return None;
        }
        let key = &self.grant_keys(deployment, caller)[0];
        self.call_admit(key, limits, 0, false, "read").await.ok().map(|(_, buckets)| buckets.state())
    }

    async fn call_admit(
        &self,
        key: &str,
        limits: Limits,
        tokens: u64,
        take: bool,
        op: &'static str,
    ) -> Result<(bool, Buckets), StoreUnreachable> {
        let mut invocation = self.admit_script.key(key);
        invocation.arg(limits.requests_per_minute).arg(limits.tokens_per_minute).arg(tokens).arg(if take {
            "1"
        } else {
            "0"
        });
        let (admitted, requests, tokens_level): (i64, i64, i64) = self.invoke(op, &invocation).await?;
        Ok((admitted == 1, shared_buckets(limits, requests, tokens_level)))
    }

    /// The `local` fallback bucket of a deployment: limit / replicas (at least 1), full when first
    /// used, kept (levels and all) across outages; its limits follow reloads.
    pub fn local_quota(&self, deployment: &str, limits: Limits) -> Arc<DeploymentQuota> {
        let replicas = self.settings.replicas.max(1);
        let share = Limits {
            requests_per_minute: limits.requests_per_minute.div_ceil(replicas),
            tokens_per_minute: limits.tokens_per_minute.div_ceil(replicas),
        };
        let mut map = self.fallback.lock().unwrap_or_else(PoisonError::into_inner);
        let quota = map
            .entry(deployment.to_owned())
            .or_insert_with(|| Arc::new(DeploymentQuota::new(share, Arc::clone(&self.clock))));
        if quota.limits() != share {
            quota.set_limits(share);
        }
        Arc::clone(quota)
    }

    pub fn count_fallback(&self, mode: OnStoreError) {
        self.metrics.quota_store_fallbacks.with_label_values(&[mode.as_str()]).inc();
    }

    /// Counts a failed call and, on the first one, marks the store down (logged once per outage).
    fn failed(&self, op: &'static str, error: &str) {
        self.metrics.quota_store_errors.with_label_values(&[op]).inc();
        if self.connector.follows_primary() {
            // The probe asks the Sentinels where the primary is now.
            self.connection.store(None);
        }
        if self.up.swap(false, Ordering::Relaxed) {
            self.metrics.quota_store_up.set(0);
            tracing::warn!(
                op,
                error,
                on_store_error = self.settings.on_error.as_str(),
                "quota store (Redis) unreachable; deciding admissions by on_store_error until it answers"
            );
        }
    }

    fn mark_up(&self, recovered: bool) {
        if !self.up.swap(true, Ordering::Relaxed) {
            self.metrics.quota_store_up.set(1);
            if recovered {
                self.metrics.quota_store_recoveries.inc();
                tracing::info!("quota store (Redis) answers again; admissions use the shared buckets");
            } else {
                tracing::info!(key_prefix = %self.settings.key_prefix, "quota store: Redis");
            }
        }
    }

    /// Makes the connection if there is none yet, then checks that Redis answers.
    async fn connect(&self) -> bool {
        if self.connection.load().is_none() {
            let made =
                tokio::time::timeout(self.settings.timeout * 2, self.connector.connect(self.settings.timeout)).await;
            match made {
                Ok(Ok(connection)) => self.connection.store(Some(Arc::new(connection))),
                Ok(Err(error)) => {
                    self.metrics.quota_store_errors.with_label_values(&["connect"]).inc();
                    tracing::debug!(error = %error, "quota store: cannot connect");
                    return false;
                }
                Err(_) => {
                    self.metrics.quota_store_errors.with_label_values(&["connect"]).inc();
                    return false;
                }
            }
        }
        self.ping().await
    }

    async fn ping(&self) -> bool {
        let Some(connection) = self.connection.load_full() else { return false };
        let mut connection = Connection::clone(&connection);
        let pong =
            tokio::time::timeout(self.settings.timeout, redis::cmd("PING").query_async::<String>(&mut connection))
                .await;
        matches!(pong, Ok(Ok(_)))
    }
}

/// While the store is down, tries to reach it every [`PROBE_INTERVAL`].
async fn probe(store: Weak<RedisStore>) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(store) = store.upgrade() else { return };
        if !store.is_up() && store.connect().await {
            store.mark_up(true);
        }
    }
}

mod connection;
mod lease;
mod reconcile;

use self::lease::ListedLease;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_period_hash_counts_only_in_its_own_day_and_month() {
        let stamp = Stamp::at(1_796_342_340); // 2026-12-03T23:59:00Z
        let today = [Some(stamp.day), Some(10), Some(2), Some(stamp.month), Some(50)];
        let usage = period_usage(&today, stamp);
        assert_eq!((usage.day_tokens, usage.day_requests, usage.month_tokens), (10, 2, 50));
        let tomorrow = Stamp::at(1_796_342_340 + 120);
        let usage = period_usage(&today, tomorrow);
        assert_eq!((usage.day_tokens, usage.day_requests, usage.month_tokens), (0, 0, 50), "a new day, same month");
        let next_month = Stamp::at(1_796_342_340 + 30 * 86_400);
        assert_eq!(period_usage(&today, next_month).month_tokens, 0);
        let missing = period_usage(&[None, None, None, None, None], stamp);
        assert_eq!((missing.day_tokens, missing.month_tokens), (0, 0), "no hash yet: nothing used");
    }
}
