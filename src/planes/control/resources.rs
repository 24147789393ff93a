//! The admin API's operations on the control state, and the JSON shapes it answers with
//! (`serverlessEndpoints`-like resources).

use serde::Deserialize;
use serde_json::{Value, json};

use super::state::{ApiDeployment, StoredLimits, StoredToken, Subscription};
use super::{AdminError, ControlPlane};
use crate::config::{MAX_PER_MINUTE, check_deployment_name, check_model_id, check_project_name};
use crate::core::keys::{KeyDigest, generate_key};
use crate::core::quota::Limits;
use crate::core::roles::Role;
use crate::state::deployment::{Deployment, Health, Origin};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SubscriptionBody {
    pub model_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitsBody {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegenerateBody {
    pub key_type: KeyType,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TokenBody {
    pub role: Role,
    pub projects: Option<Vec<String>>,
}

fn checked_limits(body: &LimitsBody, base: Limits) -> Result<Limits, AdminError> {
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

fn check_names(project: &str, name: &str) -> Result<(), AdminError> {
    check_project_name(project).map_err(AdminError::bad_request)?;
    check_deployment_name(name).map_err(AdminError::bad_request)
}

impl ControlPlane {
    pub fn catalog_json(&self) -> Value {
        self.read(|config, _| {
            let models: Vec<Value> = config
                .models
                .iter()
                .map(|m| json!({"id": m.id, "version": m.version, "offer": m.offer, "requiresSubscription": m.offer.is_some()}))
                .collect();
            json!({"value": models})
        })
    }

    pub fn subscriptions_json(&self, project: &str) -> Value {
        self.read(|_, state| {
            let subs: Vec<Value> =
                state.subscriptions.iter().filter(|s| s.project == project).map(subscription_json).collect();
            json!({"value": subs})
        })
    }

    pub fn subscription_json(&self, project: &str, name: &str) -> Result<Value, AdminError> {
        self.read(|_, state| {
            state
                .subscriptions
                .iter()
                .find(|s| s.project == project && s.name == name)
                .map(subscription_json)
                .ok_or_else(|| AdminError::not_found(format!("project '{project}' has no subscription '{name}'")))
        })
    }

    /// PUT a subscription: accepts the offer of the model's catalog entry. `true` when created.
    pub fn subscribe(&self, project: &str, name: &str, body: SubscriptionBody) -> Result<(bool, Value), AdminError> {
        check_names(project, name)?;
        check_model_id(&body.model_id).map_err(AdminError::bad_request)?;
        self.change(|config, state| {
            let model = config.models.iter().find(|m| m.id == body.model_id).ok_or_else(|| {
                AdminError::not_found(format!("model '{}' is not in the catalog; GET /models lists the models", body.model_id))
            })?;
            let offer = model.offer.clone().ok_or_else(|| {
                AdminError::unprocessable(format!("model '{}' has no marketplace offer: deploy it without a subscription", model.id))
            })?;
            if let Some(existing) = state.subscriptions.iter().find(|s| s.project == project && s.name == name) {
                if existing.offer != offer {
                    return Err(AdminError::conflict(format!(
                        "subscription '{name}' in project '{project}' is to offer '{}', not '{offer}'; use another name",
                        existing.offer
                    )));
                }
                return Ok((false, subscription_json(existing)));
            }
            let sub = Subscription { project: project.into(), name: name.into(), model_id: model.id.clone(), offer };
            let answer = subscription_json(&sub);
            state.subscriptions.push(sub);
            Ok((true, answer))
        })
    }

    pub fn unsubscribe(&self, project: &str, name: &str) -> Result<(), AdminError> {
        self.change(|_, state| {
            let before = state.subscriptions.len();
            state.subscriptions.retain(|s| !(s.project == project && s.name == name));
            if state.subscriptions.len() == before {
                return Err(AdminError::not_found(format!("project '{project}' has no subscription '{name}'")));
            }
            Ok(())
        })
    }

    pub fn deployments_json(&self, project: &str) -> Value {
        let table = self.live.load();
        let mut list: Vec<&std::sync::Arc<Deployment>> = table.iter().filter(|d| d.project == project).collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        json!({"value": list.into_iter().map(|d| self.deployment_json(d)).collect::<Vec<_>>()})
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
                "limits": {"requestsPerMinute": limits.requests_per_minute, "tokensPerMinute": limits.tokens_per_minute},
                "declaredIn": match d.origin { Origin::File => "configuration", Origin::Api => "api" },
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
                    if next != base {
                        may_change_limits?;
                    }
                    existing.limits = Some(stored(next));
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
            let limits = match &body.limits {
                Some(l) => {
                    let limits = checked_limits(l, Limits::default())?;
                    if limits != Limits::default() {
                        may_change_limits?;
                    }
                    Some(stored(limits))
                }
                None => None,
            };
            let deployment = ApiDeployment {
                project: project.into(),
                name: name.into(),
                model_id: model.id.clone(),
                limits,
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
            Ok(())
        })?;
        Ok(self.deployment_json(&*self.deployment_in(project, name)?))
    }

    pub fn delete_deployment(&self, project: &str, name: &str) -> Result<(), AdminError> {
        self.api_deployment(project, name)?;
        self.change(|_, state| {
            state.deployments.retain(|d| !(d.project == project && d.name == name));
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
        let slot = match body.key_type {
            KeyType::Primary => 0,
            KeyType::Secondary => 1,
        };
        let d = self.with_deployment(project, name, |d| {
            d.key_generations[slot] += 1;
            Ok(d.clone())
        })?;
        Ok(self.keys_json(&d))
    }

    pub fn tokens_json(&self) -> Value {
        self.read(|config, state| {
            let file = config.admin.tokens.iter().map(
                |t| json!({"name": t.name, "role": t.role, "projects": t.projects, "declaredIn": "configuration"}),
            );
            let api = state
                .tokens
                .iter()
                .map(|t| json!({"name": t.name, "role": t.role, "projects": t.projects, "declaredIn": "api"}));
            json!({"value": file.chain(api).collect::<Vec<_>>()})
        })
    }

    /// Creates or replaces an admin token; the plain token is in this answer only.
    pub fn put_token(&self, name: &str, body: TokenBody) -> Result<Value, AdminError> {
        if name.is_empty()
            || name.len() > 64
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(AdminError::bad_request("token names are 1 to 64 letters, digits, '-' or '_'"));
        }
        for project in body.projects.iter().flatten() {
            check_project_name(project).map_err(AdminError::bad_request)?;
        }
        let plain = format!("tga_{}", generate_key());
        self.change(|config, state| {
            if config.admin.tokens.iter().any(|t| t.name == name) {
                return Err(AdminError::conflict(format!(
                    "admin token '{name}' is declared in the configuration file: change it there"
                )));
            }
            state.tokens.retain(|t| t.name != name);
            state.tokens.push(StoredToken {
                name: name.into(),
                role: body.role,
                projects: body.projects.clone(),
                digest: KeyDigest::of(plain.as_bytes()).to_stored(),
            });
            Ok(())
        })?;
        Ok(json!({"name": name, "role": body.role, "projects": body.projects, "token": plain}))
    }

    pub fn delete_token(&self, name: &str) -> Result<(), AdminError> {
        self.change(|config, state| {
            if config.admin.tokens.iter().any(|t| t.name == name) {
                return Err(AdminError::conflict(format!(
                    "admin token '{name}' is declared in the configuration file: remove it there"
                )));
            }
            let before = state.tokens.len();
            state.tokens.retain(|t| t.name != name);
            if before == state.tokens.len() {
                return Err(AdminError::not_found(format!("no admin token '{name}'")));
            }
            Ok(())
        })
    }
}

fn subscription_json(s: &Subscription) -> Value {
    json!({
        "name": s.name,
        "id": format!("/projects/{}/subscriptions/{}", s.project, s.name),
        "properties": {"modelId": s.model_id, "offer": s.offer, "provisioningState": "Succeeded"},
    })
}
