//! The run ID of a tick: the same scheduled tick always gets the same run ID.

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use chrono::{DateTime, DurationRound, SecondsFormat, TimeDelta, Utc};
use serde_json::Value;
use tracing::warn;

use fanout_shared::MAX_RUN_ID_LEN;

use crate::Tick;

/// What an EventBridge Scheduler schedule passes when its input has not been substituted: the
/// local emulator passes the placeholder itself.
const SCHEDULED_TIME_PLACEHOLDER: &str = "<aws.scheduler.scheduled-time>";

/// Why no run ID could be had from an invocation's input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TickError {
    /// Neither a schedule's input, an EventBridge scheduled event nor `{"run_id": "..."}`.
    #[error(
        "input is neither a schedule's {{\"schedule\": ..., \"scheduled_time\": ...}}, an EventBridge scheduled event nor {{\"run_id\": \"...\"}}: {0}"
    )]
    Unrecognised(String),
    /// A scheduled event without its `time`.
    #[error("scheduled event has no `time`: cannot derive a deterministic run ID")]
    NoTime,
    /// A schedule's input whose `scheduled_time` is neither a time nor the unsubstituted
    /// placeholder.
    #[error("schedule {schedule:?}: scheduled_time {found:?} is not an RFC 3339 time")]
    BadScheduledTime {
        /// The schedule's name.
        schedule: String,
        /// What the input holds.
        found: String,
    },
    /// A run ID that cannot be used.
    #[error("run_id {0:?} must be 1..={MAX_RUN_ID_LEN} printable characters")]
    BadRunId(String),
}

/// The tick an invocation's input asks for; `now` stands in for a schedule's time that the
/// scheduler did not fill in.
///
/// - `{"run_id": "..."}` (a manual invocation): that ID, no scheduled time.
/// - An EventBridge Scheduler schedule's input, `{"schedule": NAME, "scheduled_time": TIME}`
///   (the stack's schedules pass `<aws.scheduler.scheduled-time>` as TIME): run ID
///   `schedule/NAME@TIME`, e.g. `schedule/nightly@2026-11-21T15:00:00Z`. Scheduler may invoke
///   a schedule's target twice for one time; both copies carry the same time, so both get the
///   same run ID and the same message IDs. Where the placeholder arrives unsubstituted (the
///   local emulator does not fill it in) the time is `now` to the minute, said at warn: two
///   copies within one minute still share their run ID.
/// - An EventBridge rule's scheduled event (stacks deployed before schedules moved to
///   Scheduler): `<rule>@<time>`, from `resources[0]` and `time`, e.g.
///   `rule/fanout-tick@2026-11-21T10:15:00Z`.
pub fn tick_from_event(input: &Value, now: DateTime<Utc>) -> Result<Tick, TickError> {
    if let Some(run_id) = input.get("run_id") {
        let run_id = run_id
            .as_str()
            .ok_or_else(|| TickError::BadRunId(run_id.to_string()))?;
        check_run_id(run_id)?;
        return Ok(Tick {
            run_id: run_id.to_owned(),
            scheduled_at: None,
            schedule: None,
        });
    }
    if let Some(schedule) = input.get("schedule").and_then(Value::as_str) {
        let time = scheduler_time(schedule, input.get("scheduled_time"), now)?;
        let run_id = format!("schedule/{schedule}@{time}");
        check_run_id(&run_id)?;
        return Ok(Tick {
            run_id,
            scheduled_at: Some(time),
            schedule: Some(schedule.to_owned()),
        });
    }
    let event: EventBridgeEvent = serde_json::from_value(input.clone())
        .map_err(|e| TickError::Unrecognised(e.to_string()))?;
    let time = event.time.ok_or(TickError::NoTime)?;
    let rule = event
        .resources
        .as_deref()
        .and_then(|r| r.first())
        // arn:aws:events:region:account:rule/name → rule/name
        .and_then(|arn| arn.splitn(6, ':').nth(5))
        .unwrap_or("schedule");
    let time = time.to_rfc3339_opts(SecondsFormat::Secs, true);
    let run_id = format!("{rule}@{time}");
    check_run_id(&run_id)?;
    Ok(Tick {
        run_id,
        scheduled_at: Some(time),
        schedule: Some(rule.to_owned()),
    })
}

