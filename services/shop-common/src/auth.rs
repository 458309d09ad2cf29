//! Access tokens: HS256 JWTs with `sub` (the user id) and `exp`, issued by
//! users at login and verified by the gateway with the same `JWT_SECRET`.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid: {0}")]
    Invalid(String),
}

/// Signs and verifies tokens with one shared secret.
#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(HS256)")
    }
}

impl Tokens {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        // Clocks of the issuing and verifying pods may differ a little.
        validation.leeway = 5;
        Tokens {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// A token for `sub` valid for `ttl` from now.
    pub fn issue(&self, sub: &str, ttl: Duration) -> String {
        let now = unix_now();
        self.sign(&Claims {
            sub: sub.to_string(),
            iat: now,
            exp: now + ttl.as_secs(),
        })
    }

    /// Signs arbitrary claims (tests make expired tokens with it).
    pub fn sign(&self, claims: &Claims) -> String {
        // HMAC signing of a serializable struct cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .unwrap_or_default()
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(e.to_string()),
            })
    }
}

/// The header the gateway sets to the user id of a verified token (any
/// such header a client sent is removed first).
pub const USER_ID_HEADER: &str = "x-user-id";

/// The user the gateway authenticated, if the request came through it;
/// `None` for calls from inside the shop.
pub fn caller(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(USER_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_then_verify() {
        let tokens = Tokens::new(b"0123456789abcdef0123456789abcdef");
        let token = tokens.issue("usr_1", Duration::from_secs(60));
        let claims = tokens.verify(&token).unwrap();
        assert_eq!(claims.sub, "usr_1");
        assert!(claims.exp >= unix_now() + 59);
    }

    #[test]
    fn rejects_expired_forged_and_garbage() {
        let tokens = Tokens::new(b"0123456789abcdef0123456789abcdef");
        let expired = tokens.sign(&Claims {
            sub: "usr_1".into(),
            iat: unix_now() - 7200,
            exp: unix_now() - 3600,
        });
        assert_eq!(tokens.verify(&expired), Err(TokenError::Expired));

        let other = Tokens::new(b"another secret, just as long....");
        let forged = other.issue("usr_1", Duration::from_secs(60));
        assert!(matches!(
            tokens.verify(&forged),
            Err(TokenError::Invalid(_))
        ));

        assert!(matches!(
            tokens.verify("a.b.c"),
            Err(TokenError::Invalid(_))
        ));
        // alg=none must never pass.
        let none =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1c3JfMSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert!(matches!(tokens.verify(none), Err(TokenError::Invalid(_))));
    }
}
