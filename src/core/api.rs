//! The API operations the gateway knows, as plain values (no HTTP types).

/// The API operations the gateway forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiRoute {
    Info,
    ChatCompletions,
    Completions,
    Embeddings,
    ImageEmbeddings,
}

impl ApiRoute {
    /// The route's path on a backend (relative to its root URL).
    pub fn path(self) -> &'static str {
        match self {
            ApiRoute::Info => "/info",
            ApiRoute::ChatCompletions => "/chat/completions",
            ApiRoute::Completions => "/completions",
            ApiRoute::Embeddings => "/embeddings",
            ApiRoute::ImageEmbeddings => "/images/embeddings",
        }
    }

    /// Whether the route carries a JSON request body (it is a POST; `/info` is a GET).
    pub fn has_json_body(self) -> bool {
        !matches!(self, ApiRoute::Info)
    }

    /// A bounded label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            ApiRoute::Info => "info",
            ApiRoute::ChatCompletions => "chat_completions",
            ApiRoute::Completions => "completions",
            ApiRoute::Embeddings => "embeddings",
            ApiRoute::ImageEmbeddings => "images_embeddings",
        }
    }

    pub fn from_path(path: &str) -> Option<ApiRoute> {
        Some(match path {
            "/info" => ApiRoute::Info,
            "/chat/completions" => ApiRoute::ChatCompletions,
            "/completions" => ApiRoute::Completions,
            "/embeddings" => ApiRoute::Embeddings,
            "/images/embeddings" => ApiRoute::ImageEmbeddings,
            _ => return None,
        })
    }
}
