//! What the admin API changed, persisted atomically beside the configuration file (temporary
//! file, fsync, rename, fsync of the directory), so a restart or a crash loses nothing that was
//! acknowledged. The file holds no plain keys or tokens: key digests are derived again from a
//! secret kept in a separate `0600` file.

use std::io::Write;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::core::quota::Limits;
use crate::core::quota::period::PeriodLimits;
use crate::core::roles::Role;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ControlState {
    #[serde(default)]
    pub subscriptions: Vec<Subscription>,
    #[serde(default)]
    pub deployments: Vec<ApiDeployment>,
    #[serde(default)]
    pub tokens: Vec<StoredToken>,
    #[serde(default)]
    pub consumers: Vec<ApiConsumer>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Subscription {
    pub project: String,
    pub name: String,
    pub model_id: String,
    pub offer: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StoredLimits {
    pub requests_per_minute: u64,
    pub tokens_per_minute: u64,
}

impl From<StoredLimits> for Limits {
    fn from(l: StoredLimits) -> Limits {
        Limits { requests_per_minute: l.requests_per_minute, tokens_per_minute: l.tokens_per_minute }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApiDeployment {
    pub project: String,
    pub name: String,
    pub model_id: String,
    pub limits: Option<StoredLimits>,
    /// How long its requests may wait for its buckets instead of a 429 (`limits.maxWaitMs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait_ms: Option<u64>,
    /// Random per creation, so a deployment deleted and made again gets new keys.
    pub nonce: u64,
    /// Bumped by `regenerateKeys`: [primary, secondary].
    pub key_generations: [u64; 2],
}

/// A consumer made through the admin API: its keys are derived like a deployment's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApiConsumer {
    pub project: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "StoredPeriods::is_empty")]
    pub quotas: StoredPeriods,
    #[serde(default)]
    pub grants: Vec<ApiGrant>,
    /// Random per creation, so a consumer deleted and made again gets new keys.
    pub nonce: u64,
    /// Bumped by `regenerateKeys`: [primary, secondary].
    pub key_generations: [u64; 2],
}

/// One deployment an API consumer may call: `project` is the deployment's (another project's
/// for a connection), so a deployment of the same name made later elsewhere is not granted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApiGrant {
    pub project: String,
    pub deployment: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<StoredLimits>,
    #[serde(default, skip_serializing_if = "StoredPeriods::is_empty")]
    pub quotas: StoredPeriods,
}

/// Period quotas as stored and as the admin API takes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StoredPeriods {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_month: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_day: Option<u64>,
}

impl StoredPeriods {
    pub fn is_empty(&self) -> bool {
        PeriodLimits::from(*self).is_empty()
    }
}

impl From<StoredPeriods> for PeriodLimits {
    fn from(p: StoredPeriods) -> PeriodLimits {
        PeriodLimits {
            tokens_per_day: p.tokens_per_day,
            tokens_per_month: p.tokens_per_month,
            requests_per_day: p.requests_per_day,
        }
    }
}

impl From<PeriodLimits> for StoredPeriods {
    fn from(p: PeriodLimits) -> StoredPeriods {
        StoredPeriods {
            tokens_per_day: p.tokens_per_day,
            tokens_per_month: p.tokens_per_month,
            requests_per_day: p.requests_per_day,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StoredToken {
    pub name: String,
    pub role: Role,
    pub projects: Option<Vec<String>>,
    /// `sha256:<hex>` of the token.
    pub digest: String,
}

/// Why the admin state file cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum StateLoadError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {source}", path.display())]
    Parse { path: PathBuf, source: serde_json::Error },
}

impl ControlState {
    /// Reads the state file; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<ControlState, StateLoadError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                serde_json::from_str(&text).map_err(|source| StateLoadError::Parse { path: path.to_owned(), source })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ControlState::default()),
            Err(source) => Err(StateLoadError::Read { path: path.to_owned(), source }),
        }
    }

    /// Writes the state atomically.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_atomically(path, &text, false)
    }
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, renames it over `path` and syncs
/// the directory: readers see the old file or the new one, never a mix.
pub fn write_atomically(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp: PathBuf = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        if private {
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The secret endpoint keys are derived from (HMAC-SHA256), so they can be listed again
/// (`listKeys`) while only their digests are kept in the state and in memory.
#[derive(Clone)]
pub struct KeySecret([u8; 32]);

impl std::fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeySecret(..)")
    }
}

