//! The REST API: `/api/v1/users` and `/api/v1/auth/login`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use shop_common::Problem;
use shop_common::db::rfc3339;
use shop_common::extract::{self, Path};
use shop_common::problem::FieldError;
use shop_common::validate::Violations;
use utoipa::{OpenApi, ToSchema};

use crate::AppState;
use crate::accounts::{Account, CreateError, normalize_email};
use crate::passwords;

#[derive(OpenApi)]
#[openapi(
    info(title = "users", description = "The shop's accounts and logins."),
    paths(register, get_user, login, user_orders),
    components(schemas(
        NewUser,
        UserView,
        Credentials,
        TokenView,
        UserOrders,
        Problem,
        FieldError
    ))
)]
pub struct ApiDoc;

pub fn router(state: AppState) -> axum::Router {
    shop_common::server::router()
        .route("/api/v1/users", post(register))
        .route("/api/v1/users/{id}", get(get_user))
        .route("/api/v1/users/{id}/orders", get(user_orders))
        .route("/api/v1/auth/login", post(login))
        .with_state(state)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    email: String,
    /// 8 to 128 characters.
    password: String,
    /// 1 to 100 characters.
    name: String,
}

/// An account as the API shows it (never its password hash).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub name: String,
    pub created_at: String,
}

impl UserView {
    fn of(a: &Account) -> Self {
        UserView {
            id: a.id.clone(),
            email: a.email.clone(),
            name: a.name.clone(),
            created_at: rfc3339(a.created_at),
        }
    }
}

/// Register a user.
#[utoipa::path(post, path = "/api/v1/users", request_body = NewUser,
    responses((status = 201, body = UserView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn register(
    State(state): State<AppState>,
    extract::Json(new): extract::Json<NewUser>,
) -> Result<Response, Problem> {
    let mut violations = Violations::new();
    let email = normalize_email(&new.email)
        .map_err(|m| violations.add("email", m))
        .ok();
    violations
        .length("password", &new.password, 8, 128)
        .length("name", &new.name, 1, 100)
        .finish()?;
    let email = email.unwrap_or_default();
    let hash = passwords::hash(new.password)
        .await
        .map_err(|e| Problem::internal(&e))?;
    let account = state
        .accounts
        .create(&email, new.name.trim(), &hash)
        .await
        .map_err(|e| match e {
            CreateError::DuplicateEmail => {
                Problem::conflict("the email address is already registered")
                    .with_errors(vec![FieldError::new("email", "is already registered")])
            }
            CreateError::Db(e) => e.into(),
        })?;
    let mut response = (StatusCode::CREATED, Json(UserView::of(&account))).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/users/{}", account.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// A caller the gateway authenticated (`X-User-Id`) may read only its own
/// account; calls without the header come from inside the shop.
fn only_own(headers: &HeaderMap, id: &str) -> Result<(), Problem> {
    match headers.get("x-user-id").map(|v| v.to_str().unwrap_or("")) {
        Some(caller) if caller != id => Err(Problem::new(StatusCode::FORBIDDEN)
            .with_type("urn:shop:problem:forbidden")
            .with_detail("a user may only read their own account")),
        _ => Ok(()),
    }
}

async fn find(state: &AppState, id: &str) -> Result<Account, Problem> {
    state
        .accounts
        .by_id(id)
        .await?
        .ok_or_else(|| Problem::not_found("user", id))
}

/// One user.
#[utoipa::path(get, path = "/api/v1/users/{id}", params(("id" = String, Path)),
    responses((status = 200, body = UserView),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<UserView>, Problem> {
    only_own(&headers, &id)?;
    Ok(Json(UserView::of(&find(&state, &id).await?)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    email: String,
    password: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenView {
    /// An HS256 JWT with `sub` (the user id) and `exp`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: u64,
    pub user_id: String,
}

/// Log in: a token for the `Authorization: Bearer` header.
#[utoipa::path(post, path = "/api/v1/auth/login", request_body = Credentials,
    responses((status = 200, body = TokenView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json")))]
async fn login(
    State(state): State<AppState>,
    extract::Json(creds): extract::Json<Credentials>,
) -> Result<Json<TokenView>, Problem> {
    Violations::new()
        .length("email", &creds.email, 1, 254)
        .length("password", &creds.password, 1, 128)
        .finish()?;
    // Unknown address or wrong password: the same answer, in the same time.
    let account = match normalize_email(&creds.email) {
        Ok(email) => state.accounts.by_email(&email).await?,
        Err(_) => None,
    };
    let stored = account.as_ref().map(|a| a.password_hash.clone());
    if !passwords::verify(creds.password, stored).await {
        return Err(Problem::unauthorized("invalid email or password"));
    }
    let Some(account) = account else {
        return Err(Problem::unauthorized("invalid email or password"));
    };
    Ok(Json(TokenView {
        access_token: state.tokens.issue(&account.id, state.token_ttl),
        token_type: "Bearer".into(),
        expires_in: state.token_ttl.as_secs(),
        user_id: account.id,
    }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserOrders {
    pub user_id: String,
    /// As the orders service lists them.
    #[schema(value_type = Vec<Object>)]
    pub orders: Vec<serde_json::Value>,
}

/// A user's orders, from the orders service (503 when it cannot answer).
#[utoipa::path(get, path = "/api/v1/users/{id}/orders", params(("id" = String, Path)),
    responses((status = 200, body = UserOrders),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json")))]
async fn user_orders(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<UserOrders>, Problem> {
    only_own(&headers, &id)?;
    let account = find(&state, &id).await?;
    let orders = state
        .orders
        .of_user(&account.id, headers.get(header::AUTHORIZATION))
        .await?;
    Ok(Json(UserOrders {
        user_id: account.id,
        orders,
    }))
}
