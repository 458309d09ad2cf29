//! The database pool: SQLite (a file) or Postgres, chosen by `DATABASE_URL`,
//! behind sqlx's `Any` driver so one set of queries serves both. Queries are
//! checked at run time (no database needed to build) and written in the
//! dialect both share: `$1` placeholders, `BIGINT`/`TEXT` columns, amounts in
//! cents, times in Unix milliseconds.

use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, ConnectOptions, Executor};

use crate::config::{DatabaseSettings, redact_url};
use crate::health::Check;

pub type Db = AnyPool;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("migrating database {url}: {source}")]
    Migrate {
        url: String,
        source: sqlx::migrate::MigrateError,
    },
}

/// Which database a pool talks to, where their SQL differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of(url: &str) -> Backend {
        if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        }
    }
}

/// Connects and runs the service's embedded migrations, retrying until
/// `startup_timeout` while the database is not yet reachable (it may start
/// after the service). A SQLite file is created if missing.
pub async fn connect(
    settings: &DatabaseSettings,
    migrator: &'static Migrator,
) -> Result<Db, DbError> {
    sqlx::any::install_default_drivers();
    let url = redact_url(&settings.url);
    let deadline = tokio::time::Instant::now() + settings.startup_timeout;
    let mut delay = Duration::from_millis(100);
    loop {
        // One attempt may not outlast the whole allowance.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let attempt = left.clamp(Duration::from_millis(100), Duration::from_secs(5));
        let tried = tokio::time::timeout(attempt, try_connect(settings))
            .await
            .unwrap_or(Err(sqlx::Error::PoolTimedOut));
        match tried {
            Ok(pool) => {
                migrator
                    .run(&pool)
                    .await
                    .map_err(|source| DbError::Migrate {
                        url: url.clone(),
                        source,
                    })?;
                tracing::info!(database = %url, "database ready");
                return Ok(pool);
            }
            Err(source) if tokio::time::Instant::now() + delay < deadline && transient(&source) => {
                tracing::warn!(database = %url, error = %source, retry_in = ?delay, "database not reachable yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(source) => return Err(DbError::Connect { url, source }),
        }
    }
}

fn transient(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut)
        || e.as_database_error()
            .and_then(|d| d.code())
            // Postgres: the database system is starting up / shutting down.
            .is_some_and(|c| c == "57P03")
}

async fn try_connect(settings: &DatabaseSettings) -> Result<Db, sqlx::Error> {
    let backend = Backend::of(&settings.url);
    let url = match backend {
        Backend::Sqlite if !settings.url.contains("mode=") => {
            let sep = if settings.url.contains('?') { '&' } else { '?' };
            format!("{}{sep}mode=rwc", settings.url)
        }
        _ => settings.url.clone(),
    };
    let options: AnyConnectOptions = url
        .parse::<AnyConnectOptions>()?
        .disable_statement_logging();
    let pool = AnyPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if backend == Backend::Sqlite {
                    // WAL lets readers work while one writer writes; writers
                    // wait for each other instead of failing at once.
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA busy_timeout = 5000").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                }
                Ok(())
            })
        })
        .connect_with(options)
        .await?;
    // Fail now, not on the first request, if the server refuses us.
    pool.execute("SELECT 1").await?;
    Ok(pool)
}

/// Whether the pool can still run a query.
pub struct DatabaseCheck(pub Db);

impl Check for DatabaseCheck {
    fn name(&self) -> &str {
        "database"
    }

    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.0
                .execute("SELECT 1")
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}

/// Milliseconds since the Unix epoch, as stored.
pub fn now_millis() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000
}

/// A stored time as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(millis: i64) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

/// Whether an error is a unique-constraint violation (a duplicate key).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_746_891_000_123), "2025-05-10T15:30:00.123Z");
    }

    #[test]
    fn backend_from_url() {
        assert_eq!(Backend::of("sqlite://x.db"), Backend::Sqlite);
        assert_eq!(Backend::of("sqlite::memory:"), Backend::Sqlite);
        assert_eq!(Backend::of("postgres://u@h/db"), Backend::Postgres);
    }
}
