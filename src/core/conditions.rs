//! Condition merging: put a condition into a Canary's list so that `lastTransitionTime` only moves
//! when the status changes, every condition carries the Canary generation it was computed from, and
//! every message names the revision it is about (so `kubectl wait --for=condition=Promoted` cannot
//! be satisfied by a previous release). Pure; the state machine decides the values.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition's three states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }

    pub const fn from_bool(value: bool) -> Self {
        if value { Status::True } else { Status::False }
    }
}

/// One condition to set.
#[derive(Clone, Debug)]
pub struct Update<'a> {
    pub type_: &'a str,
    pub status: Status,
    pub reason: &'a str,
    pub message: &'a str,
    /// The revision the condition is about; written at the start of the message.
    pub revision: Option<&'a str>,
}

/// Sets `update` in `conditions`, keeping `lastTransitionTime` when the status is unchanged.
pub fn merge(conditions: &mut Vec<Condition>, update: Update<'_>, generation: i64, now: Timestamp) {
    let message = match update.revision {
        // A status message that already opens with its revision is not prefixed twice.
        Some(revision) if update.message.starts_with(&format!("revision {revision}")) => {
            update.message.to_owned()
        }
        Some(revision) => format!("revision {revision}: {}", update.message),
        None => format!("no revision: {}", update.message),
    };
    let status = update.status.as_str();
    match conditions.iter_mut().find(|c| c.type_ == update.type_) {
        Some(existing) => {
            if existing.status != status {
                existing.last_transition_time = Time(now);
                existing.status = status.to_owned();
            }
            existing.reason = update.reason.to_owned();
            existing.message = message;
            existing.observed_generation = Some(generation);
        }
        None => conditions.push(Condition {
            type_: update.type_.to_owned(),
            status: status.to_owned(),
            reason: update.reason.to_owned(),
            message,
            observed_generation: Some(generation),
            last_transition_time: Time(now),
        }),
    }
}

/// The condition of `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(status: Status, reason: &'static str) -> Update<'static> {
        Update {
            type_: "Promoted",
            status,
            reason,
            message: "done",
            revision: Some("abc123"),
        }
    }

    #[test]
    fn an_unchanged_status_keeps_its_transition_time_but_takes_the_new_generation_and_reason() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let mut conditions = Vec::new();
        merge(&mut conditions, update(Status::True, "Promoted"), 1, t0);
        merge(
            &mut conditions,
            update(Status::True, "StillPromoted"),
            2,
            t1,
        );
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, Time(t0));
        assert_eq!(conditions[0].observed_generation, Some(2));
        assert_eq!(conditions[0].reason, "StillPromoted");
    }

    #[test]
    fn a_changed_status_moves_the_transition_time() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let mut conditions = Vec::new();
        merge(&mut conditions, update(Status::True, "Promoted"), 1, t0);
        merge(&mut conditions, update(Status::False, "Progressing"), 1, t1);
        assert_eq!(conditions[0].last_transition_time, Time(t1));
        assert_eq!(conditions[0].status, "False");
    }

    #[test]
    fn every_message_names_the_revision() {
        let mut conditions = Vec::new();
        merge(
            &mut conditions,
            update(Status::True, "Promoted"),
            1,
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(conditions[0].message, "revision abc123: done");
    }
}
