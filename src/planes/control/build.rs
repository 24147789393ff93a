//! The live deployment table from the configuration file and the admin state. Built whole and
//! swapped in at once; deployments that existed before keep their buckets and totals.

use std::collections::HashMap;
use std::sync::Arc;

use super::state::{ApiConsumer, ApiDeployment, ControlState, KeySecret};
use crate::config::{Config, ConsumerConfig, DEFAULT_MAX_TOKENS, DeploymentConfig, GrantConfig};
use crate::core::clock::Clock;
use crate::core::keys::{KeyDigest, KeyPair};
use crate::core::quota::Limits;
use crate::core::quota::lease::LeaseSize;
use crate::state::consumer::Consumer;
use crate::state::deployment::{BuildContext, Deployment, DeploymentTable, Health, Origin};
use crate::state::pool::BackendRegistry;

/// The file and the admin state disagree.
#[derive(Debug, thiserror::Error)]
pub enum TableConflict {
    #[error(
        "deployment '{file}' is declared in the configuration file and was also created through the admin API (as '{api}'); rename one"
    )]
    NameClash { file: String, api: String },
    #[error(
        "consumer '{name}' of project '{project}' is declared in the configuration file and was also created through the admin API; rename one"
    )]
    ConsumerClash { project: String, name: String },
    #[error(
        "model '{model}' is used by deployment '{deployment}' (project '{project}') but is no longer in [[models]]; delete the deployment first"
    )]
    ModelRemoved { model: String, deployment: String, project: String },
}

/// What the live table was built from. A deployment whose inputs are all the same is carried
/// into the next table as it is (the same `Arc`, with its client pools, `/info` cache and
/// resolved metric series), so a reload or an admin change costs what changed, not the table.
pub struct Reuse<'a> {
    pub config: &'a Config,
    pub state: &'a ControlState,
    pub live: &'a DeploymentTable,
}

impl Reuse<'_> {
    /// Whether the settings every deployment is built with are those of the live table (if not,
    /// nothing is carried over).
    fn same_settings(&self, config: &Config) -> bool {
        let before = self.config;
        before.backend == config.backend
            && before.billing.currency == config.billing.currency
            && before.metrics == config.metrics
    }

    /// The live deployment `name`, when it is watched by no budget (budgets are rebuilt with
    /// each table; their deployments are too).
    fn candidate(&self, name: &str, budgets: &[Arc<crate::state::budget::Budget>]) -> Option<&Arc<Deployment>> {
        let deployment = self.live.get(name)?;
        let unwatched = deployment.budgets.is_empty()
            && !budgets.iter().any(|b| b.watches_deployment(&deployment.project, deployment.subscription.as_deref()));
        unwatched.then_some(deployment)
    }
}

