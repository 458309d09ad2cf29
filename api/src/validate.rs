//! What the CRD schema and CEL cannot check in a ResiliencePolicy: routes
//! that can never match. The validating webhook denies on [`Findings::errors`]
//! and `trellis check` fails on them, so a file that passes one passes both.
//!
//! The sidecar tries routes most specific first (exact path, then longer
//! prefix, then methods only; ties in the order written) and the first match
//! wins: a route that an earlier-tried route covers entirely never runs.

use std::cmp::Reverse;

use crate::crd::{ResiliencePolicySpec, RouteMatch};
use crate::route::is_under;

/// Problems found: `errors` make the policy invalid, `warnings` are shown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Findings {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// Checks the routes of a policy.
pub fn validate_policy(spec: &ResiliencePolicySpec) -> Findings {
    let mut f = Findings::default();
    let matches: Vec<&RouteMatch> = spec.routes.iter().map(|r| &r.route_match).collect();

    let mut never = vec![false; matches.len()];
    for (i, m) in matches.iter().enumerate() {
        if let (Some(path), Some(prefix)) = (&m.path, &m.path_prefix) {
            if !path.starts_with(prefix.as_str()) {
                never[i] = true;
                f.errors.push(format!(
                    "routes[{i}].match: path {path:?} is not under pathPrefix {prefix:?}, so this route can never match; drop one of them"
                ));
            } else if !is_under(path, prefix) {
                never[i] = true;
                f.errors.push(format!(
                    "routes[{i}].match: path {path:?} only starts with pathPrefix {prefix:?} as text, not as a path segment, so this route can never match; drop pathPrefix"
                ));
            } else {
                f.warnings.push(format!(
                    "routes[{i}].match: pathPrefix {prefix:?} adds nothing to path {path:?}; drop pathPrefix"
                ));
            }
        }
        let mut methods = m.methods.clone();
        methods.sort();
        methods.dedup();
        if methods.len() != m.methods.len() {
            f.warnings
                .push(format!("routes[{i}].match.methods lists a method twice"));
        }
    }

    let mut duplicate = vec![false; matches.len()];
    for j in 0..matches.len() {
        if let Some(i) = (0..j).find(|&i| same(matches[i], matches[j])) {
            duplicate[j] = true;
            f.errors.push(format!(
                "routes[{j}].match duplicates routes[{i}].match {}: only the first is used; merge them",
                matches[j].describe()
            ));
        }
    }

    // The order the sidecar tries routes in.
    let mut order: Vec<usize> = (0..matches.len()).collect();
    order.sort_by_key(|&i| Reverse(matches[i].specificity()));
    for (pos, &j) in order.iter().enumerate() {
        if never[j] || duplicate[j] {
            continue;
        }
        let shadow = order[..pos]
            .iter()
            .copied()
            .find(|&i| !never[i] && matches[i].covers(matches[j]));
        if let Some(i) = shadow {
            f.errors.push(format!(
                "routes[{j}] {} can never match: routes[{i}] {} is tried first and matches every request it would; remove routes[{j}] or narrow routes[{i}]",
                matches[j].describe(),
                matches[i].describe()
            ));
        }
    }
    f
}

fn same(a: &RouteMatch, b: &RouteMatch) -> bool {
    let norm = |m: &RouteMatch| {
        let mut methods = m.methods.clone();
        methods.sort();
        methods.dedup();
        (m.path.clone(), m.path_prefix.clone(), methods)
    };
    norm(a) == norm(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Method, RouteSpec};

    fn route(prefix: Option<&str>, path: Option<&str>, methods: &[Method]) -> RouteSpec {
        RouteSpec {
            route_match: RouteMatch {
                path_prefix: prefix.map(Into::into),
                path: path.map(Into::into),
                methods: methods.to_vec(),
            },
            ..Default::default()
        }
    }

    fn spec(routes: Vec<RouteSpec>) -> ResiliencePolicySpec {
        ResiliencePolicySpec {
            routes,
            ..Default::default()
        }
    }

    #[test]
    fn disjoint_and_nested_routes_pass() {
        let f = validate_policy(&spec(vec![
            route(Some("/api/v1/payments"), None, &[Method::Post]),
            route(Some("/api"), None, &[]),
            route(None, Some("/api/v1/payments/refund"), &[]),
            route(None, None, &[Method::Get]),
        ]));
        assert_eq!(f, Findings::default());
    }

    #[test]
    fn duplicates_are_errors() {
        let f = validate_policy(&spec(vec![
            route(Some("/a"), None, &[Method::Get, Method::Post]),
            route(Some("/a"), None, &[Method::Post, Method::Get]),
        ]));
        assert_eq!(f.errors.len(), 1, "{f:?}");
        assert!(f.errors[0].contains("routes[1].match duplicates routes[0]"));
    }

    #[test]
    fn a_broader_route_tried_first_shadows() {
        // Same specificity (prefix of the same length, both with methods): the first written wins.
        let f = validate_policy(&spec(vec![
            route(Some("/api"), None, &[Method::Get, Method::Post]),
            route(Some("/api"), None, &[Method::Post]),
        ]));
        assert_eq!(f.errors.len(), 1, "{f:?}");
        assert!(f.errors[0].contains("routes[1]") && f.errors[0].contains("can never match"));

        // An exact path with and without a redundant prefix.
        let f = validate_policy(&spec(vec![
            route(None, Some("/x"), &[]),
            route(Some("/"), Some("/x"), &[]),
        ]));
        assert!(f.errors.iter().any(|e| e.contains("routes[1]")), "{f:?}");
    }

    #[test]
    fn a_more_specific_route_written_later_is_not_shadowed() {
        // The longer prefix is tried first, whatever the order written.
        let f = validate_policy(&spec(vec![
            route(Some("/api"), None, &[]),
            route(Some("/api/v1"), None, &[]),
        ]));
        assert!(f.errors.is_empty(), "{f:?}");
    }

    #[test]
    fn contradictory_path_and_prefix() {
        let f = validate_policy(&spec(vec![route(Some("/a"), Some("/b"), &[])]));
        assert_eq!(f.errors.len(), 1);
        assert!(f.errors[0].contains("can never match"));
        // A text prefix that is not a segment prefix: the sidecar never matches it either.
        let f = validate_policy(&spec(vec![route(Some("/ap"), Some("/api"), &[])]));
        assert_eq!(f.errors.len(), 1, "{f:?}");
        assert!(
            !RouteMatch {
                path_prefix: Some("/ap".into()),
                path: Some("/api".into()),
                methods: vec![],
            }
            .matches("GET", "/api")
        );
        let f = validate_policy(&spec(vec![route(Some("/a"), Some("/a/b"), &[])]));
        assert!(f.errors.is_empty());
        assert_eq!(f.warnings.len(), 1);
    }

    #[test]
    fn segment_prefixes_are_not_confused() {
        let f = validate_policy(&spec(vec![
            route(Some("/api"), None, &[]),
            route(None, Some("/apix"), &[]),
        ]));
        assert!(f.errors.is_empty(), "{f:?}");
    }
}
