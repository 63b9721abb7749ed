//! Batch handlers: many messages per handler call, acked together, failed together or
//! one by one, with poison payloads dead-lettered alone (D8).

use super::support::*;
use crate::batch::{Batch, BatchResult};

/// A payload the batch cases decode.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Item {
    n: usize,
}

/// Publishes `Item { n }` for each `n` of `range`, in publish batches of at most 500.
async fn publish_items(h: &Harness, stream: &str, range: std::ops::Range<usize>) -> Vec<MessageId> {
    let mut ids = Vec::with_capacity(range.len());
    let all: Vec<usize> = range.collect();
    for chunk in all.chunks(500) {
        let payloads = chunk
            .iter()
            .map(|n| serde_json::to_vec(&Item { n: *n }).expect("an item encodes"));
        ids.extend(
            h.service
                .publish_batch(stream, payloads, PublishOptions::new())
                .await
                .expect("publish_batch"),
        );
    }
    ids
}

/// A new group of `short` at its earliest message: what is published before the
/// subscription is there to claim in full batches.
async fn earliest_group(h: &Harness, short: &str) -> String {
    let g = group();
    h.backend
        .ensure_group(&h.full_name(short), &g, &StartPosition::Earliest)
        .await
        .expect("ensure_group");
    g
}

/// What batch handlers of a case saw: each call's items as `(n, attempt, id)`.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<Vec<Seen>>>>);

/// One message of a call: `(n, attempt, id)`.
type Seen = (usize, u32, MessageId);

impl Calls {
    fn record(&self, batch: &Batch<Item>) {
        let call = batch
            .iter()
            .map(|item| {
                (
                    item.payload.n,
                    item.message.attempt,
                    item.message.id.clone(),
                )
            })
            .collect();
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(call);
    }

    /// A batch handler that records each call and succeeds.
    fn ok_handler(
        &self,
    ) -> impl Fn(Batch<Item>) -> std::future::Ready<Result<(), HandlerError>> + Send + Sync + 'static
    {
        let calls = self.clone();
        move |batch| {
            calls.record(&batch);
            std::future::ready(Ok(()))
        }
    }

    fn all(&self) -> Vec<Vec<Seen>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn handled(&self) -> usize {
        self.all().iter().map(Vec::len).sum()
    }
}

/// Waits until the group `group` of `short` has nothing pending and nothing left to claim.
async fn wait_settled(h: &Harness, short: &str, group: &str) {
    let admin = h.service.admin();
    super::wait_for_async(&format!("group {group} of {short} to settle"), || {
        let admin = admin.clone();
        async move {
            admin.groups(short).await.is_ok_and(|groups| {
                groups
                    .iter()
                    .any(|g| g.group == group && g.lag == 0 && g.pending == 0)
            })
        }
    })
    .await;
}

/// 1,000 messages with `batch_size` 100: at most 10 handler calls and a few more (a claim
/// racing the publish may come back short), each message handled once, all acknowledged,
/// and the acks of a call sent together.
pub async fn batch_handler_acks_in_batches(h: &Harness) {
    let g = group();
    // Published before the group's first claim: full batches are there to take.
    h.backend
        .ensure_group(&h.full_name("batches"), &g, &StartPosition::Earliest)
        .await
        .expect("ensure_group");
    let ids = publish_items(h, "batches", 0..1000).await;
    let calls = Calls::default();
    h.service
        .subscribe_batch(
            "batches",
            &g,
            calls.ok_handler(),
            h.options().batch_size(100),
        )
        .await
        .expect("subscribe_batch");
    wait_for("1,000 messages handled", || calls.handled() >= 1000).await;
    wait_settled(h, "batches", &g).await;
    let all = calls.all();
    assert!(
        all.len() <= 13,
        "{} handler calls for 1,000 messages in batches of 100",
        all.len()
    );
    assert!(all.iter().all(|call| !call.is_empty() && call.len() <= 100));
    let mut handled: Vec<usize> = all.iter().flatten().map(|(n, _, _)| *n).collect();
    // Stream order within and across calls (one batch at a time, no retries).
    assert!(handled.windows(2).all(|w| w[0] < w[1]), "out of order");
    handled.dedup();
    assert_eq!(handled.len(), 1000);
    assert!(all.iter().flatten().all(|(_, attempt, _)| *attempt == 1));
    let got: HashSet<&MessageId> = all.iter().flatten().map(|(_, _, id)| id).collect();
    assert!(ids.iter().all(|id| got.contains(id)));
    assert!(
        h.calls(Call::Ack, "batches") <= all.len(),
        "{} ack calls for {} batches",
        h.calls(Call::Ack, "batches"),
        all.len()
    );
}