/// Builds the table; fails when the file and the admin state disagree (a name used twice, a
/// catalog model removed while deployments use it).
pub fn build_table(
    config: &Config,
    state: &ControlState,
    secret: &KeySecret,
    previous: &DeploymentTable,
    clock: &Arc<dyn Clock>,
    reuse: Option<&Reuse<'_>>,
) -> Result<DeploymentTable, TableConflict> {
    let mut out: Vec<Arc<Deployment>> = Vec::with_capacity(config.deployments.len() + state.deployments.len());
    // One health and one set of buckets per backend URL, whichever deployments send to it.
    let registry = BackendRegistry::seeded(previous.iter().map(|d| &d.pool));
    let currency: Arc<str> = Arc::from(config.billing.currency.as_str());
    let budgets = crate::state::budget::build_budgets(&config.billing.budgets, previous.budgets(), clock);
    let context = BuildContext {
        registry: &registry,
        clock,
        settings: &config.backend,
        currency: &currency,
        budgets: &budgets,
        metrics: &config.metrics,
    };
    let reuse = reuse.filter(|r| r.same_settings(config));
    // The inputs of the live table's deployments, by name.
    let old_files: HashMap<&str, &DeploymentConfig> =
        reuse.map(|r| r.config.deployments.iter().map(|d| (d.name.as_str(), d)).collect()).unwrap_or_default();
    let old_api: HashMap<&str, &ApiDeployment> =
        reuse.map(|r| r.state.deployments.iter().map(|d| (d.name.as_str(), d)).collect()).unwrap_or_default();
    let old_models: HashMap<&str, &crate::config::CatalogModel> =
        reuse.map(|r| r.config.models.iter().map(|m| (m.id.as_str(), m)).collect()).unwrap_or_default();
    for file in &config.deployments {
        let kept = reuse
            .filter(|_| old_files.get(file.name.as_str()) == Some(&file))
            .and_then(|r| r.candidate(&file.name, &budgets))
            .filter(|d| d.origin == Origin::File);
        if let Some(kept) = kept {
            out.push(Arc::clone(kept));
            continue;
        }
        out.push(Arc::new(Deployment::build(
            file,
            Origin::File,
            Health::Online,
            None,
            previous.get(&file.name).map(|d| &**d),
            &context,
        )));
    }
    for api in &state.deployments {
        if let Some(clash) = out.iter().find(|d| d.name.eq_ignore_ascii_case(&api.name)) {
            return Err(TableConflict::NameClash { file: clash.name.clone(), api: api.name.clone() });
        }
        let model = config.models.iter().find(|m| m.id == api.model_id).ok_or_else(|| TableConflict::ModelRemoved {
            model: api.model_id.clone(),
            deployment: api.name.clone(),
            project: api.project.clone(),
        })?;
        let (health, subscription) = match &model.offer {
            None => (Health::Online, None),
            Some(offer) => match state.subscriptions.iter().find(|s| s.project == api.project && s.offer == *offer) {
                Some(sub) => (Health::Online, Some(format!("/projects/{}/subscriptions/{}", sub.project, sub.name))),
                None => (
                    Health::Unhealthy(format!(
                        "deployment '{}' is unhealthy: project '{}' no longer has a subscription to offer '{}' (it was deleted); PUT /projects/{}/subscriptions/{{name}} with {{\"modelId\": \"{}\"}} to bring it back",
                        api.name, api.project, offer, api.project, api.model_id
                    )),
                    None,
                ),
            },
        };
        let kept = reuse
            .filter(|_| old_api.get(api.name.as_str()) == Some(&api))
            .filter(|_| old_models.get(model.id.as_str()) == Some(&model))
            .and_then(|r| r.candidate(&api.name, &budgets))
            .filter(|d| d.origin == Origin::Api && d.health == health && d.subscription == subscription);
        if let Some(kept) = kept {
            out.push(Arc::clone(kept));
            continue;
        }
        let deployment_config = DeploymentConfig {
            name: api.name.clone(),
            model: model.id.clone(),
            project: api.project.clone(),
            backends: model.backends.clone(),
            keys: key_pair(secret, api),
            first_byte_timeout: config.backend.first_byte_timeout,
            max_attempts: crate::core::pool::DEFAULT_MAX_ATTEMPTS,
            deadline: config.backend.first_byte_timeout,
            health_check_interval: None,
            limits: api.limits.map(Limits::from).unwrap_or_default(),
            default_max_tokens: DEFAULT_MAX_TOKENS,
            tokenizer: Default::default(),
            prices: model.prices,
            queue: crate::config::QueueConfig {
                max_wait: std::time::Duration::from_millis(api.max_wait_ms.unwrap_or(0)),
                ..crate::config::QueueConfig::off(api.limits.map(Limits::from).unwrap_or_default())
            },
            // The admin API sets no lease of its own: `[limits] lease_percent` applies.
            lease: match &config.store {
                crate::config::StoreConfig::Redis(redis) => redis
                    .lease_percent
                    .map(|p| LeaseSize::share(api.limits.map(Limits::from).unwrap_or_default(), p))
                    .filter(|size| size.requests >= 2),
                crate::config::StoreConfig::Memory => None,
            },
        };
        let before = previous.get(&api.name).map(|d| &**d);
        out.push(Arc::new(Deployment::build(&deployment_config, Origin::Api, health, subscription, before, &context)));
    }
    let table = DeploymentTable::from_deployments(out);
    // Consumers over the new deployments, their buckets and period usage carried by name.
    let before: HashMap<&str, &Arc<Consumer>> = previous.consumers().iter().map(|c| (&*c.label, c)).collect();
    let find = |name: &str| table.get(name).cloned();
    let mut api_consumers = Vec::with_capacity(state.consumers.len());
    for api in &state.consumers {
        if let Some(file) =
            config.consumers.iter().find(|c| c.project == api.project && c.name.eq_ignore_ascii_case(&api.name))
        {
            return Err(TableConflict::ConsumerClash { project: file.project.clone(), name: file.name.clone() });
        }
        api_consumers.push(consumer_config(secret, api, &table));
    }
    let consumers = config
        .consumers
        .iter()
        .chain(&api_consumers)
        .map(|c| {
            let previous = before.get(format!("{}/{}", c.project, c.name).as_str()).map(|p| &***p);
            Arc::new(Consumer::build(c, &find, previous, clock, &budgets))
        })
        .collect();
    Ok(table.with_consumers(consumers).with_budgets(budgets))
}