/// A Scheduler schedule's time (RFC 3339, to the second): as given, or `now` to the minute
/// where the placeholder was not substituted.
fn scheduler_time(
    schedule: &str,
    given: Option<&Value>,
    now: DateTime<Utc>,
) -> Result<String, TickError> {
    let text = given.and_then(Value::as_str).unwrap_or_default();
    if text.is_empty() || text == SCHEDULED_TIME_PLACEHOLDER {
        let minute = now
            .duration_trunc(TimeDelta::minutes(1))
            .unwrap_or(now)
            .to_rfc3339_opts(SecondsFormat::Secs, true);
        warn!(
            schedule,
            scheduled_time = minute,
            "the schedule's input has no scheduled time (an emulator that does not substitute <aws.scheduler.scheduled-time>): using the minute of the invocation"
        );
        return Ok(minute);
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| {
            t.with_timezone(&Utc)
                .to_rfc3339_opts(SecondsFormat::Secs, true)
        })
        .map_err(|_| TickError::BadScheduledTime {
            schedule: schedule.to_owned(),
            found: text.to_owned(),
        })
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

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-21T10:15:42.5Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn rule_event(time: &str) -> Value {
        serde_json::json!({
            "version": "0", "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa", "detail-type": "Scheduled Event",
            "source": "aws.events", "account": "123456789012", "time": time, "region": "us-east-1",
            "resources": ["arn:aws:events:us-east-1:123456789012:rule/fanout-tick"], "detail": {}
        })
    }

    fn schedule_input(name: &str, time: &str) -> Value {
        serde_json::json!({"schedule": name, "scheduled_time": time})
    }

    #[test]
    fn same_schedule_and_time_same_run_id() {
        let a = tick_from_event(&schedule_input("nightly", "2026-11-21T15:00:00Z"), now()).unwrap();
        assert_eq!(
            a,
            Tick {
                run_id: "schedule/nightly@2026-11-21T15:00:00Z".into(),
                scheduled_at: Some("2026-11-21T15:00:00Z".into()),
                schedule: Some("nightly".into()),
            }
        );
        let later = now() + TimeDelta::minutes(7);
        assert_eq!(
            a,
            tick_from_event(&schedule_input("nightly", "2026-11-21T15:00:00Z"), later).unwrap(),
            "a second delivery, later: the same run"
        );
        // Another zone's notation of the same instant is the same tick.
        assert_eq!(
            a.run_id,
            tick_from_event(
                &schedule_input("nightly", "2026-11-22T00:00:00+09:00"),
                now()
            )
            .unwrap()
            .run_id
        );
        for other in [
            schedule_input("hourly", "2026-11-21T15:00:00Z"),
            schedule_input("nightly", "2026-11-22T15:00:00Z"),
        ] {
            assert_ne!(a.run_id, tick_from_event(&other, now()).unwrap().run_id);
        }
        assert!(!is_watchdog(&schedule_input(
            "nightly",
            "2026-11-21T15:00:00Z"
        )));
    }

    #[test]
    fn an_unsubstituted_scheduled_time_is_the_minute_of_the_invocation() {
        let placeholder = schedule_input("tick", SCHEDULED_TIME_PLACEHOLDER);
        let tick = tick_from_event(&placeholder, now()).unwrap();
        assert_eq!(tick.run_id, "schedule/tick@2026-11-21T10:15:00Z");
        assert_eq!(tick.scheduled_at.as_deref(), Some("2026-11-21T10:15:00Z"));
        let same_minute = now() + TimeDelta::seconds(10);
        assert_eq!(tick, tick_from_event(&placeholder, same_minute).unwrap());
        assert_eq!(
            tick_from_event(&serde_json::json!({"schedule": "tick"}), now()).unwrap(),
            tick
        );
        assert_eq!(
            tick_from_event(&schedule_input("tick", "yesterday"), now()),
            Err(TickError::BadScheduledTime {
                schedule: "tick".into(),
                found: "yesterday".into()
            })
        );
    }

    #[test]
    fn a_rule_event_keeps_its_run_id() {
        let a = tick_from_event(&rule_event("2026-11-21T10:15:00Z"), now()).unwrap();
        assert_eq!(a.run_id, "rule/fanout-tick@2026-11-21T10:15:00Z");
        assert_eq!(a.scheduled_at.as_deref(), Some("2026-11-21T10:15:00Z"));
        assert_eq!(
            a,
            tick_from_event(&rule_event("2026-11-21T10:15:00Z"), now()).unwrap()
        );
        assert!(
            is_watchdog(&serde_json::json!({"watchdog": true}))
                && !is_watchdog(&rule_event("2026-11-21T10:15:00Z"))
        );
        assert_ne!(
            a.run_id,
            tick_from_event(&rule_event("2026-11-21T10:30:00Z"), now())
                .unwrap()
                .run_id
        );
    }

    #[test]
    fn manual_and_bad_inputs() {
        let manual = tick_from_event(&serde_json::json!({"run_id": "backfill-1"}), now()).unwrap();
        assert_eq!(
            (manual.run_id.as_str(), manual.scheduled_at),
            ("backfill-1", None)
        );
        assert!(matches!(
            tick_from_event(&serde_json::json!({"run_id": ""}), now()),
            Err(TickError::BadRunId(_))
        ));
        assert!(matches!(
            tick_from_event(&serde_json::json!({"run_id": 7}), now()),
            Err(TickError::BadRunId(_))
        ));
        assert!(matches!(
            tick_from_event(&serde_json::json!({"hello": 1}), now()),
            Err(TickError::Unrecognised(_))
        ));
        let mut no_time = rule_event("2026-11-21T10:15:00Z");
        no_time.as_object_mut().unwrap().remove("time");
        assert_eq!(tick_from_event(&no_time, now()), Err(TickError::NoTime));
        let long = "x".repeat(MAX_RUN_ID_LEN);
        assert!(matches!(
            tick_from_event(&schedule_input(&long, "2026-11-21T15:00:00Z"), now()),
            Err(TickError::BadRunId(_))
        ));
    }
}