/// D8: a payload that does not decode is dead-lettered alone, on its first attempt, with
/// the decode error as the reason; the handler gets the others, which are acknowledged.
pub async fn batch_handler_poison_payload_dead_letters_alone(h: &Harness) {
    let g = earliest_group(h, "poison").await;
    publish_items(h, "poison", 0..20).await;
    let poison = publish(h, "poison", "not json").await;
    publish_items(h, "poison", 20..40).await;
    let dead = dead_letters(h, "poison.dead").await;
    let calls = Calls::default();
    h.service
        .subscribe_batch(
            "poison",
            &g,
            calls.ok_handler(),
            h.options().batch_size(100),
        )
        .await
        .expect("subscribe_batch");
    wait_for("40 messages handled", || calls.handled() >= 40).await;
    dead.wait_len(1, "the poison payload's dead letter").await;
    wait_settled(h, "poison", &g).await;
    let letters = dead.messages();
    assert_eq!(
        letters.len(),
        1,
        "exactly the poison payload is dead-lettered"
    );
    assert_eq!(text(&letters[0]), "not json");
    assert_eq!(letters[0].header(dlh::ID), Some(poison.as_str()));
    assert_eq!(letters[0].header(dlh::ATTEMPTS), Some("1"));
    let reason = letters[0].header(dlh::REASON).unwrap_or_default();
    assert!(reason.starts_with("payload is not a valid"), "{reason}");
    let handled: Vec<usize> = calls.all().iter().flatten().map(|(n, _, _)| *n).collect();
    assert_eq!(handled, (0..40).collect::<Vec<_>>());
    // Published before the subscription: the poison sat in one batch with others.
    assert!(calls.all().len() <= 2, "{:?} calls", calls.all().len());
}

/// An `Err` from a batch handler fails every message of the batch: each comes back (its
/// attempt 2) after the retry delay, and none is dead-lettered while it has attempts left.
pub async fn batch_handler_err_retries_the_batch(h: &Harness) {
    let g = earliest_group(h, "errbatch").await;
    let ids = publish_items(h, "errbatch", 0..30).await;
    let dead = dead_letters(h, "errbatch.dead").await;
    let calls = Calls::default();
    let seen = calls.clone();
    h.service
        .subscribe_batch(
            "errbatch",
            &g,
            move |batch: Batch<Item>| {
                seen.record(&batch);
                let first_attempt = batch.iter().any(|item| item.message.attempt == 1);
                async move {
                    if first_attempt {
                        Err(HandlerError::retry("the warehouse is down"))
                    } else {
                        Ok(())
                    }
                }
            },
            h.options().batch_size(100).max_retries(1),
        )
        .await
        .expect("subscribe_batch");
    wait_for("every message handled twice", || calls.handled() >= 60).await;
    wait_settled(h, "errbatch", &g).await;
    let mut attempts: HashMap<MessageId, Vec<u32>> = HashMap::new();
    for (_, attempt, id) in calls.all().into_iter().flatten() {
        attempts.entry(id).or_default().push(attempt);
    }
    assert_eq!(attempts.len(), 30);
    for id in &ids {
        assert_eq!(
            attempts.get(id).map(Vec::as_slice),
            Some(&[1, 2][..]),
            "{id}"
        );
    }
    assert!(dead.is_empty(), "nothing is dead-lettered");

    // Out of attempts: every message of a failing batch is dead-lettered with its error.
    let g = earliest_group(h, "errbatch2").await;
    publish_items(h, "errbatch2", 0..10).await;
    let dead = dead_letters(h, "errbatch2.dead").await;
    h.service
        .subscribe_batch(
            "errbatch2",
            &g,
            |_: Batch<Item>| async { Err::<(), _>("always failing") },
            h.options().batch_size(100).max_retries(1),
        )
        .await
        .expect("subscribe_batch");
    dead.wait_len(10, "ten dead letters").await;
    wait_settled(h, "errbatch2", &g).await;
    let letters = dead.messages();
    assert_eq!(letters.len(), 10);
    assert!(letters
        .iter()
        .all(|m| m.header(dlh::ATTEMPTS) == Some("2")
            && m.header(dlh::REASON) == Some("always failing")));
}

