//! The [`Queue`] contract, as SQS behaves: a message is received as sent, hidden while in
//! flight, visible again when its visibility ends (or is changed), deleted by its latest receipt
//! only, delayed when asked, counted by `depth`, and redriven to the DLQ on the receive that
//! exceeds the queue's maximum. Times are whole seconds: SQS has no finer ones.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use fanout_shared::{Queue, QueueDepth, QueueMessage};

use super::{contract, Contract, Limits, MAX_RECEIVE_COUNT};

/// Every contract of the trait.
pub fn contracts() -> Vec<Contract> {
    vec![
        contract!(a_message_is_received_as_sent(queue)),
        contract!(a_received_message_is_hidden_until_its_visibility_ends(
            queue
        )),
        contract!(delete_removes_received_messages(queue)),
        contract!(a_stale_receipt_deletes_nothing(queue, limits)),
        contract!(change_visibility_moves_the_end_of_the_visibility(queue)),
        contract!(a_delayed_message_is_hidden_until_its_delay(queue)),
        contract!(depth_counts_visible_in_flight_and_delayed(queue)),
        contract!(receive_takes_at_most_max_and_each_message_once(queue)),
        contract!(an_empty_queue_answers_empty_within_the_wait(queue)),
        contract!(the_receive_exceeding_the_maximum_redrives_to_the_dlq(
            queue, dlq
        )),
    ]
}

const SECOND: Duration = Duration::from_secs(1);
const LONG: Duration = Duration::from_secs(30);

fn attributes() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("fanout.message_id".to_owned(), "job-1".to_owned()),
        ("k".to_owned(), "v w".to_owned()),
    ])
}

/// One message, within `wait` (a long poll).
async fn receive_one(queue: &dyn Queue, visibility: Duration, wait: Duration) -> QueueMessage {
    let mut got = queue.receive(1, visibility, wait).await.unwrap();
    assert_eq!(got.len(), 1, "one message within {wait:?}: {got:?}");
    got.remove(0)
}

async fn nothing_visible(queue: &dyn Queue) -> bool {
    queue
        .receive(10, LONG, Duration::ZERO)
        .await
        .unwrap()
        .is_empty()
}

/// `send` then `receive`: the queue's message ID, the body and string attributes as sent, the
/// first receive counted 1, the send time, and a receipt handle.
pub async fn a_message_is_received_as_sent(queue: &dyn Queue) {
    assert!(!queue.name().is_empty());
    let before = fanout_shared::now_ms();
    let id = queue.send("{\"job\": 1}", &attributes()).await.unwrap();
    let after = fanout_shared::now_ms();
    let m = receive_one(queue, LONG, 2 * SECOND).await;
    assert_eq!(
        (
            m.message_id.as_str(),
            m.body.as_str(),
            &m.attributes,
            m.receive_count
        ),
        (id.as_str(), "{\"job\": 1}", &attributes(), 1)
    );
    assert!(!m.receipt_handle.is_empty());
    assert!(
        (before - 1_000..=after + 1_000).contains(&m.sent_at_ms),
        "sent at {} (sent between {before} and {after})",
        m.sent_at_ms
    );
}

/// A received message is hidden from other receives (and counted in flight) until its
/// visibility ends; then the next receive, a long poll that began while it was hidden, gets
/// it again with a new receipt handle and its receive count up by one.
pub async fn a_received_message_is_hidden_until_its_visibility_ends(queue: &dyn Queue) {
    queue.send("body", &BTreeMap::new()).await.unwrap();
    let first = receive_one(queue, SECOND, 2 * SECOND).await;
    assert!(nothing_visible(queue).await, "hidden while in flight");
    assert_eq!(
        queue.depth().await.unwrap(),
        QueueDepth {
            visible: 0,
            in_flight: 1,
            delayed: 0
        }
    );
    let second = receive_one(queue, LONG, 4 * SECOND).await;
    assert_eq!(
        (second.message_id.as_str(), second.receive_count),
        (first.message_id.as_str(), 2)
    );
    assert_ne!(second.receipt_handle, first.receipt_handle);
}

/// `delete` by the latest receipt handles removes the messages for good (several at once; none
/// is fine too).
pub async fn delete_removes_received_messages(queue: &dyn Queue) {
    queue.delete(&[]).await.unwrap();
    for body in ["a", "b", "c"] {
        queue.send(body, &BTreeMap::new()).await.unwrap();
    }
    let mut handles = Vec::new();
    let give_up = Instant::now() + 10 * SECOND;
    while handles.len() < 3 && Instant::now() < give_up {
        for m in queue.receive(10, SECOND, SECOND).await.unwrap() {
            handles.push(m.receipt_handle);
        }
    }
    assert_eq!(handles.len(), 3);
    queue.delete(&handles).await.unwrap();
    assert!(queue.depth().await.unwrap().is_drained());
    tokio::time::sleep(SECOND + Duration::from_millis(200)).await;
    assert!(nothing_visible(queue).await, "deleted, not only hidden");
}

/// A receipt handle of an earlier receive (the message was received again since) deletes
/// nothing and is no error: the newer receiver owns the message.
pub async fn a_stale_receipt_deletes_nothing(queue: &dyn Queue, limits: &Limits) {
    queue.send("body", &BTreeMap::new()).await.unwrap();
    let first = receive_one(queue, SECOND, 2 * SECOND).await;
    let second = receive_one(queue, LONG, 4 * SECOND).await;
    queue
        .delete(std::slice::from_ref(&first.receipt_handle))
        .await
        .expect("a stale handle is no error");
    // moto deletes by any handle the message ever had (see `Limits`): only SQS and the
    // embedded queue are held to this one assertion.
    if !limits.stale_receipt_deletes {
        assert_eq!(
            queue.depth().await.unwrap().in_flight,
            1,
            "a stale receipt deletes nothing"
        );
    }
    queue
        .delete(std::slice::from_ref(&second.receipt_handle))
        .await
        .unwrap();
    assert!(queue.depth().await.unwrap().is_drained());
}

