//! Secrets held in memory (backend keys, Redis URLs that may carry a password): `Debug` and
//! `Display` print `(redacted)`, so no `{:?}` of a configuration, an error or a log field can show
//! one. The value is reached only through [`Secret::expose`], at the one place it is used.

/// A secret string.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(redacted)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(redacted)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neither_debug_nor_display_shows_the_value() {
        let secret = Secret::new("hunter2".into());
        assert_eq!(format!("{secret:?} {secret} {:?}", Some(&secret)), "(redacted) (redacted) Some((redacted))");
        assert_eq!(secret.expose(), "hunter2");
    }
}
