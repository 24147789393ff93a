//! A backend's root URL, checked once so requests can be addressed to it without re-parsing.

use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};

/// Root URL of a server speaking the Model Inference API, e.g. `http://127.0.0.1:18000` or
/// `https://name.region.models.ai.azure.com`. A path prefix (`https://x.services.ai.azure.com/models`) is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendUrl {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path prefix without a trailing '/', possibly empty.
    pub prefix: String,
}

impl BackendUrl {
    pub fn parse(text: &str) -> Result<BackendUrl, String> {
        let uri: Uri = text.parse().map_err(|e| {
            format!("'{text}' is not a URL ({e}); write the backend's root URL, e.g. \"http://127.0.0.1:18000\"")
        })?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            _ => return Err(format!("'{text}' must start with http:// or https://")),
        };
        let authority = uri.authority().cloned().ok_or_else(|| format!("'{text}' has no host"))?;
        if uri.query().is_some() {
            return Err(format!(
                "'{text}' has a query string; give the root URL only (clients' api-version is passed through)"
            ));
        }
        if authority.as_str().contains('@') {
            return Err(format!(
                "'{text}' holds credentials; put the backend key in an environment variable named by backend_key_env"
            ));
        }
        let prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(BackendUrl { scheme, authority, prefix })
    }

    /// The backend URI for an API route (`/chat/completions`) and the client's query string.
    pub fn uri_for(&self, route: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let mut path = String::with_capacity(self.prefix.len() + route.len() + query.map_or(0, |q| q.len() + 1));
        path.push_str(&self.prefix);
        path.push_str(route);
        if let Some(q) = query {
            path.push('?');
            path.push_str(q);
        }
        let path_and_query = PathAndQuery::try_from(path)?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }

    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }
}

impl std::fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_prefixed_urls() {
        let root = BackendUrl::parse("http://127.0.0.1:18000/").unwrap();
        assert_eq!(
            root.uri_for("/chat/completions", Some("api-version=2024-05-01-preview")).unwrap().to_string(),
            "http://127.0.0.1:18000/chat/completions?api-version=2024-05-01-preview"
        );
        let prefixed = BackendUrl::parse("https://x.services.ai.azure.com/models").unwrap();
        assert!(prefixed.is_https());
        assert_eq!(prefixed.uri_for("/info", None).unwrap().to_string(), "https://x.services.ai.azure.com/models/info");
    }

    #[test]
    fn bad_urls_say_why() {
        assert!(BackendUrl::parse("ftp://x").unwrap_err().contains("http://"));
        assert!(BackendUrl::parse("127.0.0.1:80").is_err());
        assert!(BackendUrl::parse("http://x/?a=b").unwrap_err().contains("query"));
        assert!(BackendUrl::parse("http://u:p@x/").unwrap_err().contains("backend_key_env"));
    }
}
