//! The admin API's catalog and subscription operations (`/models`,
//! `/projects/{project}/subscriptions`).

use serde::Deserialize;
use serde_json::{Value, json};

use super::resources::check_names;
use super::state::Subscription;
use super::{AdminError, ControlPlane};
use crate::config::check_model_id;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SubscriptionBody {
    pub model_id: String,
}

impl ControlPlane {
    pub fn catalog_json(&self, page: &super::paging::Page) -> Value {
        self.read(|config, _| {
            let mut models: Vec<_> = config.models.iter().collect();
            models.sort_by(|a, b| a.id.cmp(&b.id));
            page.list("/models", models, |m| &m.id, |m| {
                json!({"id": m.id, "version": m.version, "offer": m.offer, "requiresSubscription": m.offer.is_some()})
            })
        })
    }

    pub fn subscriptions_json(&self, project: &str, page: &super::paging::Page) -> Value {
        self.read(|_, state| {
            let mut subs: Vec<_> = state.subscriptions.iter().filter(|s| s.project == project).collect();
            subs.sort_by(|a, b| a.name.cmp(&b.name));
            page.list(&format!("/projects/{project}/subscriptions"), subs, |s| &s.name, subscription_json)
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
}

fn subscription_json(s: &Subscription) -> Value {
    json!({
        "name": s.name,
        "id": format!("/projects/{}/subscriptions/{}", s.project, s.name),
        "properties": {"modelId": s.model_id, "offer": s.offer, "provisioningState": "Succeeded"},
    })
}
