//! The words the core decides in: the reason of every event it emits ([`EventReason`]) and the
//! reason a rollout failed for ([`FailureReason`], the `Failed` condition's reason in status).
//!
//! Both are closed sets, so whoever reads them (notifications, `kubectl sluice wait`) matches
//! them exhaustively and a new reason does not compile until it is handled there. Each variant's
//! name is its string: [`EventReason::as_str`], `Display` and serde all give exactly that word,
//! which is what Kubernetes Events, hook bodies and status carry.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Declares a reason enum whose variants are their own strings: `as_str`, `ALL`, `parse`,
/// `Display` and `FromStr`, with serde's derive (which also uses the variant's name) agreeing.
macro_rules! reasons {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $(
                $(#[$variant_meta:meta])*
                $variant:ident,
            )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name {
            $(
                $(#[$variant_meta])*
                $variant,
            )+
        }

        impl $name {
            /// Every reason, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The reason as Events, hook bodies and status carry it.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => stringify!($variant),)+
                }
            }

            /// The reason `word` names; `None` for a word this version does not know.
            pub fn parse(word: &str) -> Option<Self> {
                match word {
                    $(stringify!($variant) => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownReason;

            fn from_str(word: &str) -> Result<Self, Self::Err> {
                Self::parse(word).ok_or_else(|| UnknownReason(word.to_owned()))
            }
        }
    };
}

/// A reason string no variant names (written by another version of sluice, or by hand).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown reason {0:?}")]
pub struct UnknownReason(pub String);

reasons! {
    /// The reason of an event the core emits: the Kubernetes Event's reason, and what `event`
    /// hooks and notifications are told.
    pub enum EventReason {
        /// The target's revision was adopted as stable on first sight.
        Initialized,
        /// A canary of a new revision started beside the stable one.
        CanaryStarted,
        /// The canary is ready and takes its first step's traffic.
        TrafficShifted,
        /// A step passed and the next one's weight is in place.
        StepAdvanced,
        /// A canary that lost its ready pods is ready again and gets its traffic back.
        TrafficRestored,
        /// All traffic went to the canary (a blue/green switch).
        TrafficSwitched,
        /// A check passed.
        CheckPassed,
        /// A check failed (a metric or a hook); enough of them roll back.
        CheckFailed,
        /// A check could not be judged; the step holds.
        CheckUnknown,
        /// Checks stayed Unknown past the deadline and the rollout paused (`onUnknownDeadline:
        /// Pause`).
        UnknownDeadlinePaused,
        /// Every step passed; the rollout waits for promotion.
        WaitingPromotion,
        /// The stable Deployment started rolling out the revision.
        PromotionStarted,
        /// The promotion outlived the progress deadline; it keeps waiting.
        PromotionDeadlineExceeded,
        /// The revision was promoted.
        Promoted,
        /// The revision was rolled back (its [`FailureReason`] in the message and status).
        RolledBack,
        /// The canary has no ready pods; its traffic went back to stable.
        CanaryNotReady,
        /// The stable side has no ready pods; the rollout holds.
        StableNotReady,
        /// The target Deployment was deleted during a rollout.
        TargetDeleted,
        /// A new revision replaced the one rolling out.
        Superseded,
        /// The template went back to the stable revision mid-rollout.
        TemplateReverted,
        /// A new revision landed while another was promoting.
        TemplateChangedDuringPromotion,
        /// The target was found unpaused while it should be held; it is paused again.
        TemplateNotHeld,
        /// A `kubectl sluice` command was accepted.
        CommandAccepted,
        /// A `kubectl sluice` command was refused.
        CommandRefused,
        /// A person paused the rollout.
        Paused,
        /// A person resumed the rollout.
        Resumed,
        /// A post-rollout or rollback hook failed (told, never acted on).
        HookFailed,
        /// The spec cannot be acted on.
        InvalidSpec,
        /// The spec is valid again.
        SpecFixed,
        /// The Canary is being deleted: traffic to stable, canary removed, target released.
        OptedOut,
    }
}

reasons! {
    /// Why a rollout ended `Failed`: the `Failed` condition's reason in status.
    pub enum FailureReason {
        /// Checks (metrics or hooks) failed past the threshold.
        AnalysisFailed,
        /// Checks stayed Unknown past the deadline (`onUnknownDeadline: Rollback`).
        UnknownDeadlineExceeded,
        /// The canary did not become ready within the progress deadline.
        ProgressDeadlineExceeded,
        /// A person aborted the rollout.
        Aborted,
        /// The target Deployment was deleted during the rollout.
        TargetDeleted,
        /// The revision is held as failed from an earlier attempt whose cause is no longer
        /// recorded.
        RolledBack,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_and_as_str_say_the_same_word() {
        for reason in EventReason::ALL {
            let json = serde_json::to_value(reason).expect("serialises");
            assert_eq!(json, serde_json::json!(reason.as_str()));
            let back: EventReason = serde_json::from_value(json).expect("deserialises");
            assert_eq!(back, *reason);
            assert_eq!(reason.to_string(), reason.as_str());
            assert_eq!(reason.as_str().parse::<EventReason>(), Ok(*reason));
        }
        for reason in FailureReason::ALL {
            let json = serde_json::to_value(reason).expect("serialises");
            assert_eq!(json, serde_json::json!(reason.as_str()));
            let back: FailureReason = serde_json::from_value(json).expect("deserialises");
            assert_eq!(back, *reason);
            assert_eq!(FailureReason::parse(reason.as_str()), Some(*reason));
        }
    }

    #[test]
    fn the_words_are_the_ones_status_and_events_always_carried() {
        assert_eq!(EventReason::ALL.len(), 30);
        assert_eq!(EventReason::CanaryStarted.as_str(), "CanaryStarted");
        assert_eq!(
            EventReason::TemplateChangedDuringPromotion.as_str(),
            "TemplateChangedDuringPromotion"
        );
        let failures: Vec<&str> = FailureReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            failures,
            [
                "AnalysisFailed",
                "UnknownDeadlineExceeded",
                "ProgressDeadlineExceeded",
                "Aborted",
                "TargetDeleted",
                "RolledBack",
            ]
        );
    }

    #[test]
    fn an_unknown_word_is_no_reason() {
        assert_eq!(FailureReason::parse("SomethingNew"), None);
        assert_eq!(EventReason::parse(""), None);
        assert_eq!(
            "SomethingNew".parse::<FailureReason>(),
            Err(UnknownReason("SomethingNew".to_owned()))
        );
        assert!(serde_json::from_value::<EventReason>(serde_json::json!("Nope")).is_err());
    }
}
