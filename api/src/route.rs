//! Which requests a route selects, and in which order routes are tried: the
//! rules the sidecar matches requests with and the webhook and `trellis
//! check` validate policies with, so the two can never disagree.

use crate::crd::RouteMatch;

/// RFC 9110 §9.2.2: methods whose repetition has the same effect as one
/// request, so a retry cannot do the work twice. Method names are
/// case-sensitive.
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// Whether `path` is `prefix` or below it, by whole segments: `/api`
/// covers `/api` and `/api/x`, not `/apix`; `/api/` covers `/api/x`.
pub fn is_under(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

impl RouteMatch {
    /// Whether a request with `method` and `path` is selected: every
    /// condition given must hold.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        if self.path.as_deref().is_some_and(|exact| path != exact) {
            return false;
        }
        if self
            .path_prefix
            .as_deref()
            .is_some_and(|prefix| !is_under(path, prefix))
        {
            return false;
        }
        self.methods.is_empty() || self.methods.iter().any(|m| m.as_str() == method)
    }

    /// Whether every request `other` selects is also selected by `self`.
    pub fn covers(&self, other: &RouteMatch) -> bool {
        let methods = self.methods.is_empty()
            || (!other.methods.is_empty()
                && other.methods.iter().all(|m| self.methods.contains(m)));
        if !methods {
            return false;
        }
        match (&self.path, &self.path_prefix) {
            (Some(exact), _) => other.path.as_deref() == Some(exact.as_str()),
            (None, Some(prefix)) => match (&other.path, &other.path_prefix) {
                (Some(p), _) | (None, Some(p)) => is_under(p, prefix),
                (None, None) => false,
            },
            (None, None) => true,
        }
    }

    /// The order routes are tried in, higher first: an exact path beats a
    /// longer prefix beats methods alone; with methods beats without. Ties
    /// keep the order written.
    pub fn specificity(&self) -> (u8, usize, usize) {
        let path = match (&self.path, &self.path_prefix) {
            (Some(p), _) => (2, p.len()),
            (None, Some(p)) => (1, p.len()),
            (None, None) => (0, 0),
        };
        (path.0, path.1, usize::from(!self.methods.is_empty()))
    }

    /// `[path=/a pathPrefix=/b methods=GET,POST]`, for messages.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = &self.path {
            parts.push(format!("path={p}"));
        }
        if let Some(p) = &self.path_prefix {
            parts.push(format!("pathPrefix={p}"));
        }
        if !self.methods.is_empty() {
            let methods: Vec<&str> = self.methods.iter().map(|m| m.as_str()).collect();
            parts.push(format!("methods={}", methods.join(",")));
        }
        format!("[{}]", parts.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Method;

    fn m(prefix: Option<&str>, path: Option<&str>, methods: &[Method]) -> RouteMatch {
        RouteMatch {
            path_prefix: prefix.map(str::to_string),
            path: path.map(str::to_string),
            methods: methods.to_vec(),
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let r = m(Some("/api/v1"), None, &[]);
        assert!(r.matches("GET", "/api/v1"));
        assert!(r.matches("GET", "/api/v1/x"));
        assert!(!r.matches("GET", "/api/v1x"));
        assert!(!r.matches("GET", "/api"));
        assert!(m(Some("/api/"), None, &[]).matches("GET", "/api/x"));
        assert!(m(Some("/"), None, &[]).matches("GET", "/anything"));
    }

    #[test]
    fn exact_paths_and_methods() {
        let r = m(None, Some("/pay"), &[Method::Post]);
        assert!(r.matches("POST", "/pay"));
        assert!(!r.matches("GET", "/pay"));
        assert!(!r.matches("POST", "/pay/1"));
        assert!(!r.matches("post", "/pay"), "methods are case-sensitive");
    }

    #[test]
    fn covering_follows_matching() {
        let api = m(Some("/api"), None, &[]);
        assert!(api.covers(&m(None, Some("/api/x"), &[Method::Get])));
        assert!(!api.covers(&m(None, Some("/apix"), &[])));
        assert!(!m(Some("/api"), None, &[Method::Get]).covers(&api));
        assert!(m(None, None, &[Method::Get]).covers(&m(Some("/x"), None, &[Method::Get])));
    }

    #[test]
    fn idempotent_methods() {
        for yes in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert!(is_idempotent(yes), "{yes}");
        }
        for no in ["POST", "PATCH", "CONNECT", "get", "PURGE"] {
            assert!(!is_idempotent(no), "{no}");
        }
    }
}
