//! The admin API's token operations (`/tokens`): who may do what, stored as digests.

use serde::Deserialize;
use serde_json::{Value, json};

use super::state::StoredToken;
use super::{AdminError, ControlPlane};
use crate::config::check_project_name;
use crate::core::keys::{KeyDigest, generate_key};
use crate::core::roles::Role;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TokenBody {
    pub role: Role,
    pub projects: Option<Vec<String>>,
}

impl ControlPlane {
    pub fn tokens_json(&self, page: &super::paging::Page) -> Value {
        self.read(|config, state| {
            let file = config.admin.tokens.iter().map(|t| (t.name.as_str(), t.role, &t.projects, "configuration"));
            let api = state.tokens.iter().map(|t| (t.name.as_str(), t.role, &t.projects, "api"));
            let mut all: Vec<_> = file.chain(api).collect();
            all.sort_by(|a, b| a.0.cmp(b.0));
            page.list("/tokens", all, |t| t.0, |(name, role, projects, from)| {
                json!({"name": name, "role": role, "projects": projects, "declaredIn": from})
            })
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