/// `change_visibility`: a longer timeout keeps a message hidden past its first visibility; zero
/// makes it visible at once.
pub async fn change_visibility_moves_the_end_of_the_visibility(queue: &dyn Queue) {
    queue.send("body", &BTreeMap::new()).await.unwrap();
    let m = receive_one(queue, SECOND, 2 * SECOND).await;
    queue
        .change_visibility(&m.receipt_handle, LONG)
        .await
        .unwrap();
    tokio::time::sleep(SECOND + Duration::from_millis(500)).await;
    assert!(nothing_visible(queue).await, "still hidden: extended");
    assert_eq!(queue.depth().await.unwrap().in_flight, 1);
    queue
        .change_visibility(&m.receipt_handle, Duration::ZERO)
        .await
        .unwrap();
    let again = receive_one(queue, LONG, 2 * SECOND).await;
    assert_eq!((again.message_id, again.receive_count), (m.message_id, 2));
}

/// `send_delayed`: the message is counted as delayed and received by no one until its delay
/// is over; a delay beyond [`fanout_shared::MAX_DELAY`] is capped, not refused.
pub async fn a_delayed_message_is_hidden_until_its_delay(queue: &dyn Queue) {
    let sent = Instant::now();
    let id = queue
        .send_delayed("later", &BTreeMap::new(), SECOND)
        .await
        .unwrap();
    assert_eq!(
        queue.depth().await.unwrap(),
        QueueDepth {
            visible: 0,
            in_flight: 0,
            delayed: 1
        }
    );
    assert!(nothing_visible(queue).await, "delayed");
    let m = receive_one(queue, LONG, 4 * SECOND).await;
    assert!(
        sent.elapsed() >= Duration::from_millis(900),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!((m.message_id, m.receive_count), (id, 1));

    queue
        .send_delayed("much later", &BTreeMap::new(), Duration::from_secs(3_600))
        .await
        .expect("a delay beyond the maximum is capped");
    assert_eq!(queue.depth().await.unwrap().delayed, 1);
}

/// `depth`: visible, in-flight and delayed messages, each counted once; drained when all are 0.
pub async fn depth_counts_visible_in_flight_and_delayed(queue: &dyn Queue) {
    let empty = queue.depth().await.unwrap();
    assert!(empty.is_drained(), "{empty:?}");
    queue.send("a", &BTreeMap::new()).await.unwrap();
    queue.send("b", &BTreeMap::new()).await.unwrap();
    queue
        .send_delayed("c", &BTreeMap::new(), Duration::from_secs(60))
        .await
        .unwrap();
    receive_one(queue, LONG, 2 * SECOND).await;
    let depth = queue.depth().await.unwrap();
    assert_eq!(
        depth,
        QueueDepth {
            visible: 1,
            in_flight: 1,
            delayed: 1
        }
    );
    assert!(!depth.is_drained());
}

/// `receive` returns at most `max` messages, and no message twice while it is in flight.
pub async fn receive_takes_at_most_max_and_each_message_once(queue: &dyn Queue) {
    let sent: BTreeSet<String> = (0..5).map(|i| format!("m{i}")).collect();
    for body in &sent {
        queue.send(body, &BTreeMap::new()).await.unwrap();
    }
    let first = queue.receive(2, LONG, 2 * SECOND).await.unwrap();
    assert!((1..=2).contains(&first.len()), "{first:?}");
    let mut bodies: Vec<String> = first.into_iter().map(|m| m.body).collect();
    let give_up = Instant::now() + 10 * SECOND;
    while bodies.len() < 5 && Instant::now() < give_up {
        bodies.extend(
            queue
                .receive(10, LONG, SECOND)
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.body),
        );
    }
    assert_eq!(bodies.len(), 5, "each message once: {bodies:?}");
    assert_eq!(bodies.into_iter().collect::<BTreeSet<_>>(), sent);
    assert!(nothing_visible(queue).await);
}

/// A receive on an empty queue answers an empty list, no later than its wait.
pub async fn an_empty_queue_answers_empty_within_the_wait(queue: &dyn Queue) {
    let started = Instant::now();
    assert!(queue.receive(10, LONG, SECOND).await.unwrap().is_empty());
    assert!(
        started.elapsed() < SECOND + 2 * SECOND,
        "{:?}",
        started.elapsed()
    );
}

/// Redrive: the receive that would exceed the queue's maximum receive count moves the message,
/// body and attributes, to the DLQ instead of returning it.
pub async fn the_receive_exceeding_the_maximum_redrives_to_the_dlq(
    queue: &dyn Queue,
    dlq: &dyn Queue,
) {
    queue.send("poison", &attributes()).await.unwrap();
    for count in 1..=MAX_RECEIVE_COUNT {
        let m = receive_one(queue, SECOND, 4 * SECOND).await;
        assert_eq!(m.receive_count, count);
    }
    tokio::time::sleep(SECOND + Duration::from_millis(500)).await;
    assert!(
        queue
            .receive(10, LONG, Duration::ZERO)
            .await
            .unwrap()
            .is_empty(),
        "receive {} exceeds {MAX_RECEIVE_COUNT}: redriven",
        MAX_RECEIVE_COUNT + 1
    );
    let dead = receive_one(dlq, LONG, 2 * SECOND).await;
    assert_eq!(
        (dead.body.as_str(), &dead.attributes),
        ("poison", &attributes())
    );
    assert!(queue.depth().await.unwrap().is_drained());
}
