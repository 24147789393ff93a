//! Admin tokens of every role, and admin API calls with them.

use http::Method;
use serde_json::Value;

/// An admin call: method, path, body.
pub type Call = (Method, String, Option<Value>);
/// A step of a role table: a call, and one the owner makes first when the role may not do the
/// step (so that the step finds what it needs).
pub type Step = (Method, String, Option<Value>, Option<Call>);

use http::StatusCode;

use super::{CHAT, Harness, Reply, stored};

/// (name, role, token): `dev` is confined to project `team-a`, `dev-b` to `team-b`.
pub const TOKENS: [(&str, &str, &str); 5] = [
    ("ops", "owner", "OwnerToken-0123456789abcdefghij"),
    ("builder", "contributor", "ContributorToken-0123456789abcd"),
    ("dev", "ai-developer", "DeveloperToken-0123456789abcdef"),
    ("viewer", "reader", "ReaderToken-0123456789abcdefghi"),
    ("dev-b", "ai-developer", "DeveloperBToken-0123456789abcde"),
];

/// `[[admin.tokens]]` tables for [`TOKENS`].
pub fn token_tables() -> String {
    let mut out = String::new();
    for (name, role, token) in TOKENS {
        let projects = match name {
            "dev" => "\nprojects = [\"team-a\"]",
            "dev-b" => "\nprojects = [\"team-b\"]",
            _ => "",
        };
        out.push_str(&format!(
            "[[admin.tokens]]\nname = \"{name}\"\nrole = \"{role}\"\ntoken = \"{}\"{projects}\n",
            stored(token)
        ));
    }
    out
}

pub fn token(role: &str) -> &'static str {
    TOKENS.iter().find(|(name, r, _)| *r == role && *name != "dev-b").unwrap().2
}

impl Harness {
    pub async fn api(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("authorization", b.as_str())).collect();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        self.client.call(method, &format!("http://{}{path}", self.gateway.admin_addr), &headers, &body).await
    }

    pub async fn owner(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let reply = self.api(method, path, Some(token("owner")), body).await;
        assert!(reply.status.is_success(), "{path}: {} {}", reply.status, reply.text());
        reply
    }

    pub async fn chat(&self, deployment: &str, key: &str) -> StatusCode {
        let url = self.url(&format!("/openai/deployments/{deployment}/chat/completions"));
        self.client.post(&url, &[("api-key", key)], CHAT).await.status
    }

    /// Runs `steps` with `role`'s token: each succeeds where `expected` says so and is 403
    /// `Forbidden` (showing no key) elsewhere, and then the owner does it so later steps find what
    /// they need; none works without a token or with a wrong one.
    pub async fn role_steps(&self, role: &str, steps: Vec<Step>, expected: &[bool]) {
        assert_eq!(steps.len(), expected.len());
        let t = Some(token(role));
        for (i, (method, path, body, setup)) in steps.into_iter().enumerate() {
            if let Some((m, p, b)) = setup {
                if !expected[i] {
                    self.owner(m, &p, b).await;
                }
            }
            let none = self.api(method.clone(), &path, None, body.clone()).await;
            assert_eq!(none.status, StatusCode::UNAUTHORIZED, "{method} {path} without a token");
            let wrong = self.api(method.clone(), &path, Some("not-a-token"), body.clone()).await;
            assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{method} {path} with a wrong token");
            let reply = self.api(method.clone(), &path, t, body.clone()).await;
            if expected[i] {
                assert!(reply.status.is_success(), "{role}: {method} {path}: {} {}", reply.status, reply.text());
            } else {
                assert_eq!(reply.status, StatusCode::FORBIDDEN, "{role}: {method} {path}: {}", reply.text());
                assert_eq!(reply.error_code(), "Forbidden");
                assert!(!reply.text().contains("primaryKey"));
                if method != Method::GET {
                    self.owner(method, &path, body).await;
                }
            }
        }
    }
}
