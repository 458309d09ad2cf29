//! Request extractors whose rejections are problem details naming the field:
//! a JSON body and a query string, read with `serde_path_to_error` so a wrong
//! type deep in a body says where it is.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, Uri, header};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::problem::{FieldError, Problem};

/// The largest body a service accepts unless it says otherwise.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// A JSON request body. Rejections: 415 without a JSON content type, 413
/// over the body limit (axum's `DefaultBodyLimit`), 400 naming the field.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE)
                .with_detail("the body must be JSON (Content-Type: application/json)")
                .with_errors(vec![FieldError::new(
                    "Content-Type",
                    "expected application/json",
                )]));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(StatusCode::PAYLOAD_TOO_LARGE)
                    .with_detail("the request body is too large")
                    .with_errors(vec![FieldError::new("body", "exceeds the size limit")])
            } else {
                Problem::new(StatusCode::BAD_REQUEST).with_detail(rejection.body_text())
            }
        })?;
        parse_json(&bytes).map(Json)
    }
}

fn is_json(content_type: Option<&header::HeaderValue>) -> bool {
    let Some(ct) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Deserializes JSON, naming the field of the first error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.inner();
        if inner.is_syntax() || inner.is_eof() {
            Problem::field("body", format!("invalid JSON: {inner}"))
        } else {
            let message = strip_position(&inner.to_string());
            Problem::validation(vec![FieldError::new(
                field_name(&e.path().to_string(), &message),
                message,
            )])
        }
    })?;
    de.end()
        .map_err(|e| Problem::field("body", format!("invalid JSON: {e}")))?;
    Ok(value)
}

/// The query string. Rejection: 400 naming the parameter.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        parse_query(parts.uri.query().unwrap_or("")).map(Query)
    }
}

/// Path parameters. Rejection: 400 as a problem.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Path(v))
            .map_err(|rejection| Problem::field("path", rejection.body_text()))
    }
}

/// Deserializes a query string, naming the parameter of the first error.
pub fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, Problem> {
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let message = e.inner().to_string();
        let field = field_name(&e.path().to_string(), &message);
        let message = if message.contains("invalid digit") || message.contains("invalid float") {
            "must be a number".to_string()
        } else {
            message
        };
        Problem::validation(vec![FieldError::new(field, message)])
    })
}

/// serde reports a missing field at its parent's path (an unknown one at
/// its own); the field's name is in the message, between backticks.
fn field_name(path: &str, message: &str) -> String {
    let named = ["missing field `", "unknown field `", "duplicate field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next())
        .filter(|name| path != *name && !path.ends_with(&format!(".{name}")));
    match (path, named) {
        (".", Some(name)) => name.to_string(),
        (parent, Some(name)) => format!("{parent}.{name}"),
        (".", None) => "body".to_string(),
        (path, None) => path.to_string(),
    }
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// The router's fallback: 404 as a problem.
pub async fn not_found(uri: Uri) -> Problem {
    Problem::new(StatusCode::NOT_FOUND)
        .with_detail(format!("no resource at {}", uri.path()))
        .with_instance(uri.path().to_string())
}

/// The router's fallback for a known path and an unsupported method.
pub async fn method_not_allowed(method: Method, uri: Uri) -> Problem {
    Problem::new(StatusCode::METHOD_NOT_ALLOWED)
        .with_detail(format!("{method} is not supported on {}", uri.path()))
        .with_instance(uri.path().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Order {
        user_id: String,
        items: Vec<Item>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Item {
        product_id: String,
        quantity: u32,
    }

    fn field_of(p: &Problem) -> &str {
        assert_eq!(p.status, StatusCode::BAD_REQUEST);
        &p.errors[0].field
    }

    #[test]
    fn json_errors_name_the_field() {
        let wrong_type = br#"{"userId":"u","items":[{"productId":"p","quantity":"two"}]}"#;
        let p = parse_json::<Order>(wrong_type).unwrap_err();
        assert_eq!(field_of(&p), "items[0].quantity");
        assert!(
            p.errors[0].message.contains("expected u32"),
            "{:?}",
            p.errors
        );

        let missing = br#"{"items":[]}"#;
        assert_eq!(
            field_of(&parse_json::<Order>(missing).unwrap_err()),
            "userId"
        );
        let missing_deep = br#"{"userId":"u","items":[{"quantity":1}]}"#;
        assert_eq!(
            field_of(&parse_json::<Order>(missing_deep).unwrap_err()),
            "items[0].productId"
        );
        let unknown = br#"{"userId":"u","items":[],"admin":true}"#;
        assert_eq!(
            field_of(&parse_json::<Order>(unknown).unwrap_err()),
            "admin"
        );
        let negative = br#"{"userId":"u","items":[{"productId":"p","quantity":-1}]}"#;
        assert_eq!(
            field_of(&parse_json::<Order>(negative).unwrap_err()),
            "items[0].quantity"
        );
    }

    #[test]
    fn broken_json_is_about_the_body() {
        for body in [
            &b"{"[..],
            b"not json",
            b"",
            br#"{"userId":"u","items":[]} trailing"#,
        ] {
            let p = parse_json::<Order>(body).unwrap_err();
            assert_eq!(field_of(&p), "body", "{}", String::from_utf8_lossy(body));
            assert!(
                p.errors[0].message.starts_with("invalid JSON"),
                "{:?}",
                p.errors
            );
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Page {
        page: Option<u32>,
        min_price: Option<f64>,
    }

    #[test]
    fn query_errors_name_the_parameter() {
        let p = parse_query::<Page>("page=abc").unwrap_err();
        assert_eq!(field_of(&p), "page");
        assert_eq!(p.errors[0].message, "must be a number");
        assert_eq!(
            field_of(&parse_query::<Page>("minPrice=x").unwrap_err()),
            "minPrice"
        );
        assert_eq!(
            field_of(&parse_query::<Page>("page=-1").unwrap_err()),
            "page"
        );
        assert_eq!(
            field_of(&parse_query::<Page>("pgae=1").unwrap_err()),
            "pgae"
        );
        let ok = parse_query::<Page>("page=2&minPrice=9.5").unwrap();
        assert_eq!((ok.page, ok.min_price), (Some(2), Some(9.5)));
    }

    #[test]
    fn json_content_types() {
        let v = |s: &'static str| Some(header::HeaderValue::from_static(s));
        assert!(is_json(v("application/json").as_ref()));
        assert!(is_json(v("application/json; charset=utf-8").as_ref()));
        assert!(is_json(v("application/merge-patch+json").as_ref()));
        assert!(!is_json(v("text/plain").as_ref()));
        assert!(!is_json(None));
    }
}
