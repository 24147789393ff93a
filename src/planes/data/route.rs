//! Stage 1, route: which API operation a request asks for and how it names its deployment.
//!
//! Four addressing modes reach the same deployment:
//! 1. host: the first DNS label of `Host` (`meta-llama3-8b-qwerty.localhost:8080/chat/completions`);
//! 2. path: `/openai/deployments/{name}/chat/completions` (the `openai` SDK's `AzureOpenAI`);
//! 3. unified: `/models/chat/completions` or `/v1/chat/completions`, with the name in the
//!    `azureml-model-deployment` header or the body's `model` field.
//!
//! Root paths (`/chat/completions`) try the host label first and fall back to the header and body.

use http::Method;

use crate::core::api::ApiRoute;
use crate::planes::data::error::ApiError;

/// The HTTP method of a route (core's [`ApiRoute`] knows no HTTP types).
pub trait RouteMethod {
    fn method(self) -> Method;
}

impl RouteMethod for ApiRoute {
    fn method(self) -> Method {
        if self.has_json_body() { Method::POST } else { Method::GET }
    }
}

/// Where the deployment's name is to be found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addressing<'a> {
    /// Named in the path: `/openai/deployments/{name}/...`.
    Path(&'a str),
    /// `/models/...` or `/v1/...`: header or body.
    Unified,
    /// A root path: host label, then header or body.
    Root,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Routed<'a> {
    pub route: ApiRoute,
    pub addressing: Addressing<'a>,
}

/// Matches a method and path to an operation.
pub fn route<'a>(method: &Method, path: &'a str) -> Result<Routed<'a>, ApiError> {
    let (addressing, rest) = if let Some(after) = path.strip_prefix("/openai/deployments/") {
        let (name, rest) = after.split_at(after.find('/').unwrap_or(after.len()));
        (Addressing::Path(name), rest)
    } else if let Some(rest) = path.strip_prefix("/models").filter(|r| r.starts_with('/')) {
        (Addressing::Unified, rest)
    } else if let Some(rest) = path.strip_prefix("/v1").filter(|r| r.starts_with('/')) {
        (Addressing::Unified, rest)
    } else {
        (Addressing::Root, path)
    };
    let route =
        ApiRoute::from_path(rest).ok_or_else(|| ApiError::RouteNotFound { path: truncate(path, 200).to_owned() })?;
    if *method != route.method() {
        return Err(ApiError::MethodNotAllowed {
            method: method.clone(),
            route: route.path(),
            allowed: route.method(),
        });
    }
    Ok(Routed { route, addressing })
}

/// `GET /v1/models` (OpenAI) or `/openai/models` (Azure OpenAI), and one model under either:
/// answered by the gateway with the deployments the presented key may call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelsQuery<'a> {
    List,
    One(&'a str),
}

/// Whether the path asks for the model list; 405 for another method than GET.
pub fn models_query<'a>(method: &Method, path: &'a str) -> Result<Option<ModelsQuery<'a>>, ApiError> {
    let Some(rest) = path.strip_prefix("/v1/models").or_else(|| path.strip_prefix("/openai/models")) else {
        return Ok(None);
    };
    let query = match rest {
        "" | "/" => ModelsQuery::List,
        _ => match rest.strip_prefix('/') {
            Some(id) if !id.is_empty() && !id.contains('/') => ModelsQuery::One(id),
            _ => return Ok(None),
        },
    };
    if *method != Method::GET {
        return Err(ApiError::MethodNotAllowed { method: method.clone(), route: "/v1/models", allowed: Method::GET });
    }
    Ok(Some(query))
}

/// Stage 0: the `Host` check ([`crate::planes::respond::host_problem`]) as the API's error.
pub fn check_host(version: http::Version, headers: &http::HeaderMap) -> Result<(), ApiError> {
    match crate::planes::respond::host_problem(version, headers) {
        Some(reason) => Err(ApiError::InvalidHost { reason }),
        None => Ok(()),
    }
}

