//! The admin API's consumers (`/projects/{project}/consumers[/{name}]`) and the grants of a
//! deployment to consumers, connections to other projects included
//! (`/projects/{project}/deployments/{name}/grants[/{consumerProject}/{consumer}]`).
//!
//! A consumer made here is kept in the admin state like an API deployment: keys derived from
//! the secret (so `listKeys` can show them again), grants naming the deployment's project. File
//! consumers are listed and read here but changed in the file.

use serde::Deserialize;
use serde_json::{Value, json};

use super::resources::{LimitsBody, checked_limits};
use super::state::{ApiConsumer, ApiGrant, ControlState, StoredLimits, StoredPeriods};
use super::{AdminError, ControlPlane};
use crate::config::{
    Config, ConsumerConfig, MAX_CONSUMERS, MAX_GRANTS, MAX_PER_PERIOD, check_consumer_name, check_deployment_name,
    check_project_name,
};
use crate::core::quota::Limits;
use crate::core::roles::{Action, AdminToken};
use crate::state::consumer::Consumer;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConsumerBody {
    /// Over all its deployments together.
    #[serde(default)]
    pub quotas: StoredPeriods,
    #[serde(default)]
    pub grants: Vec<GrantBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrantBody {
    pub deployment: String,
    /// The deployment's project: the consumer's own when left out.
    pub project: Option<String>,
    pub limits: Option<LimitsBody>,
    #[serde(default)]
    pub quotas: StoredPeriods,
}

/// A grant as the deployment's side sets it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectionBody {
    pub limits: Option<LimitsBody>,
    #[serde(default)]
    pub quotas: StoredPeriods,
}

/// Whether `token` may grant deployments of `project` to consumers of other projects.
pub fn may_connect(token: &AdminToken, project: &str) -> Result<(), AdminError> {
    if token.role.allows(Action::Connect) && token.may_use_project(project) {
        return Ok(());
    }
    Err(AdminError::new(
        http::StatusCode::FORBIDDEN,
        "Forbidden",
        format!(
            "admin token '{}' ({}) may not grant deployments of project '{project}' to another project's consumers: that needs an owner or contributor of '{project}'",
            token.name,
            token.role.as_str()
        ),
    ))
}

fn check_consumer_names(project: &str, name: &str) -> Result<(), AdminError> {
    check_project_name(project).map_err(AdminError::bad_request)?;
    check_consumer_name(name).map_err(AdminError::bad_request)
}

fn checked_periods(periods: StoredPeriods, field: &str) -> Result<StoredPeriods, AdminError> {
    for (value, name) in [
        (periods.tokens_per_day, "tokensPerDay"),
        (periods.tokens_per_month, "tokensPerMonth"),
        (periods.requests_per_day, "requestsPerDay"),
    ] {
        if let Some(v) = value.filter(|v| *v == 0 || *v > MAX_PER_PERIOD) {
            return Err(AdminError::unprocessable(format!(
                "{field}quotas.{name} must be between 1 and {MAX_PER_PERIOD}; got {v} (leave it out for no quota)"
            )));
        }
    }
    Ok(periods)
}

/// The limits of deployment `name` of `project` (file or API), if there is one.
fn deployment_limits(config: &Config, state: &ControlState, project: &str, name: &str) -> Option<Limits> {
    if let Some(d) = config.deployments.iter().find(|d| d.project == project && d.name == name) {
        return Some(d.limits);
    }
    state
        .deployments
        .iter()
        .find(|d| d.project == project && d.name == name)
        .map(|d| d.limits.map(Limits::from).unwrap_or_default())
}

