//! The raw NATS JetStream ceiling: publishes acknowledged by JetStream (one at a time, or a
//! batch in flight with its acks awaited together), and a durable pull consumer whose
//! batches are acked message by message (`+ACK` on each reply subject, sent without
//! waiting; the next pull follows them on the same connection).

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

use super::Raw;
use crate::BoxError;

/// Connects and creates the stream `BENCH-RAW-<tag>` on subjects `bench-raw.<tag>.>`.
pub(super) async fn connect(url: &str, tag: &str) -> Result<Raw, BoxError> {
    let client = async_nats::connect(url).await?;
    let stream = format!("BENCH-RAW-{tag}");
    let prefix = format!("bench-raw.{tag}");
    request(
        &client,
        format!("$JS.API.STREAM.CREATE.{stream}"),
        json!({
            "name": stream,
            "subjects": [format!("{prefix}.>")],
            "storage": "file",
            "retention": "limits",
            "num_replicas": 1,
            "discard": "old",
        }),
    )
    .await?;
    Ok(Raw::Nats {
        client,
        stream,
        prefix,
    })
}

/// One `$JS.API` request; JetStream's error answer as an error.
pub(super) async fn request(
    client: &async_nats::Client,
    subject: String,
    body: Value,
) -> Result<Value, BoxError> {
    let reply = client
        .request(subject.clone(), body.to_string().into())
        .await?;
    let value: Value = serde_json::from_slice(&reply.payload)?;
    if let Some(error) = value.get("error") {
        return Err(format!("{subject}: {error}").into());
    }
    Ok(value)
}

/// A publish JetStream acknowledged (stored).
pub(super) async fn publish(
    client: &async_nats::Client,
    subject: &str,
    payload: bytes::Bytes,
) -> Result<(), BoxError> {
    let ack = client.request(subject.to_owned(), payload).await?;
    let value: Value = serde_json::from_slice(&ack.payload)?;
    if value.get("seq").and_then(Value::as_u64).is_none() {
        return Err(format!("publish not stored: {value}").into());
    }
    Ok(())
}

/// Drains `n` messages of `<prefix>.queue` with a durable pull consumer, `batch` at a time,
/// until all are acked or `cap` passed since `start`; how many were.
pub(super) async fn consume(
    client: &async_nats::Client,
    stream: &str,
    prefix: &str,
    n: usize,
    batch: usize,
    start: Instant,
    cap: Duration,
) -> Result<usize, BoxError> {
    let durable = "raw";
    request(
        client,
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}"),
        json!({
            "stream_name": stream,
            "config": {
                "durable_name": durable,
                "ack_policy": "explicit",
                "deliver_policy": "all",
                "filter_subject": format!("{prefix}.queue"),
                "ack_wait": 30_000_000_000u64,
                "max_ack_pending": -1,
            },
        }),
    )
    .await?;
    let inbox = client.new_inbox();
    let mut deliveries = client.subscribe(inbox.clone()).await?;
    let next = format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}");
    let mut seen = 0;
    while seen < n && start.elapsed() < cap {
        let want = batch.min(n - seen);
        client
            .publish_with_reply(
                next.clone(),
                inbox.clone(),
                json!({ "batch": want, "expires": 5_000_000_000u64 })
                    .to_string()
                    .into(),
            )
            .await?;
        let mut got = 0;
        while got < want {
            let message = tokio::time::timeout(Duration::from_secs(10), deliveries.next())
                .await
                .map_err(|_| "no message within 10 s")?
                .ok_or("the subscription closed")?;
            if message.status.is_some() {
                return Err(format!("pull answered {:?}", message.status).into());
            }
            let reply = message.reply.ok_or("a message without a reply subject")?;
            client.publish(reply, "+ACK".into()).await?;
            got += 1;
        }
        seen += got;
    }
    client.flush().await?;
    drop(deliveries);
    request(
        client,
        format!("$JS.API.CONSUMER.DELETE.{stream}.{durable}"),
        json!({}),
    )
    .await?;
    Ok(seen)
}
