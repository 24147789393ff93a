//! Endpoint keys: generation, the `sha256:<hex>` stored form, and constant-time checks.
//!
//! Plain keys exist only when generated (to be shown once) and while a request is being
//! authenticated; the gateway stores and compares SHA-256 digests.

use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Length of generated keys, as on the cloud service.
pub const KEY_LEN: usize = 32;
const KEY_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// The SHA-256 digest of an endpoint key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyDigest([u8; 32]);

impl std::fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyDigest({})", self.to_stored())
    }
}

impl KeyDigest {
    pub fn of(key: &[u8]) -> Self {
        KeyDigest(Sha256::digest(key).into())
    }

    /// Parses the stored form `sha256:<64 hex digits>`.
    pub fn parse_stored(text: &str) -> Result<Self, String> {
        let hex_part = text.strip_prefix("sha256:").ok_or_else(|| {
            "a key must be stored as \"sha256:<64 hex digits>\" (see `tollgate keys generate`)".to_owned()
        })?;
        let mut digest = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut digest)
            .map_err(|_| "after \"sha256:\" a key needs exactly 64 hex digits".to_owned())?;
        Ok(KeyDigest(digest))
    }

    pub fn to_stored(self) -> String {
        format!("sha256:{}", hex::encode(self.0))
    }

    /// Constant-time comparison.
    pub fn ct_eq(&self, other: &KeyDigest) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

/// A digest as a hash-map key for finding a deployment by its key. Equality is constant-time
/// (as everywhere digests are compared); the map's hasher is SipHash with a random key, so where
/// a digest lands says nothing an attacker can use, and a digest reveals nothing of its key.
#[derive(Clone, Copy, Debug)]
pub struct IndexedDigest(pub KeyDigest);

impl PartialEq for IndexedDigest {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0)
    }
}

impl Eq for IndexedDigest {}

impl std::hash::Hash for IndexedDigest {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(&self.0.0);
    }
}

/// Which of a deployment's two keys authenticated a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySlot {
    Primary,
    Secondary,
}

impl KeySlot {
    pub fn as_str(self) -> &'static str {
        match self {
            KeySlot::Primary => "primary",
            KeySlot::Secondary => "secondary",
        }
    }
}

/// A deployment's primary and secondary key digests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPair {
    pub primary: KeyDigest,
    pub secondary: Option<KeyDigest>,
}

impl KeyPair {
    /// Checks a presented key against both slots. Both comparisons always run, in constant time,
    /// so timing reveals neither which slot matched nor how much of a digest did.
    pub fn check(&self, presented: &[u8]) -> Option<KeySlot> {
        self.check_digest(&KeyDigest::of(presented))
    }

    /// As [`check`](Self::check), with the presented key's digest already computed.
    pub fn check_digest(&self, digest: &KeyDigest) -> Option<KeySlot> {
        let digest = *digest;
        let primary = self.primary.ct_eq(&digest);
        let secondary = self.secondary.as_ref().is_some_and(|s| s.ct_eq(&digest));
        match (primary, secondary) {
            (true, _) => Some(KeySlot::Primary),
            (false, true) => Some(KeySlot::Secondary),
            (false, false) => None,
        }
    }
}

/// A freshly generated plain key: 32 characters of `[A-Za-z0-9]` from the OS-seeded CSPRNG.
pub fn generate_key() -> String {
    let mut rng = rand::rng();
    (0..KEY_LEN).map(|_| char::from(KEY_ALPHABET[rng.random_range(0..KEY_ALPHABET.len())])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_32_alphanumerics_and_differ() {
        let a = generate_key();
        let b = generate_key();
        assert_eq!(a.len(), KEY_LEN);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn stored_form_round_trips() {
        let digest = KeyDigest::of(b"hello");
        let stored = digest.to_stored();
        assert_eq!(stored, "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(KeyDigest::parse_stored(&stored).unwrap(), digest);
    }

    #[test]
    fn malformed_stored_keys_are_rejected_with_a_reason() {
        assert!(KeyDigest::parse_stored("plainkey").unwrap_err().contains("sha256:"));
        assert!(KeyDigest::parse_stored("sha256:abc").unwrap_err().contains("64 hex"));
        assert!(KeyDigest::parse_stored(&format!("sha256:{}", "g".repeat(64))).is_err());
    }

    #[test]
    fn both_slots_match_and_others_do_not() {
        let pair = KeyPair { primary: KeyDigest::of(b"one"), secondary: Some(KeyDigest::of(b"two")) };
        assert_eq!(pair.check(b"one"), Some(KeySlot::Primary));
        assert_eq!(pair.check(b"two"), Some(KeySlot::Secondary));
        assert_eq!(pair.check(b"three"), None);
        assert_eq!(pair.check(b""), None);
        let single = KeyPair { primary: KeyDigest::of(b"one"), secondary: None };
        assert_eq!(single.check(b"two"), None);
    }
}
