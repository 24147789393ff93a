//! Validation of `[[consumers]]`: names, keys (unique to their consumer: a key says who calls),
//! period quotas, and grants (deployments of the file, limits at most the deployment's).

use std::collections::HashMap;

use toml::Spanned;

use super::raw::{RawConsumer, RawGrant};
use super::validate::per_minute;
use super::validate_deployment::{check_project_name, key_pair};
use super::*;
use crate::core::keys::IndexedDigest;
use crate::core::quota::period::PeriodLimits;

/// `[[consumers]]` against the file's deployments; every key has one holder (a deployment
/// key may be shared by deployments, a consumer key is its consumer's alone).
pub(super) fn validate_consumers(
    raw: &[Spanned<RawConsumer>],
    at: &Locator<'_>,
    deployments: &[DeploymentConfig],
) -> Result<Vec<ConsumerConfig>, ConfigError> {
    if let Some(extra) = raw.get(MAX_CONSUMERS) {
        return Err(at.error(
            extra,
            format!("consumers[{MAX_CONSUMERS}]"),
            format!("at most {MAX_CONSUMERS} consumers (each is a metric label); merge callers that need no limits of their own"),
        ));
    }
    let mut holders: HashMap<IndexedDigest, String> = HashMap::new();
    for d in deployments {
        for digest in std::iter::once(d.keys.primary).chain(d.keys.secondary) {
            holders.entry(IndexedDigest(digest)).or_insert_with(|| format!("deployment '{}'", d.name));
        }
    }
    let mut out: Vec<ConsumerConfig> = Vec::with_capacity(raw.len());
    // Lookups by name, not scans: a file may declare 10,000 deployments and consumers.
    let by_name: HashMap<&str, &DeploymentConfig> = deployments.iter().map(|d| (d.name.as_str(), d)).collect();
    let mut names: std::collections::HashSet<(String, String)> = std::collections::HashSet::with_capacity(raw.len());
    for (index, spanned) in raw.iter().enumerate() {
        let consumer = validate_consumer(spanned.get_ref(), index, at, &by_name)?;
        let c = spanned.get_ref();
        if !names.insert((consumer.project.clone(), consumer.name.to_ascii_lowercase())) {
            return Err(at.error(
                &c.name,
                format!("consumers[{index}].name"),
                format!(
                    "consumer '{}' is declared twice in project '{}'; names are unique in a project (case-insensitively)",
                    consumer.name, consumer.project
                ),
            ));
        }
        for (i, digest) in std::iter::once(consumer.keys.primary).chain(consumer.keys.secondary).enumerate() {
            let me = format!("consumer '{}/{}'", consumer.project, consumer.name);
            if let Some(holder) = holders.insert(IndexedDigest(digest), me) {
                return Err(at.error(
                    &c.keys.get_ref()[i],
                    format!("consumers[{index}].keys[{i}]"),
                    format!("this key is already {holder}'s; a consumer's key must be its own (the key says who is calling), so generate another with `tollgate keys generate`"),
                ));
            }
        }
        out.push(consumer);
    }
    Ok(out)
}

fn validate_consumer(
    c: &RawConsumer,
    index: usize,
    at: &Locator<'_>,
    deployments: &HashMap<&str, &DeploymentConfig>,
) -> Result<ConsumerConfig, ConfigError> {
    let field = |name: &str| format!("consumers[{index}].{name}");
    check_consumer_name(c.name.get_ref()).map_err(|why| at.error(&c.name, field("name"), why))?;
    let project = match &c.project {
        None => DEFAULT_PROJECT.to_owned(),
        Some(p) => {
            check_project_name(p.get_ref()).map_err(|why| at.error(p, field("project"), why))?;
            p.get_ref().clone()
        }
    };
    let keys = key_pair(at, &c.keys, &format!("consumers[{index}]"))?;
    let periods = periods(at, [&c.tokens_per_day, &c.tokens_per_month, &c.requests_per_day], &field(""))?;
    if c.grants.is_empty() {
        return Err(at.error(
            &c.name,
            field("grants"),
            "a consumer needs at least one [[consumers.grants]] naming a deployment it may call",
        ));
    }
    if let Some(extra) = c.grants.get(MAX_GRANTS) {
        return Err(at.error(
            extra,
            field(&format!("grants[{MAX_GRANTS}]")),
            format!("at most {MAX_GRANTS} grants per consumer"),
        ));
    }
    let mut grants: Vec<GrantConfig> = Vec::with_capacity(c.grants.len());
    for (i, spanned) in c.grants.iter().enumerate() {
        let grant = validate_grant(spanned.get_ref(), &format!("consumers[{index}].grants[{i}]"), at, deployments)?;
        if grants.iter().any(|g| g.deployment == grant.deployment) {
            return Err(at.error(
                &spanned.get_ref().deployment,
                format!("consumers[{index}].grants[{i}].deployment"),
                format!(
                    "deployment '{}' is granted twice to this consumer; give one grant per deployment",
                    grant.deployment
                ),
            ));
        }
        grants.push(grant);
    }
    Ok(ConsumerConfig { name: c.name.get_ref().clone(), project, keys, periods, grants })
}

