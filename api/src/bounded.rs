//! Numbers with a range, checked when parsed and published in the schema.
//!
//! A range lives in the type, so the CRD schema (`minimum`/`maximum`), the
//! YAML parser and the code that uses the value can never disagree.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An integer in `MIN..=MAX`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bounded<const MIN: u32, const MAX: u32>(u32);

/// Percent, 0..=100.
pub type Percent = Bounded<0, 100>;
/// Total tries of a request, the first included.
pub type Attempts = Bounded<1, 10>;
/// A TCP port.
pub type Port = Bounded<1, 65535>;
/// A count that must be at least one.
pub type Positive = Bounded<1, { u32::MAX }>;

/// Why a number is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value} is out of range {min}..={max}")]
pub struct RangeError {
    pub value: i64,
    pub min: u32,
    pub max: u32,
}

impl<const MIN: u32, const MAX: u32> Bounded<MIN, MAX> {
    pub const fn new(value: u32) -> Result<Self, RangeError> {
        if value < MIN || value > MAX {
            return Err(RangeError {
                value: value as i64,
                min: MIN,
                max: MAX,
            });
        }
        Ok(Bounded(value))
    }

    /// For constants known to be in range; a value outside it fails to compile in const context.
    pub const fn new_const(value: u32) -> Self {
        assert!(value >= MIN && value <= MAX, "constant out of range");
        Bounded(value)
    }

    pub const fn get(self) -> u32 {
        self.0
    }
}

impl<const MIN: u32, const MAX: u32> fmt::Debug for Bounded<MIN, MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl<const MIN: u32, const MAX: u32> fmt::Display for Bounded<MIN, MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl<const MIN: u32, const MAX: u32> Serialize for Bounded<MIN, MAX> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

impl<'de, const MIN: u32, const MAX: u32> Deserialize<'de> for Bounded<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = i64::deserialize(d)?;
        let in_range = u32::try_from(value)
            .ok()
            .filter(|v| (MIN..=MAX).contains(v));
        in_range.map(Bounded).ok_or_else(|| {
            serde::de::Error::custom(RangeError {
                value,
                min: MIN,
                max: MAX,
            })
        })
    }
}

impl<const MIN: u32, const MAX: u32> JsonSchema for Bounded<MIN, MAX> {
    fn schema_name() -> Cow<'static, str> {
        format!("Bounded_{MIN}_{MAX}").into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        if MAX == u32::MAX {
            json_schema!({ "type": "integer", "format": "int64", "minimum": MIN })
        } else {
            json_schema!({ "type": "integer", "format": "int32", "minimum": MIN, "maximum": MAX })
        }
    }
}

/// A fraction in `0.0..=1.0` (retry budget ratio, sampling ratio).
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Serialize)]
pub struct Ratio(f64);

impl Ratio {
    pub const ONE: Ratio = Ratio(1.0);

    pub fn new(value: f64) -> Result<Self, RatioError> {
        if (0.0..=1.0).contains(&value) {
            Ok(Ratio(value))
        } else {
            Err(RatioError(value))
        }
    }

    pub const fn get(self) -> f64 {
        self.0
    }
}

/// Why a number is not a ratio.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0} is out of range 0..=1")]
pub struct RatioError(pub f64);

impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ratio::new(f64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Ratio {
    fn schema_name() -> Cow<'static, str> {
        "Ratio".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "number", "minimum": 0.0, "maximum": 1.0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_enforced_when_parsing() {
        assert!(serde_json::from_str::<Attempts>("0").is_err());
        assert!(serde_json::from_str::<Attempts>("11").is_err());
        assert_eq!(serde_json::from_str::<Attempts>("10").unwrap().get(), 10);
        assert!(serde_json::from_str::<Percent>("101").is_err());
        assert!(serde_json::from_str::<Percent>("-1").is_err());
        assert!(serde_json::from_str::<Port>("0").is_err());
        assert!(serde_json::from_str::<Port>("65536").is_err());
        assert!(serde_json::from_str::<Ratio>("1.5").is_err());
        assert!(serde_json::from_str::<Ratio>("-0.1").is_err());
        assert_eq!(serde_json::from_str::<Ratio>("0.2").unwrap().get(), 0.2);
    }

    #[test]
    fn range_error_names_the_range() {
        let err = serde_json::from_str::<Attempts>("11")
            .unwrap_err()
            .to_string();
        assert!(err.contains("11 is out of range 1..=10"), "{err}");
    }
}
