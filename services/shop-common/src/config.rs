//! Settings read from the environment into types. A service reads its whole
//! configuration once at start, and every error names the variable at fault,
//! so a bad deployment fails at once with a message that says what to fix.

use std::collections::HashMap;
use std::fmt::Display;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

/// A bad or missing setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{var} is required but not set")]
    Missing { var: String },
    #[error("{var}={value:?} is invalid: {reason}")]
    Invalid {
        var: String,
        value: String,
        reason: String,
    },
}

impl ConfigError {
    /// The variable at fault.
    pub fn var(&self) -> &str {
        match self {
            ConfigError::Missing { var } | ConfigError::Invalid { var, .. } => var,
        }
    }

    pub fn invalid(var: &str, value: &str, reason: impl Display) -> Self {
        ConfigError::Invalid {
            var: var.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// A snapshot of environment variables. Empty values count as unset, as a
/// Kubernetes `value: ""` usually means "not configured".
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    /// The process environment.
    pub fn from_process() -> Self {
        Self::from_pairs(std::env::vars())
    }

    /// Given variables only (tests, embedding).
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Env {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The raw value, if set and not empty.
    pub fn get(&self, var: &str) -> Option<&str> {
        self.vars
            .get(var)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The first of several spellings that is set (e.g. `HTTP_PROXY`, `http_proxy`).
    pub fn first_of(&self, vars: &[&str]) -> Option<&str> {
        vars.iter().find_map(|v| self.get(v))
    }

    pub fn optional<T>(&self, var: &str) -> Result<Option<T>, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.get(var)
            .map(|raw| {
                raw.trim()
                    .parse()
                    .map_err(|e| ConfigError::invalid(var, raw, e))
            })
            .transpose()
    }

    pub fn required<T>(&self, var: &str) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.optional(var)?.ok_or_else(|| ConfigError::Missing {
            var: var.to_string(),
        })
    }

    pub fn or<T>(&self, var: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        Ok(self.optional(var)?.unwrap_or(default))
    }

    /// A duration such as `250ms`, `2s`, `1m`.
    pub fn duration_or(&self, var: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(raw) => {
                humantime::parse_duration(raw.trim()).map_err(|e| ConfigError::invalid(var, raw, e))
            }
        }
    }

    /// A secret of at least `min_len` bytes.
    pub fn secret(&self, var: &str, min_len: usize) -> Result<String, ConfigError> {
        let value: String = self.required(var)?;
        if value.len() < min_len {
            return Err(ConfigError::Invalid {
                var: var.to_string(),
                value: "(hidden)".into(),
                reason: format!("must be at least {min_len} bytes long"),
            });
        }
        Ok(value)
    }
}

/// Where a service listens and how long it drains on shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// `HOST` (default 127.0.0.1: in the mesh the sidecar is the only way in)
    /// and `PORT`.
    pub listen: SocketAddr,
    /// `SHUTDOWN_GRACE`: how long in-flight requests may take after SIGTERM.
    pub shutdown_grace: Duration,
}

impl ServerSettings {
    pub fn from_env(env: &Env, default_port: u16) -> Result<Self, ConfigError> {
        let host: IpAddr = env.or("HOST", IpAddr::V4(Ipv4Addr::LOCALHOST))?;
        let port: u16 = env.or("PORT", default_port)?;
        Ok(ServerSettings {
            listen: SocketAddr::new(host, port),
            shutdown_grace: env.duration_or("SHUTDOWN_GRACE", Duration::from_secs(20))?,
        })
    }
}

/// How outbound calls leave the process: the settings a sidecar injects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxySettings {
    /// `HTTP_PROXY` (or `http_proxy`): where plain-HTTP calls go.
    pub http_proxy: Option<String>,
    /// `NO_PROXY` (or `no_proxy`): hosts called directly.
    pub no_proxy: Option<String>,
    /// `TRELLIS_OUTBOUND`: the sidecar's outbound `host:port`, for gRPC.
    pub outbound: Option<String>,
}

impl ProxySettings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let http_proxy = env
            .first_of(&["HTTP_PROXY", "http_proxy"])
            .map(str::to_string);
        if let Some(p) = &http_proxy
            && p.parse::<http::Uri>()
                .map(|u| u.host().is_none())
                .unwrap_or(true)
        {
            return Err(ConfigError::invalid("HTTP_PROXY", p, "not a URL"));
        }
        let outbound = env.get("TRELLIS_OUTBOUND").map(str::to_string);
        if let Some(o) = &outbound
            && o.parse::<http::uri::Authority>().is_err()
        {
            return Err(ConfigError::invalid(
                "TRELLIS_OUTBOUND",
                o,
                "expected host:port",
            ));
        }
        Ok(ProxySettings {
            http_proxy,
            no_proxy: env.first_of(&["NO_PROXY", "no_proxy"]).map(str::to_string),
            outbound,
        })
    }
}

