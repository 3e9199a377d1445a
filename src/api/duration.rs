//! The one duration type of the API: a humantime string such as `30s`, `5m` or `1h30m`.
//!
//! The schema pattern is anchored and accepts exactly what [`Duration::parse`] accepts, so a value
//! the API server admitted always parses. Parsing is done again anyway (the controller never trusts
//! that the schema was installed), and a zero duration is rejected by validation where it matters.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Anchored pattern for durations: one or more `<number><unit>` groups, units `ms`, `s`, `m`, `h`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";

/// A span of time written as a humantime string (`30s`, `5m`, `1h30m`, `500ms`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {value:?}: expected a number with a unit (ms, s, m or h), such as 30s, 5m or 1h30m"
)]
pub struct DurationError {
    pub value: String,
}

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    pub const fn from_millis(millis: u64) -> Self {
        Self(std::time::Duration::from_millis(millis))
    }

    pub const fn as_std(self) -> std::time::Duration {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    /// Parses the strict form the CRD schema admits; anything else is an error.
    pub fn parse(value: &str) -> Result<Self, DurationError> {
        let error = || DurationError {
            value: value.to_owned(),
        };
        if value.is_empty() {
            return Err(error());
        }
        let mut total = std::time::Duration::ZERO;
        let mut rest = value;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(error());
            }
            let number: u64 = rest[..digits].parse().map_err(|_| error())?;
            rest = &rest[digits..];
            let (unit, len): (fn(u64) -> Option<std::time::Duration>, usize) =
                if rest.starts_with("ms") {
                    (|n| Some(std::time::Duration::from_millis(n)), 2)
                } else if rest.starts_with('s') {
                    (|n| Some(std::time::Duration::from_secs(n)), 1)
                } else if rest.starts_with('m') {
                    (|n| n.checked_mul(60).map(std::time::Duration::from_secs), 1)
                } else if rest.starts_with('h') {
                    (
                        |n| n.checked_mul(3600).map(std::time::Duration::from_secs),
                        1,
                    )
                } else {
                    return Err(error());
                };
            total = total
                .checked_add(unit(number).ok_or_else(error)?)
                .ok_or_else(error)?;
            rest = &rest[len..];
        }
        Ok(Self(total))
    }
}

impl From<std::time::Duration> for Duration {
    fn from(value: std::time::Duration) -> Self {
        Self(value)
    }
}

impl FromStr for Duration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Writes the shortest exact form in the same grammar (`90s` becomes `1m30s`).
impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total_ms = self.0.as_millis();
        if total_ms == 0 {
            return f.write_str("0s");
        }
        let (h, rem) = (total_ms / 3_600_000, total_ms % 3_600_000);
        let (m, rem) = (rem / 60_000, rem % 60_000);
        let (s, ms) = (rem / 1000, rem % 1000);
        for (value, unit) in [(h, "h"), (m, "m"), (s, "s"), (ms, "ms")] {
            if value > 0 {
                write!(f, "{value}{unit}")?;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        Self::parse(&value).map_err(serde::de::Error::custom)
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
    fn parses_every_unit_and_compound_forms() {
        assert_eq!(Duration::parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(Duration::parse("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(Duration::parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            Duration::parse("500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            Duration::parse("1m30s250ms").unwrap(),
            Duration::from_millis(90_250)
        );
    }

    #[test]
    fn refuses_what_the_schema_pattern_refuses() {
        let pattern = regex::Regex::new(DURATION_PATTERN).unwrap();
        for bad in [
            "", "30", "s", "1d", "-5s", "5 m", "1.5s", "5M", "1h30", " 5s",
        ] {
            assert!(Duration::parse(bad).is_err(), "{bad:?} should be refused");
            assert!(
                !pattern.is_match(bad),
                "{bad:?} should not match the schema pattern"
            );
        }
        for good in ["30s", "1h30m", "500ms", "0s"] {
            assert!(Duration::parse(good).is_ok());
            assert!(pattern.is_match(good));
        }
    }

    #[test]
    fn display_round_trips_through_parse() {
        for ms in [
            0u64, 1, 999, 1000, 59_000, 60_000, 90_000, 3_600_000, 5_430_500,
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(Duration::parse(&d.to_string()).unwrap(), d, "{d}");
        }
        assert_eq!(Duration::from_secs(90).to_string(), "1m30s");
    }

    #[test]
    fn overflowing_values_are_errors_not_panics() {
        assert!(Duration::parse("99999999999999999999h").is_err());
        assert!(Duration::parse("18446744073709551615h").is_err());
    }
}
