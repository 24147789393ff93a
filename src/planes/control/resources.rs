//! The admin API's operations on the control state, and the JSON shapes it answers with
//! (`serverlessEndpoints`-like resources).

use serde::Deserialize;
use serde_json::{Value, json};

use super::state::{ApiDeployment, StoredLimits};
use super::{AdminError, ControlPlane};
use crate::config::{MAX_PER_MINUTE, check_deployment_name, check_model_id, check_project_name};
use crate::core::quota::Limits;
use crate::state::deployment::{Deployment, Health, Origin};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitsBody {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    /// A deployment's `max_wait_ms` (not a grant's).
    pub max_wait_ms: Option<u64>,
}

/// `limits.maxWaitMs` checked: at most ten minutes.
pub(super) fn checked_wait(body: &LimitsBody) -> Result<Option<u64>, AdminError> {
    match body.max_wait_ms {
        Some(ms) if ms > crate::config::MAX_WAIT.as_millis() as u64 => Err(AdminError::unprocessable(format!(
            "limits.maxWaitMs must be at most 600000 (ten minutes); 0 turns waiting off; got {ms}"
        ))),
        other => Ok(other),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeploymentBody {
    pub model_id: String,
    pub limits: Option<LimitsBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PatchBody {
    pub limits: LimitsBody,
}

#[derive(Debug, Deserialize)]
pub enum KeyType {
    Primary,
    Secondary,
}

impl KeyType {
    /// The key's slot (0 primary, 1 secondary).
    pub fn slot(&self) -> usize {
        match self {
            KeyType::Primary => 0,
            KeyType::Secondary => 1,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegenerateBody {
    pub key_type: KeyType,
}

pub(super) fn checked_limits(body: &LimitsBody, base: Limits) -> Result<Limits, AdminError> {
    let check = |value: Option<u64>, field: &str, default: u64| match value {
        None => Ok(default),
        Some(v) if v == 0 || v > MAX_PER_MINUTE => {
            Err(AdminError::unprocessable(format!("limits.{field} must be between 1 and {MAX_PER_MINUTE}; got {v}")))
        }
        Some(v) => Ok(v),
    };
    Ok(Limits {
        requests_per_minute: check(body.requests_per_minute, "requestsPerMinute", base.requests_per_minute)?,
        tokens_per_minute: check(body.tokens_per_minute, "tokensPerMinute", base.tokens_per_minute)?,
    })
}

fn stored(limits: Limits) -> StoredLimits {
    StoredLimits { requests_per_minute: limits.requests_per_minute, tokens_per_minute: limits.tokens_per_minute }
}

pub(super) fn check_names(project: &str, name: &str) -> Result<(), AdminError> {
    check_project_name(project).map_err(AdminError::bad_request)?;
    check_deployment_name(name).map_err(AdminError::bad_request)
}

impl ControlPlane {
    pub fn deployments_json(&self, project: &str, page: &super::paging::Page) -> Value {
        let table = self.live.load();
        let mut list: Vec<&std::sync::Arc<Deployment>> = table.iter().filter(|d| d.project == project).collect();
        list.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        page.list(&format!("/projects/{project}/deployments"), list, |d| &d.name, |d| self.deployment_json(d))
    }

    pub fn deployment_in(&self, project: &str, name: &str) -> Result<std::sync::Arc<Deployment>, AdminError> {
        self.live
            .load()
            .get(name)
            .filter(|d| d.project == project)
            .cloned()
            .ok_or_else(|| AdminError::not_found(format!("project '{project}' has no deployment '{name}'")))
    }

    pub fn deployment_json(&self, d: &Deployment) -> Value {
        let limits = d.quota.limits();
        let (state, reason) = match &d.health {
            Health::Online => ("Online", None),
            Health::Unhealthy(reason) => ("Unhealthy", Some(reason.as_str())),
        };
        json!({
            "name": d.name,
            "id": format!("/projects/{}/deployments/{}", d.project, d.name),
            "type": "serverlessEndpoints",
            "properties": {
                "modelSettings": {"modelId": d.model},
                "inferenceEndpoint": {"uri": format!("{}/openai/deployments/{}", self.public_url, d.name)},
                "endpointState": state,
                "endpointStateReason": reason,
                "provisioningState": "Succeeded",
                "marketplaceSubscriptionId": d.subscription,
                "limits": {
                    "requestsPerMinute": limits.requests_per_minute,
                    "tokensPerMinute": limits.tokens_per_minute,
                    "maxWaitMs": d.waiting_room().map_or(0, |q| q.config().max_wait.as_millis() as u64),
                },
                "declaredIn": match d.origin { Origin::File => "configuration", Origin::Api => "api" },
                // The pool behind the endpoint (from the file, or the catalog model's): never keys.
                "backends": d.pool.backends.iter().map(|b| json!({
                    "name": &*b.name,
                    "url": b.url.to_string(),
                    "weight": b.weight,
                    "priority": b.priority,
                    "limits": b.limits().map(|l| json!({"requestsPerMinute": l.requests_per_minute, "tokensPerMinute": l.tokens_per_minute})),
                })).collect::<Vec<_>>(),
                "maxAttempts": d.max_attempts,
            }
        })
    }

    /// PUT a deployment: creates it (answering with its keys) or updates its limits.
    ///
    /// Setting limits other than the ones a deployment has (or, for a new one, the defaults) is the
    /// same effect as PATCH, so it needs the same permission (`may_change_limits`).
    pub fn deploy(
        &self,
        project: &str,
        name: &str,
        body: DeploymentBody,
        may_change_limits: Result<(), AdminError>,
    ) -> Result<(bool, Value), AdminError> {
        check_names(project, name)?;
        check_model_id(&body.model_id).map_err(AdminError::bad_request)?;
        let created = self.change(|config, state| {
            let model = config.models.iter().find(|m| m.id == body.model_id).ok_or_else(|| {
                AdminError::not_found(format!("model '{}' is not in the catalog; GET /models lists the models", body.model_id))
            })?;
            if let Some(existing) = state.deployments.iter_mut().find(|d| d.name.eq_ignore_ascii_case(name)) {
                if existing.project != project || existing.name != name {
                    return Err(AdminError::conflict(format!(
                        "the name '{name}' is taken by deployment '{}' in project '{}'; names are part of the URL and unique across the gateway",
                        existing.name, existing.project
                    )));
                }
                if existing.model_id != body.model_id {
                    return Err(AdminError::conflict(format!(
                        "deployment '{name}' serves '{}'; a deployment's model cannot change: delete it and deploy again",
                        existing.model_id
                    )));
                }
                if let Some(limits) = &body.limits {
                    let base = existing.limits.map(Limits::from).unwrap_or_default();
                    let next = checked_limits(limits, base)?;
                    let wait = checked_wait(limits)?.or(existing.max_wait_ms);
                    if next != base || wait.unwrap_or(0) != existing.max_wait_ms.unwrap_or(0) {
                        may_change_limits?;
                    }
                    existing.limits = Some(stored(next));
                    existing.max_wait_ms = wait.filter(|ms| *ms > 0);
                }
                return Ok(None);
            }
            if let Some(file) = config.deployments.iter().find(|d| d.name.eq_ignore_ascii_case(name)) {
                return Err(AdminError::conflict(format!(
                    "the name '{name}' is taken by deployment '{}' declared in the configuration file",
                    file.name
                )));
            }
            let same_model = config.deployments.iter().filter(|d| d.project == project).map(|d| (&d.name, &d.model)).chain(
                state.deployments.iter().filter(|d| d.project == project).map(|d| (&d.name, &d.model_id)),
            );
            for (other, model_id) in same_model {
                if *model_id == body.model_id {
                    return Err(AdminError::conflict(format!(
                        "project '{project}' already has deployment '{other}' of model '{model_id}': one deployment per model per project"
                    )));
                }
            }
            if let Some(offer) = &model.offer {
                if !state.subscriptions.iter().any(|s| s.project == project && s.offer == *offer) {
                    return Err(AdminError::conflict(format!(
                        "model '{}' needs a subscription to offer '{offer}' in project '{project}', which it does not have: PUT /projects/{project}/subscriptions/{{name}} with {{\"modelId\": \"{}\"}} first",
                        model.id, model.id
                    )));
                }
            }
            let (limits, max_wait_ms) = match &body.limits {
                Some(l) => {
                    let limits = checked_limits(l, Limits::default())?;
                    let wait = checked_wait(l)?.filter(|ms| *ms > 0);
                    if limits != Limits::default() || wait.is_some() {
                        may_change_limits?;
                    }
                    (Some(stored(limits)), wait)
                }
                None => (None, None),
            };
            let deployment = ApiDeployment {
                project: project.into(),
                name: name.into(),
                model_id: model.id.clone(),
                limits,
                max_wait_ms,
                nonce: rand::random(),
                key_generations: [1, 1],
            };
            state.deployments.push(deployment.clone());
            Ok(Some(deployment))
        })?;
        let live = self.deployment_in(project, name)?;
        let mut answer = self.deployment_json(&live);
        if let Some(deployment) = &created {
            answer["keys"] = self.keys_json(deployment);
        }
        Ok((created.is_some(), answer))
    }

    fn api_deployment(&self, project: &str, name: &str) -> Result<ApiDeployment, AdminError> {
        self.read(|config, state| {
            if let Some(d) = state.deployments.iter().find(|d| d.project == project && d.name == name) {
                return Ok(d.clone());
            }
            if config.deployments.iter().any(|d| d.project == project && d.name == name) {
                return Err(AdminError::conflict(format!(
                    "deployment '{name}' is declared in the configuration file: change it there (its keys are kept only as digests)"
                )));
            }
            Err(AdminError::not_found(format!("project '{project}' has no deployment '{name}'")))
        })
    }

    fn with_deployment<T>(
        &self,
        project: &str,
        name: &str,
        apply: impl FnOnce(&mut ApiDeployment) -> Result<T, AdminError>,
    ) -> Result<T, AdminError> {
        self.api_deployment(project, name)?;
        self.change(|_, state| {
            let d = state
                .deployments
                .iter_mut()
                .find(|d| d.project == project && d.name == name)
                .ok_or_else(|| AdminError::not_found(format!("project '{project}' has no deployment '{name}'")))?;
            apply(d)
        })
    }

    pub fn patch_limits(&self, project: &str, name: &str, body: PatchBody) -> Result<Value, AdminError> {
        self.with_deployment(project, name, |d| {
            let base = d.limits.map(Limits::from).unwrap_or_default();
            d.limits = Some(stored(checked_limits(&body.limits, base)?));
            if let Some(ms) = checked_wait(&body.limits)? {
                d.max_wait_ms = Some(ms).filter(|ms| *ms > 0);
            }
            Ok(())
        })?;
        Ok(self.deployment_json(&*self.deployment_in(project, name)?))
    }

    pub fn delete_deployment(&self, project: &str, name: &str) -> Result<(), AdminError> {
        self.api_deployment(project, name)?;
        self.change(|_, state| {
            state.deployments.retain(|d| !(d.project == project && d.name == name));
            // Its grants go with it: a deployment made again under the name is granted anew.
            for consumer in &mut state.consumers {
                consumer.grants.retain(|g| !(g.project == project && g.deployment == name));
            }
            Ok(())
        })
    }

    fn keys_json(&self, d: &ApiDeployment) -> Value {
        json!({"primaryKey": self.secret.derive_key(d, 0), "secondaryKey": self.secret.derive_key(d, 1)})
    }

    pub fn list_keys(&self, project: &str, name: &str) -> Result<Value, AdminError> {
        Ok(self.keys_json(&self.api_deployment(project, name)?))
    }

    pub fn regenerate_keys(&self, project: &str, name: &str, body: RegenerateBody) -> Result<Value, AdminError> {
        let slot = body.key_type.slot();
        let d = self.with_deployment(project, name, |d| {
            d.key_generations[slot] += 1;
            Ok(d.clone())
        })?;
        Ok(self.keys_json(&d))
    }
}