/// A grant's body checked against its deployment: it exists in `project`, and its own limits
/// (defaulting field by field to the deployment's) are at most the deployment's.
fn checked_grant(
    config: &Config,
    state: &ControlState,
    project: &str,
    deployment: &str,
    limits: Option<&LimitsBody>,
    quotas: StoredPeriods,
    field: &str,
) -> Result<ApiGrant, AdminError> {
    check_deployment_name(deployment).map_err(|why| AdminError::unprocessable(format!("{field}deployment: {why}")))?;
    let own = deployment_limits(config, state, project, deployment).ok_or_else(|| {
        AdminError::unprocessable(format!(
            "{field}deployment: project '{project}' has no deployment '{deployment}'; GET /projects/{project}/deployments lists them"
        ))
    })?;
    let limits = match limits {
        None => None,
        Some(body) => {
            if body.max_wait_ms.is_some() {
                return Err(AdminError::unprocessable(format!(
                    "{field}limits.maxWaitMs is a deployment's setting (PATCH the deployment), not a grant's"
                )));
            }
            let limits = checked_limits(body, own)?;
            for (mine, theirs, what) in [
                (limits.requests_per_minute, own.requests_per_minute, "requestsPerMinute"),
                (limits.tokens_per_minute, own.tokens_per_minute, "tokensPerMinute"),
            ] {
                if mine > theirs {
                    return Err(AdminError::unprocessable(format!(
                        "{field}limits.{what} is {mine}, more than deployment '{deployment}' allows ({theirs}); a consumer's limit on a deployment is at most the deployment's"
                    )));
                }
            }
            Some(StoredLimits {
                requests_per_minute: limits.requests_per_minute,
                tokens_per_minute: limits.tokens_per_minute,
            })
        }
    };
    Ok(ApiGrant {
        project: project.to_owned(),
        deployment: deployment.to_owned(),
        limits,
        quotas: checked_periods(quotas, field)?,
    })
}

fn periods_json(p: StoredPeriods) -> Value {
    json!({"tokensPerDay": p.tokens_per_day, "tokensPerMonth": p.tokens_per_month, "requestsPerDay": p.requests_per_day})
}

fn limits_json(l: Option<Limits>) -> Value {
    l.map_or(
        Value::Null,
        |l| json!({"requestsPerMinute": l.requests_per_minute, "tokensPerMinute": l.tokens_per_minute}),
    )
}

/// A consumer's desired configuration, from the file or the admin state.
enum Declared<'a> {
    File(&'a ConsumerConfig),
    Api(&'a ApiConsumer),
}

impl Declared<'_> {
    fn project(&self) -> &str {
        match self {
            Declared::File(c) => &c.project,
            Declared::Api(c) => &c.project,
        }
    }
    fn name(&self) -> &str {
        match self {
            Declared::File(c) => &c.name,
            Declared::Api(c) => &c.name,
        }
    }
}

fn declared<'a>(config: &'a Config, state: &'a ControlState) -> impl Iterator<Item = Declared<'a>> {
    config.consumers.iter().map(Declared::File).chain(state.consumers.iter().map(Declared::Api))
}

impl ControlPlane {
    fn consumer_value(&self, config: &Config, c: &Declared<'_>) -> Value {
        let table = self.live.load();
        let live = table.consumer(c.project(), c.name());
        let active = |deployment: &str| live.is_some_and(|l| l.grant(deployment).is_some());
        let (origin, quotas, grants): (&str, StoredPeriods, Vec<Value>) = match c {
            Declared::File(f) => (
                "configuration",
                f.periods.into(),
                f.grants
                    .iter()
                    .map(|g| {
                        let project = config.deployments.iter().find(|d| d.name == g.deployment).map(|d| &d.project);
                        json!({"deployment": g.deployment, "project": project, "limits": limits_json(g.limits),
                               "quotas": periods_json(g.periods.into()), "active": active(&g.deployment)})
                    })
                    .collect(),
            ),
            Declared::Api(a) => (
                "api",
                a.quotas,
                a.grants
                    .iter()
                    .map(|g| {
                        let is_live =
                            active(&g.deployment) && table.get(&g.deployment).is_some_and(|d| d.project == g.project);
                        json!({"deployment": g.deployment, "project": g.project,
                               "limits": limits_json(g.limits.map(Limits::from)),
                               "quotas": periods_json(g.quotas), "active": is_live})
                    })
                    .collect(),
            ),
        };
        json!({
            "name": c.name(),
            "id": format!("/projects/{}/consumers/{}", c.project(), c.name()),
            "type": "consumers",
            "properties": {"declaredIn": origin, "quotas": periods_json(quotas), "grants": grants},
        })
    }

    pub fn consumers_json(&self, project: &str, page: &super::paging::Page) -> Value {
        self.read(|config, state| {
            let mut list: Vec<Declared<'_>> = declared(config, state).filter(|c| c.project() == project).collect();
            list.sort_by(|a, b| a.name().cmp(b.name()));
            page.list(
                &format!("/projects/{project}/consumers"),
                list.iter(),
                |c| c.name(),
                |c| self.consumer_value(config, c),
            )
        })
    }

    pub fn consumer_json(&self, project: &str, name: &str) -> Result<Value, AdminError> {
        self.read(|config, state| {
            let c = declared(config, state)
                .find(|c| c.project() == project && c.name() == name)
                .ok_or_else(|| no_consumer(project, name))?;
            Ok(self.consumer_value(config, &c))
        })
    }