fn validate_grant(
    g: &RawGrant,
    table: &str,
    at: &Locator<'_>,
    deployments: &HashMap<&str, &DeploymentConfig>,
) -> Result<GrantConfig, ConfigError> {
    let field = |name: &str| format!("{table}.{name}");
    let name = g.deployment.get_ref();
    let deployment = deployments.get(name.as_str()).ok_or_else(|| {
        at.error(
            &g.deployment,
            field("deployment"),
            format!("no deployment named '{name}' is declared in this file; grant one of its [[deployments]] (deployments made through the admin API are granted there)"),
        )
    })?;
    let own = &deployment.limits;
    let limits = match (&g.requests_per_minute, &g.tokens_per_minute) {
        (None, None) => None,
        (requests, tokens) => {
            let limits = Limits {
                requests_per_minute: per_minute(at, requests, &field("requests_per_minute"), own.requests_per_minute)?,
                tokens_per_minute: per_minute(at, tokens, &field("tokens_per_minute"), own.tokens_per_minute)?,
            };
            for (value, mine, theirs, what) in [
                (requests, limits.requests_per_minute, own.requests_per_minute, "requests_per_minute"),
                (tokens, limits.tokens_per_minute, own.tokens_per_minute, "tokens_per_minute"),
            ] {
                if let Some(v) = value.as_ref().filter(|_| mine > theirs) {
                    return Err(at.error(
                        v,
                        field(what),
                        format!("{mine} is more than deployment '{name}' allows ({theirs} {what}); a consumer's limit on a deployment is at most the deployment's"),
                    ));
                }
            }
            Some(limits)
        }
    };
    let periods = periods(at, [&g.tokens_per_day, &g.tokens_per_month, &g.requests_per_day], &format!("{table}."))?;
    Ok(GrantConfig { deployment: name.clone(), limits, periods })
}

/// `tokens_per_day`, `tokens_per_month`, `requests_per_day`; `prefix` ends with the dot.
fn periods(at: &Locator<'_>, values: [&Option<Spanned<u64>>; 3], prefix: &str) -> Result<PeriodLimits, ConfigError> {
    let [day, month, requests] = values;
    let check = |value: &Option<Spanned<u64>>, name: &str| match value {
        None => Ok(None),
        Some(v) if *v.get_ref() == 0 || *v.get_ref() > MAX_PER_PERIOD => Err(at.error(
            v,
            format!("{prefix}{name}"),
            format!("must be between 1 and {MAX_PER_PERIOD} (leave it out for no quota)"),
        )),
        Some(v) => Ok(Some(*v.get_ref())),
    };
    Ok(PeriodLimits {
        tokens_per_day: check(day, "tokens_per_day")?,
        tokens_per_month: check(month, "tokens_per_month")?,
        requests_per_day: check(requests, "requests_per_day")?,
    })
}

/// Consumer names: like deployment names (they appear in URLs and metric labels).
pub fn check_consumer_name(name: &str) -> Result<(), String> {
    super::check_deployment_name(name).map_err(|_| {
        format!("consumer name '{name}' is not valid: it must start with a letter and hold only letters, digits and '-', at most 52 characters")
    })
}
