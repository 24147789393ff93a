//! Pages of the admin lists, as Azure's APIs page them: `$top` (items a page, at most
//! [`MAX_TOP`], [`MAX_TOP`] when not given) and `$skipToken` (opaque: copy it from the previous
//! page's `nextLink`). A page holds the items whose name sorts after the token, so pages are
//! keyset pages: while items are added or deleted between pages, every item that exists from
//! the first page to the last is listed exactly once (one added behind the token is not listed).
//! `project` (on `/quotas` and `/usage`) keeps one project's deployments.

use super::AdminError;

/// The most items one page holds.
pub const MAX_TOP: usize = 1000;

/// One page, as asked for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Page {
    pub top: usize,
    /// Items after this name.
    pub after: Option<String>,
    /// Only this project's items (where the list takes `project`).
    pub project: Option<String>,
}

impl Page {
    /// Reads `$top`, `$skipToken` and, when `with_project`, `project` (percent-encoded or not);
    /// anything else is a 400 that says what is taken.
    pub fn parse(query: &str, with_project: bool) -> Result<Page, AdminError> {
        let mut page = Page { top: MAX_TOP, after: None, project: None };
        let known = if with_project { "$top, $skipToken and project" } else { "$top and $skipToken" };
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*name {
                "$top" => {
                    page.top = value.parse::<usize>().ok().filter(|n| (1..=MAX_TOP).contains(n)).ok_or_else(|| {
                        AdminError::bad_request(format!("$top must be a number from 1 to {MAX_TOP}; got '{value}'"))
                    })?;
                }
                "$skipToken" => page.after = Some(value.into_owned()),
                "project" if with_project => page.project = Some(value.into_owned()),
                other => {
                    return Err(AdminError::bad_request(format!(
                        "unknown query parameter '{other}': this list takes {known}"
                    )));
                }
            }
        }
        Ok(page)
    }

    /// This page of `items` (sorted by `name`), and the `$skipToken` of the next page when more
    /// items follow.
    pub fn cut<T>(&self, items: impl IntoIterator<Item = T>, name: impl Fn(&T) -> &str) -> (Vec<T>, Option<String>) {
        let mut rest = items.into_iter().filter(|item| self.after.as_deref().is_none_or(|after| name(item) > after));
        let page: Vec<T> = rest.by_ref().take(self.top).collect();
        let next = match (rest.next(), page.last()) {
            (Some(_), Some(last)) => Some(name(last).to_owned()),
            _ => None,
        };
        (page, next)
    }

    /// `{"value": [...]}` of this page of `items` (sorted by `name`), with `nextLink` (`path`
    /// and the next page's token) when more items follow.
    pub fn list<T>(
        &self,
        path: &str,
        items: impl IntoIterator<Item = T>,
        name: impl Fn(&T) -> &str,
        json: impl Fn(T) -> serde_json::Value,
    ) -> serde_json::Value {
        let (page, next) = self.cut(items, name);
        let mut out = serde_json::json!({"value": page.into_iter().map(json).collect::<Vec<_>>()});
        if let Some(token) = next {
            out["nextLink"] = self.next_link(path, &token).into();
        }
        out
    }

    /// The URL of the next page: `path` with this page's `$top` (and `project`) and `token`.
    pub fn next_link(&self, path: &str, token: &str) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        if self.top != MAX_TOP {
            query.append_pair("$top", &self.top.to_string());
        }
        if let Some(project) = &self.project {
            query.append_pair("project", project);
        }
        query.append_pair("$skipToken", token);
        format!("{path}?{}", query.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_each_other_by_name() {
        let names = ["a", "b", "c", "d", "e"];
        let page = Page::parse("$top=2", false).unwrap();
        let (first, next) = page.cut(names, |n| n);
        assert_eq!((first, next.as_deref()), (vec!["a", "b"], Some("b")));
        let page = Page::parse(&format!("%24top=2&%24skipToken={}", next.unwrap()), false).unwrap();
        let (second, next) = page.cut(names, |n| n);
        assert_eq!((second, next.as_deref()), (vec!["c", "d"], Some("d")));
        let (last, next) = Page { after: next, ..page }.cut(names, |n| n);
        assert_eq!((last, next), (vec!["e"], None));
    }

    #[test]
    fn a_full_last_page_says_nothing_follows() {
        let page = Page::parse("$top=2&$skipToken=c", false).unwrap();
        assert_eq!(page.cut(["a", "b", "c", "d", "e"], |n| n), (vec!["d", "e"], None));
    }

    #[test]
    fn the_next_link_keeps_the_page_size_and_the_project() {
        let page = Page::parse("$top=10&project=team-a", true).unwrap();
        let link = page.next_link("/quotas", "d 1&x");
        assert_eq!(link, "/quotas?%24top=10&project=team-a&%24skipToken=d+1%26x");
        let query = link.split_once('?').unwrap().1;
        let again = Page::parse(query, true).unwrap();
        assert_eq!((again.top, again.after.as_deref(), again.project.as_deref()), (10, Some("d 1&x"), Some("team-a")));
    }

    #[test]
    fn bad_queries_say_what_is_taken() {
        for (query, says) in [
            ("$top=0", "from 1 to 1000"),
            ("$top=1001", "from 1 to 1000"),
            ("$top=ten", "got 'ten'"),
            ("limit=5", "takes $top and $skipToken"),
            ("project=a", "takes $top and $skipToken"),
        ] {
            let error = Page::parse(query, false).unwrap_err();
            assert!(error.message.contains(says), "{query}: {}", error.message);
        }
    }
}
