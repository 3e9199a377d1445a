//! The rollout's clocks in status, kept to the microsecond: `stepStartedAt`, `lastCheckAt`,
//! `unknownSince` and `revisionStartedAt` decide when a step may advance (I4) and when the progress
//! and unknown deadlines pass. A Kubernetes `Time` is written in whole seconds, so a clock read
//! back from status would lose its fraction and a step or deadline would end up to a second early.
//!
//! These fields (and each check's `time` in `status.analysis`, the same moment as `lastCheckAt`)
//! are written in RFC 3339 to the microsecond, a Kubernetes `MicroTime`'s precision
//! (`2026-01-01T00:00:09.500001Z`; a whole second without a fraction, as before), and read in any
//! RFC 3339 precision, so whole-second values written by older versions stay readable. A time is
//! rounded up to the microsecond, never down: rounding may only delay.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Nanoseconds in the precision status keeps.
const PRECISION_NANOS: i32 = 1_000;

/// `at` rounded up to the microsecond, the precision status keeps, so a clock written to status
/// and read back is exactly the clock decided on, and never earlier than the moment it names.
pub fn round_up(at: Timestamp) -> Timestamp {
    let below = at.subsec_nanosecond().rem_euclid(PRECISION_NANOS);
    if below == 0 {
        return at;
    }
    at.checked_add(SignedDuration::from_nanos(i64::from(
        PRECISION_NANOS - below,
    )))
    .unwrap_or(at)
}

/// The current time at the precision status keeps (rounded up).
pub fn now() -> Timestamp {
    round_up(Timestamp::now())
}

/// `time` as status writes it: RFC 3339, rounded up to the microsecond, no fraction when whole.
fn text(time: &Time) -> Result<String, jiff::Error> {
    jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%S%.fZ", round_up(time.0))
}

/// Serde for an `Option<Time>` status clock: written to the microsecond (rounded up), read at
/// any precision.
pub mod optional {
    use serde::ser::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{Time, text};

    pub fn serialize<S: Serializer>(
        value: &Option<Time>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(time) => serializer.serialize_some(&text(time).map_err(S::Error::custom)?),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Time>, D::Error> {
        Option::<Time>::deserialize(deserializer)
    }
}

/// Serde for a `Time` that names the same moment as a status clock (a check's time): written to
/// the microsecond (rounded up), read at any precision.
pub mod required {
    use serde::ser::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{Time, text};

    pub fn serialize<S: Serializer>(value: &Time, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&text(value).map_err(S::Error::custom)?)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Time, D::Error> {
        Time::deserialize(deserializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CanaryStatus;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("timestamp")
    }

    #[test]
    fn rounding_only_ever_delays() {
        assert_eq!(
            round_up(at("2026-01-01T00:00:09.123456001Z")),
            at("2026-01-01T00:00:09.123457Z")
        );
        assert_eq!(
            round_up(at("2026-01-01T00:00:09.123456Z")),
            at("2026-01-01T00:00:09.123456Z")
        );
        assert_eq!(
            round_up(at("1969-12-31T23:59:59.9999995Z")),
            at("1970-01-01T00:00:00Z")
        );
    }

    #[test]
    fn status_clocks_keep_their_fraction_and_old_whole_seconds_stay_readable() {
        let status = CanaryStatus {
            step_started_at: Some(Time(at("2026-01-01T00:00:09.5000004Z"))),
            last_check_at: Some(Time(at("2026-01-01T00:00:10.25Z"))),
            unknown_since: Some(Time(at("2026-01-01T00:00:07Z"))),
            ..Default::default()
        };
        let json = serde_json::to_value(&status).expect("serialises");
        assert_eq!(json["stepStartedAt"], "2026-01-01T00:00:09.500001Z");
        assert_eq!(json["lastCheckAt"], "2026-01-01T00:00:10.25Z");
        assert_eq!(json["unknownSince"], "2026-01-01T00:00:07Z");
        let back: CanaryStatus = serde_json::from_value(json).expect("reads back");
        assert_eq!(
            back.step_started_at,
            Some(Time(at("2026-01-01T00:00:09.500001Z"))),
            "read back exactly as rounded, never earlier than decided"
        );

        let old: CanaryStatus = serde_json::from_value(serde_json::json!({
            "stepStartedAt": "2026-01-01T00:00:09Z",
            "unknownSince": "2026-01-01T00:00:07Z",
            "revisionStartedAt": "2026-01-01T00:00:01Z",
        }))
        .expect("whole seconds read");
        assert_eq!(old.step_started_at, Some(Time(at("2026-01-01T00:00:09Z"))));
        assert_eq!(old.unknown_since, Some(Time(at("2026-01-01T00:00:07Z"))));
        assert_eq!(
            old.revision_started_at,
            Some(Time(at("2026-01-01T00:00:01Z")))
        );
    }
}