    /// PUT a consumer: creates it (answering with its keys) or replaces its quotas and grants,
    /// keeping its keys. A grant of another project's deployment that is new or changed needs
    /// `token` to be allowed to connect there; dropping one never does.
    pub fn put_consumer(
        &self,
        project: &str,
        name: &str,
        body: ConsumerBody,
        token: &AdminToken,
    ) -> Result<(bool, Value), AdminError> {
        check_consumer_names(project, name)?;
        if body.grants.len() > MAX_GRANTS {
            return Err(AdminError::unprocessable(format!(
                "a consumer has at most {MAX_GRANTS} grants; got {}",
                body.grants.len()
            )));
        }
        let quotas = checked_periods(body.quotas, "")?;
        let (created, consumer) = self.change(|config, state| {
            if let Some(file) =
                config.consumers.iter().find(|c| c.project == project && c.name.eq_ignore_ascii_case(name))
            {
                return Err(AdminError::conflict(format!(
                    "consumer '{}' of project '{project}' is declared in the configuration file: change it there",
                    file.name
                )));
            }
            let existing =
                state.consumers.iter().position(|c| c.project == project && c.name.eq_ignore_ascii_case(name));
            if let Some(i) = existing {
                if state.consumers[i].name != name {
                    return Err(AdminError::conflict(format!(
                        "project '{project}' has consumer '{}'; names are unique in a project (case-insensitively)",
                        state.consumers[i].name
                    )));
                }
            } else if config.consumers.len() + state.consumers.len() >= MAX_CONSUMERS {
                return Err(AdminError::conflict(format!(
                    "this gateway holds at most {MAX_CONSUMERS} consumers (each is a metric label); delete one first"
                )));
            }
            let mut grants: Vec<ApiGrant> = Vec::with_capacity(body.grants.len());
            for (i, g) in body.grants.iter().enumerate() {
                let field = format!("grants[{i}].");
                let target = g.project.as_deref().unwrap_or(project);
                check_project_name(target)
                    .map_err(|why| AdminError::unprocessable(format!("{field}project: {why}")))?;
                let grant = checked_grant(config, state, target, &g.deployment, g.limits.as_ref(), g.quotas, &field)?;
                if grants.iter().any(|o| o.project == grant.project && o.deployment == grant.deployment) {
                    return Err(AdminError::unprocessable(format!(
                        "{field}deployment: '{}' is granted twice; give one grant per deployment",
                        grant.deployment
                    )));
                }
                let unchanged = existing.is_some_and(|e| state.consumers[e].grants.contains(&grant));
                if target != project && !unchanged {
                    may_connect(token, target)?;
                }
                grants.push(grant);
            }
            match existing {
                Some(i) => {
                    let c = &mut state.consumers[i];
                    c.quotas = quotas;
                    c.grants = grants;
                    Ok((false, c.clone()))
                }
                None => {
                    let c = ApiConsumer {
                        project: project.to_owned(),
                        name: name.to_owned(),
                        quotas,
                        grants,
                        nonce: rand::random(),
                        key_generations: [1, 1],
                    };
                    state.consumers.push(c.clone());
                    Ok((true, c))
                }
            }
        })?;
        let mut answer = self.consumer_json(project, name)?;
        if created {
            answer["keys"] = self.consumer_keys_json(&consumer);
        }
        Ok((created, answer))
    }

    /// The admin API's consumer `name` of `project` (a file one is a conflict: its keys are
    /// only digests, and it changes in the file).
    fn api_consumer(&self, project: &str, name: &str) -> Result<ApiConsumer, AdminError> {
        self.read(|config, state| {
            if let Some(c) = state.consumers.iter().find(|c| c.project == project && c.name == name) {
                return Ok(c.clone());
            }
            if config.consumers.iter().any(|c| c.project == project && c.name == name) {
                return Err(AdminError::conflict(format!(
                    "consumer '{name}' is declared in the configuration file: change it there (its keys are kept only as digests)"
                )));
            }
            Err(no_consumer(project, name))
        })
    }

    pub fn delete_consumer(&self, project: &str, name: &str) -> Result<(), AdminError> {
        self.api_consumer(project, name)?;
        self.change(|_, state| {
            state.consumers.retain(|c| !(c.project == project && c.name == name));
            Ok(())
        })
    }