/// The first DNS label of a host name, when the host can name a deployment: at least two labels,
/// not an IP address.
pub fn host_label(host: &str) -> Option<&str> {
    let host = match host.rsplit_once(':') {
        Some((h, port)) if !h.ends_with(']') && !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        Some(_) if host.starts_with('[') => return None,
        _ => host,
    };
    let (label, rest) = host.split_once('.')?;
    if label.is_empty() || rest.is_empty() || host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    Some(label)
}

/// Cuts untrusted text to at most `max` bytes on a character boundary.
pub fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_under_every_prefix() {
        for (path, route) in [
            ("/info", ApiRoute::Info),
            ("/chat/completions", ApiRoute::ChatCompletions),
            ("/completions", ApiRoute::Completions),
            ("/embeddings", ApiRoute::Embeddings),
            ("/images/embeddings", ApiRoute::ImageEmbeddings),
        ] {
            let m = route.method();
            assert_eq!(super::route(&m, path).unwrap(), Routed { route, addressing: Addressing::Root });
            assert_eq!(super::route(&m, &format!("/models{path}")).unwrap().addressing, Addressing::Unified);
            assert_eq!(super::route(&m, &format!("/v1{path}")).unwrap().addressing, Addressing::Unified);
            let p = format!("/openai/deployments/dep-1{path}");
            assert_eq!(super::route(&m, &p).unwrap(), Routed { route, addressing: Addressing::Path("dep-1") });
        }
    }

    #[test]
    fn unknown_paths_and_methods() {
        assert!(matches!(route(&Method::POST, "/chat"), Err(ApiError::RouteNotFound { .. })));
        assert!(matches!(route(&Method::POST, "/modelschat/completions"), Err(ApiError::RouteNotFound { .. })));
        assert!(matches!(route(&Method::POST, "/openai/deployments/x"), Err(ApiError::RouteNotFound { .. })));
        assert!(matches!(route(&Method::GET, "/chat/completions"), Err(ApiError::MethodNotAllowed { .. })));
        assert!(matches!(route(&Method::POST, "/info"), Err(ApiError::MethodNotAllowed { .. })));
    }

    #[test]
    fn host_headers() {
        use http::{HeaderMap, HeaderValue, Version};
        let mut one = HeaderMap::new();
        one.insert(http::header::HOST, HeaderValue::from_static("a"));
        let mut two = one.clone();
        two.append(http::header::HOST, HeaderValue::from_static("b"));
        let none = HeaderMap::new();
        assert!(check_host(Version::HTTP_11, &one).is_ok());
        assert!(check_host(Version::HTTP_11, &none).is_err());
        assert!(check_host(Version::HTTP_11, &two).is_err());
        assert!(check_host(Version::HTTP_10, &none).is_ok());
        assert!(check_host(Version::HTTP_2, &none).is_ok());
        assert!(check_host(Version::HTTP_2, &two).is_err());
    }

    #[test]
    fn model_listing_paths() {
        assert_eq!(models_query(&Method::GET, "/v1/models").unwrap(), Some(ModelsQuery::List));
        assert_eq!(models_query(&Method::GET, "/openai/models").unwrap(), Some(ModelsQuery::List));
        assert_eq!(models_query(&Method::GET, "/v1/models/dep").unwrap(), Some(ModelsQuery::One("dep")));
        assert_eq!(models_query(&Method::GET, "/v1/models/a/b").unwrap(), None);
        assert_eq!(models_query(&Method::GET, "/v1/modelsx").unwrap(), None);
        assert_eq!(models_query(&Method::GET, "/v1/chat/completions").unwrap(), None);
        assert!(matches!(models_query(&Method::POST, "/v1/models"), Err(ApiError::MethodNotAllowed { .. })));
    }

    #[test]
    fn host_labels() {
        assert_eq!(host_label("meta-llama3-8b-qwerty.localhost:8080"), Some("meta-llama3-8b-qwerty"));
        assert_eq!(host_label("dep.eastus2.models.ai.azure.com"), Some("dep"));
        assert_eq!(host_label("localhost:8080"), None);
        assert_eq!(host_label("127.0.0.1:8080"), None);
        assert_eq!(host_label("[::1]:8080"), None);
        assert_eq!(host_label(".x"), None);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