/// An API consumer as the table builds it: its derived keys, and the grants whose deployment is
/// in the table in the project the grant names (a grant of a deployment deleted, or renamed into
/// another project, grants nothing).
fn consumer_config(secret: &KeySecret, api: &ApiConsumer, table: &DeploymentTable) -> ConsumerConfig {
    let grants = api
        .grants
        .iter()
        .filter(|g| table.get(&g.deployment).is_some_and(|d| d.project == g.project))
        .map(|g| GrantConfig {
            deployment: g.deployment.clone(),
            limits: g.limits.map(Limits::from),
            periods: g.quotas.into(),
        })
        .collect();
    ConsumerConfig {
        name: api.name.clone(),
        project: api.project.clone(),
        keys: consumer_key_pair(secret, api),
        periods: api.quotas.into(),
        grants,
    }
}

/// The digests of an API consumer's two derived keys.
pub fn consumer_key_pair(secret: &KeySecret, consumer: &ApiConsumer) -> KeyPair {
    KeyPair {
        primary: KeyDigest::of(secret.derive_consumer_key(consumer, 0).as_bytes()),
        secondary: Some(KeyDigest::of(secret.derive_consumer_key(consumer, 1).as_bytes())),
    }
}

/// The digests of an API deployment's two derived keys.
pub fn key_pair(secret: &KeySecret, deployment: &ApiDeployment) -> KeyPair {
    KeyPair {
        primary: KeyDigest::of(secret.derive_key(deployment, 0).as_bytes()),
        secondary: Some(KeyDigest::of(secret.derive_key(deployment, 1).as_bytes())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(second_tokens: u64) -> Config {
        config_with(&format!("tokens_per_minute = {second_tokens}"))
    }

    /// Deployments `a` and `b` (sharing one key), `b` with `extra` settings.
    fn config_with(extra: &str) -> Config {
        let key = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        let text = format!(
            "[[deployments]]\nname = \"a\"\nmodel = \"m\"\nbackend = \"http://127.0.0.1:1\"\nkeys = [\"{key}\"]\n\
             [[deployments]]\nname = \"b\"\nmodel = \"m\"\nbackend = \"http://127.0.0.1:1\"\nkeys = [\"{key}\"]\n{extra}\n"
        );
        Config::parse(&text, "t.toml", &|_| None).unwrap()
    }

    #[test]
    fn queues_and_preflight_buckets_are_made_when_first_needed_and_then_kept() {
        let clock: Arc<dyn Clock> = Arc::new(crate::core::clock::ManualClock::new(0));
        let (state, secret) = (ControlState::default(), KeySecret::random());
        let off = config_with("");
        let first = build_table(&off, &state, &secret, &DeploymentTable::default(), &clock, None).unwrap();
        let b = first.get("b").unwrap();
        assert!(b.queue.is_none() && b.waiting_room().is_none(), "nothing waits: no queue");
        assert_eq!(b.queue_depth(), (0, 0));
        assert!(b.dry_runs().admit(0).is_ok());
        // Waiting turned on: a queue, and the pre-flight buckets carried over.
        let on = config_with("max_wait_ms = 500");
        let waiting = build_table(&on, &state, &secret, &first, &clock, None).unwrap();
        let queued = waiting.get("b").unwrap();
        let queue = queued.waiting_room().expect("b lets requests wait");
        assert_eq!(queue.config().max_wait, std::time::Duration::from_millis(500));
        assert!(std::ptr::eq(b.dry_runs(), queued.dry_runs()), "the pre-flight buckets carry on");
        assert!(waiting.get("a").unwrap().queue.is_none());
        // Off again: the queue stays (its waiters finish, shutdown closes it) but takes nobody.
        let again = build_table(&off, &state, &secret, &waiting, &clock, None).unwrap();
        let kept = again.get("b").unwrap();
        assert!(kept.queue.as_ref().is_some_and(|q| Arc::ptr_eq(q, queue)));
        assert!(kept.waiting_room().is_none());
        // The key both deployments share finds both, by name.
        let owners: Vec<&str> = again.for_key(&kept.keys.primary).iter().map(|d| d.name.as_str()).collect();
        assert_eq!(owners, ["a", "b"]);
    }

    #[test]
    fn a_rebuild_carries_unchanged_deployments_over_and_rebuilds_changed_ones() {
        let clock: Arc<dyn Clock> = Arc::new(crate::core::clock::ManualClock::new(0));
        let (state, secret) = (ControlState::default(), KeySecret::random());
        let first_config = config(1000);
        let first = build_table(&first_config, &state, &secret, &DeploymentTable::default(), &clock, None).unwrap();
        let reuse = Reuse { config: &first_config, state: &state, live: &first };
        let same = build_table(&first_config, &state, &secret, &first, &clock, Some(&reuse)).unwrap();
        for name in ["a", "b"] {
            assert!(Arc::ptr_eq(first.get(name).unwrap(), same.get(name).unwrap()), "{name} carried over");
        }
        let changed = build_table(&config(2000), &state, &secret, &first, &clock, Some(&reuse)).unwrap();
        assert!(Arc::ptr_eq(first.get("a").unwrap(), changed.get("a").unwrap()));
        let (before, after) = (first.get("b").unwrap(), changed.get("b").unwrap());
        assert!(!Arc::ptr_eq(before, after), "b changed: rebuilt");
        assert_eq!(after.quota.limits().tokens_per_minute, 2000);
        assert!(Arc::ptr_eq(&before.quota, &after.quota), "its buckets carry on");
        // Without what the live table was built from, everything is built again.
        let fresh = build_table(&first_config, &state, &secret, &first, &clock, None).unwrap();
        assert!(!Arc::ptr_eq(first.get("a").unwrap(), fresh.get("a").unwrap()));
    }

    #[test]
    fn leases_carry_over_rebuilds_and_admin_api_deployments_take_lease_percent() {
        use crate::core::quota::lease::LeaseSize;
        let clock: Arc<dyn Clock> = Arc::new(crate::core::clock::ManualClock::new(0));
        let secret = KeySecret::random();
        let mut state = ControlState::default();
        state.deployments.push(ApiDeployment {
            project: "default".into(),
            name: "c".into(),
            model_id: "cat".into(),
            limits: None,
            max_wait_ms: None,
            nonce: 1,
            key_generations: [0, 0],
        });
        let with = |b: &str, limits: &str| {
            config_with(&format!(
                "{b}\n[limits]\nstore = \"redis\"\nredis_url = \"redis://127.0.0.1:1\"\n{limits}\n\
                 [[models]]\nid = \"cat\"\nversion = \"1\"\nbackend = \"http://127.0.0.1:1\"\n"
            ))
        };
        let size = |table: &DeploymentTable, name: &str| table.get(name).unwrap().lease.as_ref().map(|l| l.size());
        let first = build_table(
            &with("lease_requests = 50", "lease_percent = 2"),
            &state,
            &secret,
            &DeploymentTable::default(),
            &clock,
            None,
        )
        .unwrap();
        // 2% of the default 1,000 requests and 200,000 tokens; b's own 50 (and 5% of its tokens).
        assert_eq!(size(&first, "a"), Some(LeaseSize { requests: 20, tokens: 4_000 }));
        assert_eq!(size(&first, "b"), Some(LeaseSize { requests: 50, tokens: 10_000 }));
        assert_eq!(size(&first, "c"), Some(LeaseSize { requests: 20, tokens: 4_000 }), "an admin API deployment");
        // A reload with a new size: the same lease (what it holds carries on), resized.
        let resized =
            build_table(&with("lease_requests = 10", "lease_percent = 2"), &state, &secret, &first, &clock, None)
                .unwrap();
        let (before, after) = (first.get("b").unwrap(), resized.get("b").unwrap());
        assert!(Arc::ptr_eq(before.lease.as_ref().unwrap(), after.lease.as_ref().unwrap()));
        assert_eq!(size(&resized, "b"), Some(LeaseSize { requests: 10, tokens: 2_000 }));
        // Leases off: none (what a dropped lease holds is given back by the store's sweeper).
        let off = build_table(&with("", ""), &state, &secret, &resized, &clock, None).unwrap();
        assert!(["a", "b", "c"].iter().all(|name| off.get(name).unwrap().lease.is_none()));
    }
}
