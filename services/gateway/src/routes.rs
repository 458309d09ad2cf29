//! Which service serves a public path, under which path, and whether it
//! needs a token. Pure functions, so the table is tested on its own.

use axum::http::Method;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    Users,
    Products,
    Orders,
    Payments,
    Notifications,
}

impl Upstream {
    pub fn name(self) -> &'static str {
        match self {
            Upstream::Users => "users",
            Upstream::Products => "products",
            Upstream::Orders => "orders",
            Upstream::Payments => "payments",
            Upstream::Notifications => "notifications",
        }
    }
}

/// A public prefix and where it goes.
#[derive(Debug, PartialEq, Eq)]
pub struct Route {
    pub prefix: &'static str,
    pub upstream: Upstream,
    /// Replaces `prefix` in the path sent upstream.
    pub target: &'static str,
}

pub const ROUTES: [Route; 6] = [
    Route {
        prefix: "/api/users",
        upstream: Upstream::Users,
        target: "/api/v1/users",
    },
    Route {
        prefix: "/api/auth",
        upstream: Upstream::Users,
        target: "/api/v1/auth",
    },
    Route {
        prefix: "/api/products",
        upstream: Upstream::Products,
        target: "/api/v1/products",
    },
    Route {
        prefix: "/api/orders",
        upstream: Upstream::Orders,
        target: "/api/v1/orders",
    },
    Route {
        prefix: "/api/payments",
        upstream: Upstream::Payments,
        target: "/api/v1/payments",
    },
    Route {
        prefix: "/api/notifications",
        upstream: Upstream::Notifications,
        target: "/api/v1/notifications",
    },
];

/// The route of `path` and the path to send upstream. Whole segments only
/// (`/api/usersX` is not `/api/users`), and no `.`/`..` segments.
pub fn resolve(path: &str) -> Option<(&'static Route, String)> {
    if path.split('/').any(|s| s == ".." || s == ".") {
        return None;
    }
    ROUTES.iter().find_map(|route| {
        let rest = path.strip_prefix(route.prefix)?;
        (rest.is_empty() || rest.starts_with('/'))
            .then(|| (route, format!("{}{rest}", route.target)))
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    /// A valid bearer token is required.
    Token,
}

/// Reading products, registering and logging in are public; everything
/// else under users, orders, payments and notifications, and changing
/// products, needs a token.
pub fn access(method: &Method, path: &str) -> Access {
    let Some((route, _)) = resolve(path) else {
        return Access::Public;
    };
    let read = method == Method::GET || method == Method::HEAD;
    match route.prefix {
        "/api/auth" => Access::Public,
        "/api/products" if read => Access::Public,
        "/api/users"
            if method == Method::POST && (path == "/api/users" || path == "/api/users/") =>
        {
            Access::Public
        }
        _ => Access::Token,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_by_whole_segments() {
        let r = |p| resolve(p).map(|(route, path)| (route.upstream, path));
        assert_eq!(
            r("/api/users"),
            Some((Upstream::Users, "/api/v1/users".into()))
        );
        assert_eq!(
            r("/api/users/usr_1/orders"),
            Some((Upstream::Users, "/api/v1/users/usr_1/orders".into()))
        );
        assert_eq!(
            r("/api/auth/login"),
            Some((Upstream::Users, "/api/v1/auth/login".into()))
        );
        assert_eq!(
            r("/api/products/prod_001"),
            Some((Upstream::Products, "/api/v1/products/prod_001".into()))
        );
        assert_eq!(
            r("/api/orders/ord_1/status"),
            Some((Upstream::Orders, "/api/v1/orders/ord_1/status".into()))
        );
        assert_eq!(
            r("/api/payments"),
            Some((Upstream::Payments, "/api/v1/payments".into()))
        );
        assert_eq!(
            r("/api/notifications?userId=u"),
            Some((
                Upstream::Notifications,
                "/api/v1/notifications?userId=u".into()
            ))
        );
        assert_eq!(r("/api/usersX"), None);
        assert_eq!(r("/api/v1/users"), None);
        assert_eq!(r("/health/ready"), None);
        assert_eq!(r("/api/products/../users/usr_1"), None);
    }

    #[test]
    fn who_needs_a_token() {
        use Access::*;
        let a = |m: Method, p| access(&m, p);
        assert_eq!(a(Method::GET, "/api/products"), Public);
        assert_eq!(a(Method::GET, "/api/products/prod_001/inventory"), Public);
        assert_eq!(a(Method::HEAD, "/api/products/prod_001"), Public);
        assert_eq!(a(Method::PUT, "/api/products/prod_001/inventory"), Token);
        assert_eq!(a(Method::POST, "/api/auth/login"), Public);
        assert_eq!(a(Method::POST, "/api/users"), Public);
        assert_eq!(a(Method::GET, "/api/users"), Token);
        assert_eq!(a(Method::GET, "/api/users/usr_1"), Token);
        assert_eq!(a(Method::POST, "/api/users/usr_1"), Token);
        assert_eq!(a(Method::GET, "/api/orders/ord_1"), Token);
        assert_eq!(
            a(Method::GET, "/api/orders/ord_1/with-product-details"),
            Token
        );
        assert_eq!(a(Method::POST, "/api/payments"), Token);
        assert_eq!(a(Method::GET, "/api/notifications"), Token);
        assert_eq!(a(Method::GET, "/health/ready"), Public);
    }
}
