//! Status conditions that keep `lastTransitionTime` while their status holds.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// Builds a condition; `previous` supplies the transition time when the status did not change.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::now()));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// The condition of a type, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether a condition of that type is `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_transition_time_while_status_holds() {
        let first = condition(&[], "Ready", false, "A", "m", Some(1));
        let old_time = Time(Timestamp::UNIX_EPOCH);
        let prev = vec![Condition {
            last_transition_time: old_time.clone(),
            ..first.clone()
        }];
        let same = condition(&prev, "Ready", false, "B", "other", Some(2));
        assert_eq!(same.last_transition_time, old_time);
        let flipped = condition(&prev, "Ready", true, "B", "other", Some(2));
        assert_ne!(flipped.last_transition_time, old_time);
    }
}
