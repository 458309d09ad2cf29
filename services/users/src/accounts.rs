//! Accounts in the database.

use shop_common::db::{Db, is_unique_violation, now_millis};
use sqlx::Row;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: String,
    pub email: String,
    pub name: String,
    pub password_hash: String,
    pub created_at: i64,
}

impl Account {
    fn from_row(row: &sqlx::any::AnyRow) -> Result<Account, sqlx::Error> {
        Ok(Account {
            id: row.try_get("id")?,
            email: row.try_get("email")?,
            name: row.try_get("name")?,
            password_hash: row.try_get("password_hash")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("the email address is already registered")]
    DuplicateEmail,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

#[derive(Clone)]
pub struct Accounts {
    db: Db,
}

impl Accounts {
    pub fn new(db: Db) -> Self {
        Accounts { db }
    }

    /// Inserts a new account; the unique index decides duplicates, so two
    /// concurrent registrations of one address cannot both succeed.
    pub async fn create(
        &self,
        email: &str,
        name: &str,
        password_hash: &str,
    ) -> Result<Account, CreateError> {
        let account = Account {
            id: format!("usr_{}", uuid::Uuid::now_v7().simple()),
            email: email.to_string(),
            name: name.to_string(),
            password_hash: password_hash.to_string(),
            created_at: now_millis(),
        };
        sqlx::query(
            "INSERT INTO users (id, email, name, password_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(account.id.clone())
        .bind(account.email.clone())
        .bind(account.name.clone())
        .bind(account.password_hash.clone())
        .bind(account.created_at)
        .execute(&self.db)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                CreateError::DuplicateEmail
            } else {
                CreateError::Db(e)
            }
        })?;
        Ok(account)
    }

    pub async fn by_id(&self, id: &str) -> Result<Option<Account>, sqlx::Error> {
        sqlx::query("SELECT id, email, name, password_hash, created_at FROM users WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.db)
            .await?
            .as_ref()
            .map(Account::from_row)
            .transpose()
    }

    pub async fn by_email(&self, email: &str) -> Result<Option<Account>, sqlx::Error> {
        sqlx::query("SELECT id, email, name, password_hash, created_at FROM users WHERE email = $1")
            .bind(email.to_string())
            .fetch_optional(&self.db)
            .await?
            .as_ref()
            .map(Account::from_row)
            .transpose()
    }

    pub async fn count(&self) -> Result<i64, sqlx::Error> {
        sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&self.db)
            .await?
            .try_get("n")
    }
}

/// The address as stored, or why it is not one: trimmed, lower-cased, one
/// `@`, a dotted domain, no spaces.
pub fn normalize_email(raw: &str) -> Result<String, &'static str> {
    let email = raw.trim().to_lowercase();
    if email.is_empty() {
        return Err("must not be empty");
    }
    if email.len() > 254 {
        return Err("must be at most 254 characters");
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err("is not an email address");
    };
    let domain_ok = domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && !domain.contains('@');
    if local.is_empty() || local.len() > 64 || !domain_ok || email.chars().any(char::is_whitespace)
    {
        return Err("is not an email address");
    }
    Ok(email)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(
            normalize_email("  Ada@Example.COM "),
            Ok("ada@example.com".into())
        );
        assert_eq!(
            normalize_email("a.b+c@mail.example.org"),
            Ok("a.b+c@mail.example.org".into())
        );
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "ada@@example.com",
            "a da@example.com",
            "ada@.example.com",
            "ada@example..com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?} accepted");
        }
    }
}
