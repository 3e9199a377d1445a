//! What hooks and notification targets receive: the JSON body of a hook call, the lifecycle event
//! each core event reason stands for ([`lifecycle`], an exhaustive match), and the generic and
//! Slack bodies of a notification. Pure: no I/O, no clock (times are arguments).

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Serialize;

use crate::api::{HookType, LifecycleEvent, NotificationFormat};
use crate::core::EventReason;

/// The lifecycle event a core event reason stands for; `None` for the others. Exhaustive: a
/// reason the core starts emitting does not compile until it is classified here.
pub fn lifecycle(reason: EventReason) -> Option<LifecycleEvent> {
    match reason {
        EventReason::CanaryStarted => Some(LifecycleEvent::Started),
        EventReason::TrafficShifted | EventReason::StepAdvanced | EventReason::TrafficSwitched => {
            Some(LifecycleEvent::Step)
        }
        EventReason::Promoted => Some(LifecycleEvent::Promoted),
        EventReason::RolledBack => Some(LifecycleEvent::RolledBack),
        EventReason::CheckFailed
        | EventReason::InvalidSpec
        | EventReason::UnknownDeadlinePaused
        | EventReason::PromotionDeadlineExceeded
        | EventReason::TargetDeleted => Some(LifecycleEvent::Failed),
        EventReason::StableNotReady
        | EventReason::CanaryNotReady
        | EventReason::CheckPassed
        | EventReason::CheckUnknown
        | EventReason::CommandAccepted
        | EventReason::CommandRefused
        | EventReason::HookFailed
        | EventReason::Initialized
        | EventReason::OptedOut
        | EventReason::Paused
        | EventReason::PromotionStarted
        | EventReason::Resumed
        | EventReason::SpecFixed
        | EventReason::Superseded
        | EventReason::TemplateChangedDuringPromotion
        | EventReason::TemplateNotHeld
        | EventReason::TemplateReverted
        | EventReason::TrafficRestored
        | EventReason::WaitingPromotion => None,
    }
}

/// Where the rollout stands when a hook is called or an event is told.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    pub canary: String,
    pub namespace: String,
    pub revision: String,
    pub phase: String,
    pub weight: i32,
    pub step: i32,
}

/// The body of a hook call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HookBody<'a> {
    #[serde(flatten)]
    pub subject: &'a Subject,
    /// The hook's name.
    pub hook: &'a str,
    #[serde(rename = "type")]
    pub hook_type: HookType,
    /// For `event` hooks: the lifecycle event, if the reason is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<LifecycleEvent>,
    /// For `event` hooks: the core event's reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// For `event` hooks: the core event's message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'a str>,
    pub metadata: &'a BTreeMap<String, String>,
}

/// The body of a generic notification.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
struct GenericBody<'a> {
    #[serde(flatten)]
    subject: &'a Subject,
    event: LifecycleEvent,
    reason: &'a str,
    message: &'a str,
    time: Timestamp,
}

/// The body a notification target receives for `event`.
pub fn notification_body(
    format: NotificationFormat,
    subject: &Subject,
    event: LifecycleEvent,
    reason: &str,
    message: &str,
    time: Timestamp,
) -> serde_json::Value {
    match format {
        NotificationFormat::Generic => serde_json::to_value(GenericBody {
            subject,
            event,
            reason,
            message,
            time,
        })
        .unwrap_or_else(|_| serde_json::json!({ "message": message })),
        NotificationFormat::Slack => {
            let mark = match event {
                LifecycleEvent::Started => ":rocket:",
                LifecycleEvent::Step => ":arrow_forward:",
                LifecycleEvent::Promoted => ":white_check_mark:",
                LifecycleEvent::RolledBack => ":rewind:",
                LifecycleEvent::Failed => ":warning:",
            };
            serde_json::json!({
                "text": format!(
                    "{mark} *{}/{}* {}: {message} (revision `{}`, {}% to the canary)",
                    subject.namespace,
                    subject.canary,
                    event.as_str(),
                    subject.revision,
                    subject.weight
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject() -> Subject {
        Subject {
            canary: "web".into(),
            namespace: "shop".into(),
            revision: "abc123".into(),
            phase: "Progressing".into(),
            weight: 20,
            step: 0,
        }
    }

    #[test]
    fn lifecycle_events_come_from_their_reasons() {
        assert_eq!(
            lifecycle(EventReason::CanaryStarted),
            Some(LifecycleEvent::Started)
        );
        assert_eq!(
            lifecycle(EventReason::StepAdvanced),
            Some(LifecycleEvent::Step)
        );
        assert_eq!(
            lifecycle(EventReason::Promoted),
            Some(LifecycleEvent::Promoted)
        );
        assert_eq!(
            lifecycle(EventReason::RolledBack),
            Some(LifecycleEvent::RolledBack)
        );
        assert_eq!(
            lifecycle(EventReason::CheckFailed),
            Some(LifecycleEvent::Failed)
        );
        assert_eq!(lifecycle(EventReason::CheckPassed), None);
    }

    #[test]
    fn every_lifecycle_event_has_a_reason_that_tells_it() {
        for event in [
            LifecycleEvent::Started,
            LifecycleEvent::Step,
            LifecycleEvent::Promoted,
            LifecycleEvent::RolledBack,
            LifecycleEvent::Failed,
        ] {
            assert!(
                EventReason::ALL
                    .iter()
                    .any(|reason| lifecycle(*reason) == Some(event)),
                "no reason tells {event:?}"
            );
        }
    }

    #[test]
    fn a_generic_notification_carries_the_rollout_and_the_event() {
        let time: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let body = notification_body(
            NotificationFormat::Generic,
            &subject(),
            LifecycleEvent::Step,
            "StepAdvanced",
            "step 2/2",
            time,
        );
        assert_eq!(
            body,
            serde_json::json!({
                "canary": "web", "namespace": "shop", "revision": "abc123",
                "phase": "Progressing", "weight": 20, "step": 0,
                "event": "Step", "reason": "StepAdvanced", "message": "step 2/2",
                "time": "2026-01-01T00:00:00Z",
            })
        );
    }

    #[test]
    fn a_slack_notification_is_one_text_field_naming_the_canary_and_event() {
        let body = notification_body(
            NotificationFormat::Slack,
            &subject(),
            LifecycleEvent::RolledBack,
            "RolledBack",
            "revision abc123 rolled back",
            Timestamp::UNIX_EPOCH,
        );
        let object = body.as_object().unwrap();
        assert_eq!(object.len(), 1);
        let text = object["text"].as_str().unwrap();
        assert!(text.contains("*shop/web* RolledBack"), "{text}");
        assert!(text.contains("revision abc123 rolled back"), "{text}");
    }

    #[test]
    fn a_hook_body_names_the_canary_revision_phase_weight_and_metadata() {
        let metadata = BTreeMap::from([("team".to_owned(), "shop".to_owned())]);
        let subject = subject();
        let body = serde_json::to_value(HookBody {
            subject: &subject,
            hook: "gate",
            hook_type: HookType::ConfirmPromotion,
            event: None,
            reason: None,
            message: None,
            metadata: &metadata,
        })
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "canary": "web", "namespace": "shop", "revision": "abc123",
                "phase": "Progressing", "weight": 20, "step": 0,
                "hook": "gate", "type": "confirm-promotion", "metadata": {"team": "shop"},
            })
        );
    }
}