    fn consumer_keys_json(&self, c: &ApiConsumer) -> Value {
        json!({"primaryKey": self.secret.derive_consumer_key(c, 0), "secondaryKey": self.secret.derive_consumer_key(c, 1)})
    }

    pub fn list_consumer_keys(&self, project: &str, name: &str) -> Result<Value, AdminError> {
        Ok(self.consumer_keys_json(&self.api_consumer(project, name)?))
    }

    pub fn regenerate_consumer_keys(
        &self,
        project: &str,
        name: &str,
        body: super::resources::RegenerateBody,
    ) -> Result<Value, AdminError> {
        let slot = body.key_type.slot();
        self.api_consumer(project, name)?;
        let c = self.change(|_, state| {
            let c = state
                .consumers
                .iter_mut()
                .find(|c| c.project == project && c.name == name)
                .ok_or_else(|| no_consumer(project, name))?;
            c.key_generations[slot] += 1;
            Ok(c.clone())
        })?;
        Ok(self.consumer_keys_json(&c))
    }

    /// The live consumer `name` of `project` (file or API).
    pub fn live_consumer(&self, project: &str, name: &str) -> Result<std::sync::Arc<Consumer>, AdminError> {
        self.live.load().consumer(project, name).cloned().ok_or_else(|| no_consumer(project, name))
    }

    /// Every grant of deployment `name` of `project`, to consumers of any project.
    pub fn grants_json(&self, project: &str, name: &str) -> Result<Value, AdminError> {
        self.deployment_in(project, name)?;
        let table = self.live.load();
        let list: Vec<Value> = table
            .consumers()
            .iter()
            .filter_map(|c| {
                let grant = c.grant(name)?;
                Some(json!({
                    "consumer": format!("/projects/{}/consumers/{}", c.project, c.name),
                    "limits": limits_json(grant.quota.as_ref().map(|q| q.limits())),
                    "quotas": periods_json(grant.periods.as_ref().map(|p| p.limits()).unwrap_or_default().into()),
                    "connection": c.project != project,
                }))
            })
            .collect();
        Ok(json!({"value": list}))
    }

    /// PUT a grant of deployment `name` of `project` to an API consumer (of any project: a
    /// connection when another), with its own limits and quotas there.
    pub fn put_grant(
        &self,
        project: &str,
        name: &str,
        consumer_project: &str,
        consumer: &str,
        body: ConnectionBody,
    ) -> Result<(bool, Value), AdminError> {
        check_consumer_names(consumer_project, consumer)?;
        self.api_consumer(consumer_project, consumer)?;
        let created = self.change(|config, state| {
            let grant = checked_grant(config, state, project, name, body.limits.as_ref(), body.quotas, "")?;
            let c = state
                .consumers
                .iter_mut()
                .find(|c| c.project == consumer_project && c.name == consumer)
                .ok_or_else(|| no_consumer(consumer_project, consumer))?;
            let full = c.grants.len() >= MAX_GRANTS;
            match c.grants.iter_mut().find(|g| g.project == project && g.deployment == name) {
                Some(existing) => {
                    *existing = grant;
                    Ok(false)
                }
                None if full => Err(AdminError::unprocessable(format!(
                    "consumer '{consumer_project}/{consumer}' already has {MAX_GRANTS} grants, the most a consumer has"
                ))),
                None => {
                    c.grants.push(grant);
                    Ok(true)
                }
            }
        })?;
        Ok((created, self.consumer_json(consumer_project, consumer)?))
    }

    /// Revokes the grant: the consumer's keys stop working on the deployment with this change.
    pub fn delete_grant(
        &self,
        project: &str,
        name: &str,
        consumer_project: &str,
        consumer: &str,
    ) -> Result<(), AdminError> {
        self.api_consumer(consumer_project, consumer)?;
        self.change(|_, state| {
            let c = state
                .consumers
                .iter_mut()
                .find(|c| c.project == consumer_project && c.name == consumer)
                .ok_or_else(|| no_consumer(consumer_project, consumer))?;
            let before = c.grants.len();
            c.grants.retain(|g| !(g.project == project && g.deployment == name));
            if c.grants.len() == before {
                return Err(AdminError::not_found(format!(
                    "consumer '{consumer_project}/{consumer}' has no grant of deployment '{name}' of project '{project}'"
                )));
            }
            Ok(())
        })
    }
}

fn no_consumer(project: &str, name: &str) -> AdminError {
    AdminError::not_found(format!("project '{project}' has no consumer '{name}'"))
}