/// A [`BatchResult`] fails only the messages it names: by id or by index, retryable or
/// permanent; the others are acknowledged and never come back.
pub async fn batch_handler_partial_failure(h: &Harness) {
    let g = earliest_group(h, "partial").await;
    publish_items(h, "partial", 0..20).await;
    let dead = dead_letters(h, "partial.dead").await;
    let calls = Calls::default();
    let seen = calls.clone();
    h.service
        .subscribe_batch(
            "partial",
            &g,
            move |batch: Batch<Item>| {
                seen.record(&batch);
                let mut result = BatchResult::new();
                for (index, item) in batch.iter().enumerate() {
                    let n = item.payload.n;
                    if n == 7 {
                        result.fail(&item.message.id, HandlerError::permanent("seven is bad"));
                    } else if n % 2 == 1 && item.message.attempt == 1 {
                        result.fail_at(index, HandlerError::retry("odd, try again"));
                    }
                }
                async move { result }
            },
            h.options().batch_size(100),
        )
        .await
        .expect("subscribe_batch");
    dead.wait_len(1, "the dead letter of 7").await;
    // 20 first deliveries, then the 9 odd ones other than 7 again.
    wait_for("the retried odd messages", || calls.handled() >= 29).await;
    wait_settled(h, "partial", &g).await;
    let mut deliveries: HashMap<usize, Vec<u32>> = HashMap::new();
    for (n, attempt, _) in calls.all().into_iter().flatten() {
        deliveries.entry(n).or_default().push(attempt);
    }
    for n in 0..20 {
        let expected: &[u32] = if n % 2 == 1 && n != 7 { &[1, 2] } else { &[1] };
        assert_eq!(
            deliveries.get(&n).map(Vec::as_slice),
            Some(expected),
            "message {n}"
        );
    }
    let letters = dead.messages();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].header(dlh::REASON), Some("seven is bad"));
    assert_eq!(
        serde_json::from_slice::<Item>(&letters[0].payload)
            .expect("the dead letter keeps the payload")
            .n,
        7
    );
}

/// A short batch waits up to `batch_wait` for more messages: messages published one by one
/// within it reach the handler in one call, which runs as soon as the batch is full.
pub async fn batch_handler_waits_to_fill(h: &Harness) {
    let g = group();
    let calls = Calls::default();
    h.service
        .subscribe_batch(
            "fill",
            &g,
            calls.ok_handler(),
            h.options()
                .batch_size(5)
                .batch_wait(Duration::from_secs(5))
                .poll_interval(Duration::from_secs(60)),
        )
        .await
        .expect("subscribe_batch");
    h.wait_idle("fill").await;
    let started = Instant::now();
    for n in 0..5 {
        publish_items(h, "fill", n..n + 1).await;
    }
    wait_for("the batch of five", || calls.handled() >= 5).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a full batch runs at once, without waiting out batch_wait"
    );
    let all = calls.all();
    assert_eq!(all.len(), 1, "one call: {all:?}");
    let handled: Vec<usize> = all[0].iter().map(|(n, _, _)| *n).collect();
    assert_eq!(handled, [0, 1, 2, 3, 4]);
    wait_settled(h, "fill", &g).await;
}

/// Bad batch options are refused at subscribe, with what to do.
pub async fn batch_handler_options_are_checked(h: &Harness) {
    let handler = |_: Batch<Item>| async { Ok::<(), HandlerError>(()) };
    let zero = h
        .service
        .subscribe_batch("opts", &group(), handler, h.options().batch_size(0))
        .await
        .expect_err("batch_size 0");
    assert!(zero.to_string().contains("batch_size"), "{zero}");
    let long_wait = h
        .service
        .subscribe_batch(
            "opts",
            &group(),
            handler,
            h.options()
                .visibility_timeout(Duration::from_secs(1))
                .batch_wait(Duration::from_secs(2)),
        )
        .await
        .expect_err("batch_wait over the visibility timeout");
    assert!(long_wait.to_string().contains("batch_wait"), "{long_wait}");
    let ordered = h
        .service
        .subscribe_batch(
            "opts",
            &group(),
            handler,
            h.options().ordered(crate::Order::Key),
        )
        .await
        .expect_err("a batch handler ordered by key");
    assert!(ordered.to_string().contains("ordered"), "{ordered}");
    let heartbeat = h
        .service
        .subscribe_batch("opts", &group(), handler, h.options().heartbeat(true))
        .await
        .expect_err("a batch handler with the heartbeat");
    assert!(heartbeat.to_string().contains("heartbeat"), "{heartbeat}");
}