/// The database: `DATABASE_URL` (`sqlite://…` or `postgres://…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseSettings {
    pub url: String,
    /// `DATABASE_MAX_CONNECTIONS`.
    pub max_connections: u32,
    /// `DATABASE_STARTUP_TIMEOUT`: how long to keep trying at start.
    pub startup_timeout: Duration,
}

impl DatabaseSettings {
    /// Defaults to a SQLite file named after the service in the working directory.
    pub fn from_env(env: &Env, service: &str) -> Result<Self, ConfigError> {
        let url = env
            .get("DATABASE_URL")
            .map(str::to_string)
            .unwrap_or_else(|| format!("sqlite://{service}.db"));
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(ConfigError::invalid(
                "DATABASE_URL",
                &redact_url(&url),
                "expected sqlite://… or postgres://…",
            ));
        }
        Ok(DatabaseSettings {
            url,
            max_connections: env.or("DATABASE_MAX_CONNECTIONS", 10)?,
            startup_timeout: env
                .duration_or("DATABASE_STARTUP_TIMEOUT", Duration::from_secs(30))?,
        })
    }

    pub fn new(url: impl Into<String>) -> Self {
        DatabaseSettings {
            url: url.into(),
            max_connections: 10,
            startup_timeout: Duration::from_secs(30),
        }
    }
}

/// The URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_variable() {
        let env = Env::from_pairs([("PORT", "eighty"), ("SHUTDOWN_GRACE", "soon")]);
        let err = ServerSettings::from_env(&env, 8080).unwrap_err();
        assert_eq!(err.var(), "PORT");
        assert!(
            err.to_string().starts_with("PORT=\"eighty\" is invalid"),
            "{err}"
        );

        let env = Env::from_pairs([("SHUTDOWN_GRACE", "soon")]);
        let err = ServerSettings::from_env(&env, 8080).unwrap_err();
        assert_eq!(err.var(), "SHUTDOWN_GRACE");

        let err = Env::default().secret("JWT_SECRET", 16).unwrap_err();
        assert_eq!(
            err,
            ConfigError::Missing {
                var: "JWT_SECRET".into()
            }
        );
        let err = Env::from_pairs([("JWT_SECRET", "short")])
            .secret("JWT_SECRET", 16)
            .unwrap_err();
        assert!(
            !err.to_string().contains("short"),
            "secrets stay out of messages: {err}"
        );
    }

    #[test]
    fn defaults_and_parsing() {
        let s = ServerSettings::from_env(&Env::default(), 8082).unwrap();
        assert_eq!(s.listen, "127.0.0.1:8082".parse().unwrap());
        assert_eq!(s.shutdown_grace, Duration::from_secs(20));
        let env = Env::from_pairs([
            ("HOST", "0.0.0.0"),
            ("PORT", "9000"),
            ("SHUTDOWN_GRACE", "250ms"),
        ]);
        let s = ServerSettings::from_env(&env, 8082).unwrap();
        assert_eq!(s.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(s.shutdown_grace, Duration::from_millis(250));
        // Empty means unset.
        let env = Env::from_pairs([("PORT", "")]);
        assert_eq!(ServerSettings::from_env(&env, 1).unwrap().listen.port(), 1);
    }

    #[test]
    fn proxy_settings_read_both_spellings_and_check_values() {
        let env = Env::from_pairs([
            ("http_proxy", "http://127.0.0.1:4140"),
            ("no_proxy", "localhost,127.0.0.1"),
            ("TRELLIS_OUTBOUND", "127.0.0.1:4140"),
        ]);
        let p = ProxySettings::from_env(&env).unwrap();
        assert_eq!(p.http_proxy.as_deref(), Some("http://127.0.0.1:4140"));
        assert_eq!(p.no_proxy.as_deref(), Some("localhost,127.0.0.1"));
        assert_eq!(p.outbound.as_deref(), Some("127.0.0.1:4140"));
        let err =
            ProxySettings::from_env(&Env::from_pairs([("TRELLIS_OUTBOUND", "a b")])).unwrap_err();
        assert_eq!(err.var(), "TRELLIS_OUTBOUND");
        let err = ProxySettings::from_env(&Env::from_pairs([("HTTP_PROXY", "::")])).unwrap_err();
        assert_eq!(err.var(), "HTTP_PROXY");
    }

    #[test]
    fn database_url_is_checked_and_redacted() {
        let d = DatabaseSettings::from_env(&Env::default(), "users").unwrap();
        assert_eq!(d.url, "sqlite://users.db");
        let err = DatabaseSettings::from_env(
            &Env::from_pairs([("DATABASE_URL", "mysql://u:hunter2@db/x")]),
            "users",
        )
        .unwrap_err();
        assert_eq!(err.var(), "DATABASE_URL");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert_eq!(
            redact_url("postgres://shop:pw@db:5432/x"),
            "postgres://shop:***@db:5432/x"
        );
        assert_eq!(redact_url("sqlite://a.db"), "sqlite://a.db");
    }
}
