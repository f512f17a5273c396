//! The run ID of a tick: the same scheduled tick always gets the same run ID.

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use serde_json::Value;

use fanout_shared::MAX_RUN_ID_LEN;

/// Why no run ID could be had from an invocation's input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TickError {
    /// Neither a scheduled event nor `{"run_id": "..."}`.
    #[error("input is neither an EventBridge scheduled event nor {{\"run_id\": \"...\"}}: {0}")]
    Unrecognised(String),
    /// A scheduled event without its `time`.
    #[error("scheduled event has no `time`: cannot derive a deterministic run ID")]
    NoTime,
    /// A run ID that cannot be used.
    #[error("run_id {0:?} must be 1..={MAX_RUN_ID_LEN} printable characters")]
    BadRunId(String),
}

/// The run ID for an invocation's input.
///
/// - `{"run_id": "..."}` (a manual invocation): that ID.
/// - An EventBridge scheduled event: `<schedule>@<time>`, where `<schedule>` is the rule's or
///   schedule's name (from `resources[0]`) and `<time>` the event's scheduled time, e.g.
///   `rule/fanout-tick@2026-11-21T10:15:00Z`. EventBridge may deliver a tick twice; both copies
///   carry the same time and rule, so both get the same run ID and the same message IDs.
pub fn run_id_from_event(input: &Value) -> Result<String, TickError> {
    if let Some(run_id) = input.get("run_id") {
        let run_id = run_id
            .as_str()
            .ok_or_else(|| TickError::BadRunId(run_id.to_string()))?;
        check_run_id(run_id)?;
        return Ok(run_id.to_owned());
    }
    let event: EventBridgeEvent = serde_json::from_value(input.clone())
        .map_err(|e| TickError::Unrecognised(e.to_string()))?;
    let time = event.time.ok_or(TickError::NoTime)?;
    let schedule = event
        .resources
        .as_deref()
        .and_then(|r| r.first())
        // arn:aws:events:region:account:rule/name → rule/name
        .and_then(|arn| arn.splitn(6, ':').nth(5))
        .unwrap_or("schedule");
    let run_id = format!("{schedule}@{}", time.format("%Y-%m-%dT%H:%M:%SZ"));
    check_run_id(&run_id)?;
    Ok(run_id)
}

/// The schedule's time of a scheduled event (RFC 3339), `None` for a manual invocation.
pub fn scheduled_time(input: &Value) -> Option<String> {
    input
        .get("run_id")
        .is_none()
        .then(|| input.get("time")?.as_str().map(str::to_owned))
        .flatten()
}

/// Whether the input is the watchdog's periodic invocation (`{"watchdog": true}`).
pub fn is_watchdog(input: &Value) -> bool {
    input.get("watchdog").and_then(Value::as_bool) == Some(true)
}

/// Checks a run ID: non-empty, at most [`MAX_RUN_ID_LEN`] characters, no control characters.
pub(crate) fn check_run_id(run_id: &str) -> Result<(), TickError> {
    fanout_shared::check_run_id(run_id).map_err(|_| TickError::BadRunId(run_id.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheduled(time: &str) -> Value {
        serde_json::json!({
            "version": "0", "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa", "detail-type": "Scheduled Event",
            "source": "aws.events", "account": "123456789012", "time": time, "region": "us-east-1",
            "resources": ["arn:aws:events:us-east-1:123456789012:rule/fanout-tick"], "detail": {}
        })
    }

    #[test]
    fn same_tick_same_run_id() {
        let a = run_id_from_event(&scheduled("2026-11-21T10:15:00Z")).unwrap();
        assert_eq!(a, "rule/fanout-tick@2026-11-21T10:15:00Z");
        assert_eq!(
            a,
            run_id_from_event(&scheduled("2026-11-21T10:15:00Z")).unwrap()
        );
        assert_eq!(
            scheduled_time(&scheduled("2026-11-21T10:15:00Z")).as_deref(),
            Some("2026-11-21T10:15:00Z")
        );
        assert!(
            is_watchdog(&serde_json::json!({"watchdog": true}))
                && !is_watchdog(&scheduled("2026-11-21T10:15:00Z"))
        );
        assert_ne!(
            a,
            run_id_from_event(&scheduled("2026-11-21T10:30:00Z")).unwrap()
        );
    }

    #[test]
    fn manual_and_bad_inputs() {
        assert_eq!(
            run_id_from_event(&serde_json::json!({"run_id": "backfill-1"})).unwrap(),
            "backfill-1"
        );
        assert!(matches!(
            run_id_from_event(&serde_json::json!({"run_id": ""})),
            Err(TickError::BadRunId(_))
        ));
        assert!(matches!(
            run_id_from_event(&serde_json::json!({"run_id": 7})),
            Err(TickError::BadRunId(_))
        ));
        assert!(matches!(
            run_id_from_event(&serde_json::json!({"hello": 1})),
            Err(TickError::Unrecognised(_))
        ));
        let mut no_time = scheduled("2026-11-21T10:15:00Z");
        no_time.as_object_mut().unwrap().remove("time");
        assert_eq!(run_id_from_event(&no_time), Err(TickError::NoTime));
    }
}
