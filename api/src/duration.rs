//! Durations written the Gateway API way: `250ms`, `2s`, `1m`, `1h30m`.
//!
//! The same grammar is enforced three times on purpose: by the CRD schema
//! (`pattern`, checked by the API server), by CEL (`duration()`, for
//! cross-field rules) and by [`Duration`]'s parser (for files read without an
//! API server, such as the proxy config and `trellis dev`).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The schema pattern; it also bounds the string, which keeps CEL cost estimates low.
pub const DURATION_PATTERN: &str = "^([0-9]{1,5}(h|m|s|ms)){1,4}$";

/// A non-negative duration with millisecond precision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(std::time::Duration);

/// Why a string is not a [`Duration`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a duration like 25ms, 2s, 1m or 1h30m")]
pub struct DurationError(pub String);

impl Duration {
    pub const ZERO: Duration = Duration(std::time::Duration::ZERO);

    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }

    pub const fn from_secs(s: u64) -> Self {
        Duration(std::time::Duration::from_secs(s))
    }

    pub const fn as_std(self) -> std::time::Duration {
        self.0
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DurationError(s.to_string());
        let bytes = s.as_bytes();
        let (mut i, mut parts, mut total_ms) = (0usize, 0usize, 0u64);
        if bytes.is_empty() {
            return Err(err());
        }
        while i < bytes.len() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            let digits = i - start;
            if digits == 0 || digits > 5 {
                return Err(err());
            }
            let n: u64 = s[start..i].parse().map_err(|_| err())?;
            let unit_ms = match (bytes.get(i), bytes.get(i + 1)) {
                (Some(b'm'), Some(b's')) => {
                    i += 2;
                    1
                }
                (Some(b'h'), _) => {
                    i += 1;
                    3_600_000
                }
                (Some(b'm'), _) => {
                    i += 1;
                    60_000
                }
                (Some(b's'), _) => {
                    i += 1;
                    1_000
                }
                _ => return Err(err()),
            };
            parts += 1;
            if parts > 4 {
                return Err(err());
            }
            total_ms += n * unit_ms;
        }
        Ok(Duration::from_millis(total_ms))
    }
}

impl fmt::Display for Duration {
    /// The shortest form that round-trips: `1h30m`, `2s`, `250ms`, `1s500ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis() as u64;
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
            if ms >= size {
                write!(f, "{}{}", ms / size, unit)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Accept any scalar so that `base: 25` reports a duration error, not a type error.
        let raw = serde_yaml::Value::deserialize(d)?;
        let text = match &raw {
            serde_yaml::Value::String(s) => s.clone(),
            serde_yaml::Value::Number(n) => n.to_string(),
            other => format!("{other:?}"),
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": 32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gateway_api_forms() {
        let ms = |s: &str| s.parse::<Duration>().map(|d| d.as_std().as_millis());
        assert_eq!(ms("250ms"), Ok(250));
        assert_eq!(ms("2s"), Ok(2_000));
        assert_eq!(ms("1m"), Ok(60_000));
        assert_eq!(ms("1h30m"), Ok(5_400_000));
        assert_eq!(ms("1s500ms"), Ok(1_500));
        assert_eq!(ms("0s"), Ok(0));
    }

    #[test]
    fn rejects_what_the_schema_pattern_rejects() {
        for bad in [
            "",
            "25",
            "1.5s",
            "2 seconds",
            "-1s",
            "s",
            "1d",
            "123456s",
            "1h1m1s1ms1h",
            "1sms",
        ] {
            assert!(
                bad.parse::<Duration>().is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn displays_shortest_round_trip() {
        for s in ["250ms", "2s", "1m", "1h30m", "1s500ms", "0s"] {
            let d: Duration = s.parse().unwrap();
            assert_eq!(d.to_string(), s);
        }
    }

    #[test]
    fn serde_error_says_what_a_duration_looks_like() {
        let err = serde_yaml::from_str::<Duration>("25")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"25\" is not a duration like 25ms"), "{err}");
    }
}
