//! Checks on values that deserialized fine but are out of bounds, collected
//! so that one 400 lists every field at fault.

use crate::problem::{FieldError, Problem};

/// Collects field errors; [`Violations::finish`] turns them into one problem.
#[derive(Debug, Default)]
pub struct Violations {
    errors: Vec<FieldError>,
}

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `message` against `field` unless `ok`.
    pub fn check(&mut self, ok: bool, field: &str, message: impl Into<String>) -> &mut Self {
        if !ok {
            self.errors.push(FieldError::new(field, message));
        }
        self
    }

    pub fn add(&mut self, field: &str, message: impl Into<String>) -> &mut Self {
        self.errors.push(FieldError::new(field, message));
        self
    }

    /// A string whose length in characters (after trimming) is within bounds.
    pub fn length(&mut self, field: &str, value: &str, min: usize, max: usize) -> &mut Self {
        let n = value.trim().chars().count();
        if n < min {
            let message = if min == 1 {
                "must not be empty".to_string()
            } else {
                format!("must be at least {min} characters")
            };
            self.add(field, message);
        } else if n > max {
            self.add(field, format!("must be at most {max} characters"));
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn finish(&mut self) -> Result<(), Problem> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(Problem::validation(std::mem::take(&mut self.errors)))
        }
    }
}

/// A money amount in minor units (cents) from a decimal number with at most
/// two decimals, or why not.
pub fn cents(amount: f64) -> Result<i64, &'static str> {
    if !amount.is_finite() {
        return Err("must be a finite number");
    }
    if amount < 0.0 {
        return Err("must not be negative");
    }
    if amount > 1e9 {
        return Err("must be at most 1000000000");
    }
    let scaled = amount * 100.0;
    let rounded = scaled.round();
    if (scaled - rounded).abs() > 1e-6 {
        return Err("must have at most two decimals");
    }
    Ok(rounded as i64)
}

/// Cents as a decimal number for JSON.
pub fn from_cents(cents: i64) -> f64 {
    cents as f64 / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_every_violation() {
        let mut v = Violations::new();
        v.length("name", "  ", 1, 10)
            .length("password", "short", 8, 128)
            .check(true, "ok", "never")
            .length("bio", &"x".repeat(11), 0, 10);
        let p = v.finish().unwrap_err();
        let fields: Vec<_> = p.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["name", "password", "bio"]);
        assert_eq!(p.errors[0].message, "must not be empty");
        assert!(Violations::new().finish().is_ok());
    }

    #[test]
    fn money_in_cents() {
        assert_eq!(cents(29.99), Ok(2999));
        assert_eq!(cents(0.1 + 0.2), Ok(30));
        assert_eq!(cents(10.0), Ok(1000));
        assert_eq!(cents(0.0), Ok(0));
        assert!(cents(-0.01).is_err());
        assert!(cents(1.005).is_err());
        assert!(cents(f64::NAN).is_err());
        assert!(cents(f64::INFINITY).is_err());
        assert_eq!(from_cents(2999), 29.99);
    }
}
