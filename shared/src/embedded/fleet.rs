//! The embedded fleet store: host states and instance leases in the state file, each change one
//! SQLite transaction (so concurrent `fanout` processes on one state file agree, as instances on
//! one DynamoDB table do).

use async_trait::async_trait;
use rusqlite::OptionalExtension;
use tracing::warn;

use super::{sql_error, EmbeddedBackend};
use crate::error::BackendError;
use crate::fleet::{FleetStore, HostStates, Lease};
use crate::hosts::{HostEvent, HostPolicy, HostState};

/// Host states and leases in the state file.
#[derive(Debug, Clone)]
pub struct EmbeddedFleet {
    backend: EmbeddedBackend,
}

impl EmbeddedFleet {
    pub(super) fn new(backend: EmbeddedBackend) -> Self {
        Self { backend }
    }
}

/// A stored state, or why it does not parse (hand-edited, or written by an incompatible
/// version).
fn parse(text: &str) -> Result<HostState, serde_json::Error> {
    serde_json::from_str(text)
}

/// A state that does not parse is read as the default (not paused, circuit closed): it must not
/// stop every call to its host. Said at warn, naming the host, since an operator's pause may be
/// what stopped holding.
fn unreadable(host: &str, error: &serde_json::Error) -> HostState {
    warn!(
        host,
        error = %error,
        "stored host state does not parse; read as not paused, circuit closed"
    );
    HostState::default()
}

#[async_trait]
impl FleetStore for EmbeddedFleet {
    async fn read_host_states(&self, hosts: &[String]) -> Result<HostStates, BackendError> {
        let inner = self.backend.lock()?;
        let mut stmt = inner
            .conn
            .prepare_cached("SELECT state FROM hosts WHERE host = ?1")
            .map_err(sql_error)?;
        let mut found = HostStates::default();
        let mut seen = std::collections::HashSet::new();
        // Each host once, however often it is asked for (as DynamoDB answers).
        for host in hosts.iter().filter(|h| seen.insert(h.as_str())) {
            if let Some(text) = stmt
                .query_row([host], |r| r.get::<_, String>(0))
                .optional()
                .map_err(sql_error)?
            {
                match parse(&text) {
                    Ok(state) => found.states.push((host.clone(), state)),
                    Err(e) => {
                        unreadable(host, &e);
                        found.unreadable.push(host.clone());
                    }
                }
            }
        }
        Ok(found)
    }

    async fn apply(
        &self,
        host: &str,
        event: &HostEvent,
        now_ms: i64,
        policy: &HostPolicy,
    ) -> Result<(HostState, bool), BackendError> {
        let mut inner = self.backend.lock()?;
        let tx = inner
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql_error)?;
        let current = tx
            .prepare_cached("SELECT state FROM hosts WHERE host = ?1")
            .and_then(|mut s| s.query_row([host], |r| r.get::<_, String>(0)).optional())
            .map_err(sql_error)?
            .map(|text| parse(&text).unwrap_or_else(|e| unreadable(host, &e)))
            .unwrap_or_default();
        let Some(next) = current.apply(event, now_ms, policy) else {
            return Ok((current, false));
        };
        let text = serde_json::to_string(&next)
            .map_err(|e| BackendError::permanent("sqlite", e.to_string()))?;
        tx.prepare_cached("INSERT INTO hosts (host, state) VALUES (?1, ?2) ON CONFLICT (host) DO UPDATE SET state = ?2")
            .and_then(|mut s| s.execute([host, text.as_str()]))
            .map_err(sql_error)?;
        tx.commit().map_err(sql_error)?;
        Ok((next, true))
    }

    async fn renew(&self, lease: &Lease, now_ms: i64) -> Result<Vec<Lease>, BackendError> {
        let mut inner = self.backend.lock()?;
        let tx = inner.conn.transaction().map_err(sql_error)?;
        tx.execute("DELETE FROM leases WHERE expires <= ?1", [now_ms])
            .map_err(sql_error)?;
        tx.prepare_cached(
            "INSERT INTO leases (instance, since, expires, entitled, released)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (instance) DO UPDATE SET expires = ?3, entitled = ?4, released = ?5",
        )
        .and_then(|mut s| {
            s.execute(rusqlite::params![
                lease.instance,
                lease.since_ms,
                lease.expires_ms,
                lease.entitled_ms,
                lease.released
            ])
        })
        .map_err(sql_error)?;
        let leases = {
            let mut stmt = tx
                .prepare_cached("SELECT instance, since, expires, entitled, released FROM leases")
                .map_err(sql_error)?;
            let rows = stmt
                .query_map([], |r| {
                    let since_ms: i64 = r.get(1)?;
                    Ok(Lease {
                        instance: r.get(0)?,
                        since_ms,
                        expires_ms: r.get(2)?,
                        // A lease written before entitlements: counted from its join.
                        entitled_ms: r.get::<_, Option<i64>>(3)?.unwrap_or(since_ms),
                        released: r.get::<_, Option<bool>>(4)?.unwrap_or(false),
                    })
                })
                .map_err(sql_error)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql_error)?
        };
        tx.commit().map_err(sql_error)?;
        Ok(leases)
    }
}

// Host states and leases are held to one contract on every backend: `tests/src/contract/fleet.rs`,
// run by `tests/tests/contract_*.rs`. What is left here is this backend's own reading.

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unparseable_state_is_listed_as_unreadable_and_the_next_event_replaces_it() {
        let backend = EmbeddedBackend::open(":memory:".as_ref()).unwrap();
        let fleet = backend.fleet();
        let policy = HostPolicy::default();
        fleet
            .apply("good", &HostEvent::Failed { streak: 1 }, 0, &policy)
            .await
            .unwrap();
        backend
            .lock()
            .unwrap()
            .conn
            .execute(
                "INSERT INTO hosts (host, state) VALUES ('garbled', '{not json')",
                [],
            )
            .unwrap();
        let hosts = ["good".to_owned(), "garbled".to_owned(), "new".to_owned()];
        let found = fleet.read_host_states(&hosts).await.unwrap();
        assert_eq!(
            found
                .states
                .iter()
                .map(|(h, _)| h.as_str())
                .collect::<Vec<_>>(),
            ["good"]
        );
        assert_eq!(found.unreadable, ["garbled"]);
        assert_eq!(fleet.host_states(&hosts).await.unwrap(), found.states);
        // An event reads the garbled state as the default and its write replaces it.
        let (state, changed) = fleet
            .apply("garbled", &HostEvent::Failed { streak: 1 }, 0, &policy)
            .await
            .unwrap();
        assert!(changed && state.consecutive_failures == 1, "{state:?}");
        assert!(fleet
            .read_host_states(&hosts)
            .await
            .unwrap()
            .unreadable
            .is_empty());
    }
}
