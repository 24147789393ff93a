//! Admin roles and what each may do. Every admin endpoint names its [`Action`]; [`Role::allows`]
//! is the one table that decides.

use serde::{Deserialize, Serialize};

use crate::core::keys::KeyDigest;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything.
    Owner,
    /// Everything but managing admin tokens (role changes).
    Contributor,
    /// Subscribe, deploy, list keys and read usage in its projects.
    AiDeveloper,
    /// Read-only, never keys.
    Reader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Contributor => "contributor",
            Role::AiDeveloper => "ai-developer",
            Role::Reader => "reader",
        }
    }

    /// The permission table.
    pub fn allows(self, action: Action) -> bool {
        use Action::*;
        match self {
            Role::Owner => true,
            Role::Contributor => !matches!(action, ManageTokens),
            Role::AiDeveloper => matches!(
                action,
                ReadCatalog
                    | ReadSubscriptions
                    | Subscribe
                    | ReadDeployments
                    | Deploy
                    | ListKeys
                    | ReadUsage
                    | ReadConsumers
                    | PutConsumer
            ),
            Role::Reader => {
                matches!(
                    action,
                    ReadCatalog | ReadSubscriptions | ReadDeployments | ReadUsage | ReadTokens | ReadConsumers
                )
            }
        }
    }
}

/// What an admin request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    ReadCatalog,
    ReadSubscriptions,
    Subscribe,
    Unsubscribe,
    ReadDeployments,
    Deploy,
    UpdateDeployment,
    DeleteDeployment,
    ListKeys,
    RegenerateKeys,
    ReadUsage,
    /// List and read consumers (never their keys).
    ReadConsumers,
    /// Create or replace a consumer of the project (its grants in the project included).
    PutConsumer,
    DeleteConsumer,
    /// Grant a deployment of the project to a consumer of another project (a connection), or
    /// change or revoke such a grant: the deployment's project pays for what it is used for.
    Connect,
    ReadTokens,
    ManageTokens,
    Reload,
}

impl Action {
    /// Actions confined to the projects an `ai-developer` token names.
    pub fn is_project_scoped(self) -> bool {
        !matches!(self, Action::ReadCatalog | Action::ReadTokens | Action::ManageTokens | Action::Reload)
    }
}

/// A bearer token for the admin API, stored as a digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminToken {
    pub name: String,
    pub role: Role,
    pub digest: KeyDigest,
    /// Projects the token may act in; `None` is every project.
    pub projects: Option<Vec<String>>,
    /// Declared in the configuration file (not changeable through the API).
    pub from_file: bool,
}

impl AdminToken {
    pub fn may_use_project(&self, project: &str) -> bool {
        self.projects.as_ref().is_none_or(|p| p.iter().any(|q| q == project))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table() {
        assert!(Role::Owner.allows(Action::ManageTokens));
        assert!(!Role::Contributor.allows(Action::ManageTokens));
        assert!(Role::Contributor.allows(Action::RegenerateKeys));
        assert!(Role::AiDeveloper.allows(Action::ListKeys));
        assert!(!Role::AiDeveloper.allows(Action::DeleteDeployment));
        assert!(!Role::Reader.allows(Action::ListKeys));
        assert!(Role::Reader.allows(Action::ReadUsage));
        assert!(Role::Reader.allows(Action::ReadConsumers));
        assert!(!Role::Reader.allows(Action::PutConsumer));
        assert!(Role::AiDeveloper.allows(Action::PutConsumer));
        assert!(!Role::AiDeveloper.allows(Action::Connect));
        assert!(!Role::AiDeveloper.allows(Action::DeleteConsumer));
        assert!(Role::Contributor.allows(Action::Connect));
    }
}
