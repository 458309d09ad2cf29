//! Bearer-token check in front of the routes that need one: a missing,
//! malformed, forged or expired token is a 401 problem. On success the
//! user id goes upstream as `X-User-Id`; a client's own `X-User-Id` is
//! always removed first, so upstreams can trust the header.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use shop_common::Problem;
use shop_common::auth::{TokenError, Tokens};

use crate::routes::{Access, access};

pub const USER_ID: HeaderName = HeaderName::from_static("x-user-id");

pub async fn authenticate(
    State(tokens): State<Tokens>,
    mut request: Request,
    next: Next,
) -> Response {
    request.headers_mut().remove(USER_ID);
    if access(request.method(), request.uri().path()) == Access::Token {
        let claims = match bearer(request.headers()) {
            None => Err(Problem::unauthorized("a bearer token is required")),
            Some(token) => tokens.verify(token).map_err(|e| match e {
                TokenError::Expired => Problem::unauthorized("the token has expired"),
                TokenError::Invalid(_) => Problem::unauthorized("the token is not valid"),
            }),
        };
        match claims.map(|c| HeaderValue::from_str(&c.sub)) {
            Ok(Ok(user)) => {
                request.headers_mut().insert(USER_ID, user);
            }
            Ok(Err(_)) => return Problem::unauthorized("the token is not valid").into_response(),
            Err(problem) => return problem.into_response(),
        }
    }
    next.run(request).await
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        let h = |v: &'static str| {
            let mut m = HeaderMap::new();
            m.insert(header::AUTHORIZATION, HeaderValue::from_static(v));
            m
        };
        assert_eq!(bearer(&h("Bearer abc.def.ghi")), Some("abc.def.ghi"));
        assert_eq!(bearer(&h("bearer abc")), Some("abc"));
        assert_eq!(bearer(&h("Basic dXNlcjpwYXNz")), None);
        assert_eq!(bearer(&h("Bearer ")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