const KEY_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

impl KeySecret {
    pub fn random() -> KeySecret {
        KeySecret(rand::random())
    }

    /// Reads the secret file, or creates it (mode 0600) with a new random secret.
    pub fn load_or_create(path: &Path) -> std::io::Result<KeySecret> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let mut secret = [0u8; 32];
                hex::decode_to_slice(String::from_utf8_lossy(&bytes).trim(), &mut secret).map_err(|_| {
                    std::io::Error::other(format!("{} does not hold a 64-hex-digit secret", path.display()))
                })?;
                Ok(KeySecret(secret))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secret = KeySecret::random();
                write_atomically(path, hex::encode(secret.0).as_bytes(), true)?;
                Ok(secret)
            }
            Err(e) => Err(e),
        }
    }

    /// The plain 32-character key of a deployment's slot (0 primary, 1 secondary).
    pub fn derive_key(&self, deployment: &ApiDeployment, slot: usize) -> String {
        let generation = deployment.key_generations.get(slot).copied().unwrap_or(0);
        self.derive(&format!("{}\n{}\n{}\n{slot}\n{generation}", deployment.project, deployment.name, deployment.nonce))
    }

    /// The plain key of a consumer's slot. Its material starts with `consumer\n`, which no
    /// deployment's can (names hold no newline), so a consumer never shares a deployment's key.
    pub fn derive_consumer_key(&self, consumer: &ApiConsumer, slot: usize) -> String {
        let generation = consumer.key_generations.get(slot).copied().unwrap_or(0);
        self.derive(&format!(
            "consumer\n{}\n{}\n{}\n{slot}\n{generation}",
            consumer.project, consumer.name, consumer.nonce
        ))
    }

    fn derive(&self, material: &str) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else { return String::new() };
        mac.update(material.as_bytes());
        let bytes = mac.finalize().into_bytes();
        bytes.iter().map(|b| char::from(KEY_ALPHABET[usize::from(*b) % KEY_ALPHABET.len()])).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment() -> ApiDeployment {
        ApiDeployment {
            project: "p".into(),
            name: "d".into(),
            model_id: "m".into(),
            limits: None,
            max_wait_ms: None,
            nonce: 7,
            key_generations: [1, 1],
        }
    }

    #[test]
    fn keys_are_stable_differ_by_slot_and_change_with_generation_and_nonce() {
        let secret = KeySecret([3; 32]);
        let mut d = deployment();
        let primary = secret.derive_key(&d, 0);
        assert_eq!(primary.len(), 32);
        assert_eq!(primary, secret.derive_key(&d, 0));
        assert_ne!(primary, secret.derive_key(&d, 1));
        d.key_generations[0] += 1;
        assert_ne!(primary, secret.derive_key(&d, 0));
        d.key_generations[0] -= 1;
        d.nonce += 1;
        assert_ne!(primary, secret.derive_key(&d, 0));
    }

    #[test]
    fn a_consumer_never_shares_a_deployments_key_and_deployment_keys_stay_as_they_were() {
        let secret = KeySecret([3; 32]);
        let d = deployment();
        let c = ApiConsumer {
            project: d.project.clone(),
            name: d.name.clone(),
            quotas: StoredPeriods::default(),
            grants: Vec::new(),
            nonce: d.nonce,
            key_generations: d.key_generations,
        };
        assert_ne!(secret.derive_consumer_key(&c, 0), secret.derive_key(&d, 0));
        assert_eq!(secret.derive_consumer_key(&c, 0).len(), 32);
        // Pinned: deployments made before consumers existed keep their keys.
        assert_eq!(secret.derive_key(&d, 0), "p8pkNplvQaQB0qCgYPJhQdVzfqFs3jpE");
    }

    #[test]
    fn state_round_trips_atomically_and_the_secret_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tollgate.state.json");
        assert_eq!(ControlState::load(&path).unwrap(), ControlState::default());
        let state = ControlState { deployments: vec![deployment()], ..ControlState::default() };
        state.save(&path).unwrap();
        assert_eq!(ControlState::load(&path).unwrap(), state);
        let secret_path = dir.path().join("tollgate.secret");
        let a = KeySecret::load_or_create(&secret_path).unwrap();
        let b = KeySecret::load_or_create(&secret_path).unwrap();
        assert_eq!(a.0, b.0);
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&secret_path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "{\"surprise\":1}").unwrap();
        assert!(ControlState::load(&path).is_err());
    }
}
