//! The few JetStream API calls this backend makes, as plain JSON requests over core NATS
//! (`$JS.API.*`), so every server from 2.9 on answers in a shape it can read.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::{Client, HeaderMap};
use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{failed, NAME};
use crate::error::{Error, Result};

/// A JetStream stream not found.
pub(super) const STREAM_NOT_FOUND: u64 = 10059;
/// No message at the sequence (or for the subject) asked for.
const NO_MESSAGE_FOUND: u64 = 10037;
/// A compare-and-set publish whose expected last sequence did not match.
pub(super) const WRONG_LAST_SEQUENCE: u64 = 10071;

/// An error JetStream answered with.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct ApiError {
    #[serde(default)]
    pub err_code: u64,
    #[serde(default)]
    pub description: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JetStream error {}: {}", self.err_code, self.description)
    }
}

impl std::error::Error for ApiError {}

#[derive(Debug, Deserialize)]
pub(super) struct PubAck {
    pub seq: u64,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct StreamState {
    #[serde(default)]
    pub messages: u64,
    #[serde(default)]
    pub last_seq: u64,
    #[serde(default)]
    pub subjects: Option<std::collections::HashMap<String, u64>>,
    /// When the last message was stored (RFC 3339; year 1 when never).
    #[serde(default)]
    pub last_ts: String,
}

#[derive(Debug, Deserialize)]
struct StreamInfo {
    #[serde(default)]
    state: StreamState,
    /// When the stream was created (RFC 3339).
    #[serde(default)]
    created: String,
}

#[derive(Debug, Deserialize)]
struct RawMessage {
    seq: u64,
    #[serde(default)]
    hdrs: Option<String>,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    time: String,
}

#[derive(Debug, Deserialize)]
struct GetResponse {
    message: RawMessage,
}

/// A stored message.
#[derive(Debug, Clone)]
pub(super) struct StoredMessage {
    pub seq: u64,
    pub payload: Bytes,
    /// Header name and value pairs, in order.
    pub headers: Vec<(String, String)>,
    pub time: SystemTime,
}

impl StoredMessage {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Which message a get asks for.
#[derive(Debug, Clone, Copy)]
pub(super) enum Get<'a> {
    /// Exactly this sequence.
    At(u64),
    /// The first at or after this sequence on the subject.
    NextFrom(u64, &'a str),
    /// The last on the subject.
    Last(&'a str),
}

/// The header block of a stored message (`NATS/1.0\r\nName: value\r\n...`).
fn parse_headers(block: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(block);
    text.split("\r\n")
        .skip(1)
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_owned(), value.trim_start().to_owned()))
        })
        .collect()
}

/// An RFC 3339 UTC time as the server writes it (`2026-01-02T03:04:05.123456789Z`).
fn parse_time(text: &str) -> Option<SystemTime> {
    let text = text.strip_suffix('Z')?;
    let (date, clock) = text.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    // Days from 1970-01-01 to y-m-d (proleptic Gregorian).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    let nanos = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().take(9).collect();
        digits.parse::<u64>().ok()? * 10u64.pow(9 - digits.len() as u32)
    };
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs) + Duration::from_nanos(nanos))
}

/// The JetStream API over one client.
#[derive(Debug, Clone)]
pub(super) struct Js {
    pub client: Client,
}

impl Js {
    /// One API request; the inner error is JetStream's answer.
    async fn api<T: DeserializeOwned>(
        &self,
        what: &str,
        subject: String,
        body: Value,
    ) -> Result<std::result::Result<T, ApiError>> {
        let payload = Bytes::from(body.to_string());
        let reply = self
            .client
            .request(subject, payload)
            .await
            .map_err(|e| failed(what.to_owned(), e))?;
        parse_reply(what, &reply.payload)
    }

    pub async fn create_stream(
        &self,
        name: &str,
        subjects: &[String],
        replicas: usize,
        per_subject: Option<i64>,
    ) -> Result<()> {
        let mut config = json!({
            "name": name,
            "subjects": subjects,
            "retention": "limits",
            "storage": "file",
            "discard": "old",
            "num_replicas": replicas,
            "max_consumers": -1,
            "max_msgs": -1,
            "max_bytes": -1,
            "max_age": 0,
            "max_msg_size": -1,
            "max_msgs_per_subject": per_subject.unwrap_or(-1),
            "duplicate_window": 120_000_000_000u64,
        });
        if per_subject.is_some() {
            config["allow_rollup_hdrs"] = json!(false);
        }
        let what = format!("creating JetStream stream {name}");
        match self
            .api::<Value>(&what, format!("$JS.API.STREAM.CREATE.{name}"), config)
            .await?
        {
            Ok(_) => Ok(()),
            // Already in use: created before (by this or another process).
            Err(e) if e.err_code == 10058 => Ok(()),
            Err(e) => Err(failed(what, e)),
        }
    }

    /// A stream's state (with the subjects matching `subjects`, when given); `None` when the
    /// stream does not exist.
    pub async fn stream_state(
        &self,
        name: &str,
        subjects: Option<&str>,
    ) -> Result<Option<StreamState>> {
        let what = format!("reading JetStream stream {name}");
        let body = match subjects {
            Some(filter) => json!({ "subjects_filter": filter }),
            None => json!({}),
        };
        match self
            .api::<StreamInfo>(&what, format!("$JS.API.STREAM.INFO.{name}"), body)
            .await?
        {
            Ok(info) => Ok(Some(info.state)),
            Err(e) if e.err_code == STREAM_NOT_FOUND => Ok(None),
            Err(e) => Err(failed(what, e)),
        }
    }

    /// When stream `name` was last written to, or created if later; `None` when there is
    /// no such stream.
    pub async fn last_active(&self, name: &str) -> Result<Option<SystemTime>> {
        let what = format!("reading JetStream stream {name}");
        match self
            .api::<StreamInfo>(&what, format!("$JS.API.STREAM.INFO.{name}"), json!({}))
            .await?
        {
            Ok(info) => Ok(Some(
                [info.created.as_str(), info.state.last_ts.as_str()]
                    .into_iter()
                    .filter_map(parse_time)
                    .max()
                    .unwrap_or(UNIX_EPOCH),
            )),
            Err(e) if e.err_code == STREAM_NOT_FOUND => Ok(None),
            Err(e) => Err(failed(what, e)),
        }
    }

    /// One stored message, `None` when there is none (or no stream).
    pub async fn get(&self, name: &str, get: Get<'_>) -> Result<Option<StoredMessage>> {
        let body = match get {
            Get::At(seq) => json!({ "seq": seq }),
            Get::NextFrom(seq, subject) => json!({ "seq": seq, "next_by_subj": subject }),
            Get::Last(subject) => json!({ "last_by_subj": subject }),
        };
        let what = format!("reading a message of JetStream stream {name}");
        let response = match self
            .api::<GetResponse>(&what, format!("$JS.API.STREAM.MSG.GET.{name}"), body)
            .await?
        {
            Ok(response) => response,
            Err(e) if e.err_code == NO_MESSAGE_FOUND || e.err_code == STREAM_NOT_FOUND => {
                return Ok(None)
            }
            Err(e) => return Err(failed(what, e)),
        };
        let raw = response.message;
        let decode = |text: Option<String>| -> Result<Vec<u8>> {
            match text {
                Some(text) => base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|e| failed(what.clone(), e)),
                None => Ok(Vec::new()),
            }
        };
        let payload = Bytes::from(decode(raw.data)?);
        let headers = parse_headers(&decode(raw.hdrs)?);
        Ok(Some(StoredMessage {
            seq: raw.seq,
            payload,
            headers,
            time: parse_time(&raw.time).unwrap_or(UNIX_EPOCH),
        }))
    }

    /// Deletes one message; whether the stream held it.
    pub async fn delete(&self, name: &str, seq: u64) -> Result<bool> {
        let what = format!("deleting message {seq} of JetStream stream {name}");
        match self
            .api::<Value>(
                &what,
                format!("$JS.API.STREAM.MSG.DELETE.{name}"),
                json!({ "seq": seq, "no_erase": true }),
            )
            .await?
        {
            Ok(v) => Ok(v.get("success").and_then(Value::as_bool).unwrap_or(false)),
            Err(_) => Ok(false),
        }
    }

    /// Purges messages: keeping the newest `keep`, or those from sequence `upto` on.
    pub async fn purge(&self, name: &str, keep: Option<u64>, upto: Option<u64>) -> Result<u64> {
        let what = format!("trimming JetStream stream {name}");
        let mut body = json!({});
        if let Some(keep) = keep {
            body["keep"] = json!(keep);
        }
        if let Some(upto) = upto {
            body["seq"] = json!(upto);
        }
        match self
            .api::<Value>(&what, format!("$JS.API.STREAM.PURGE.{name}"), body)
            .await?
        {
            Ok(v) => Ok(v.get("purged").and_then(Value::as_u64).unwrap_or(0)),
            Err(e) => Err(failed(what, e)),
        }
    }

    /// Purges the messages on subjects matching `filter`.
    pub async fn purge_subjects(&self, name: &str, filter: &str) -> Result<u64> {
        let what = format!("purging {filter} of JetStream stream {name}");
        match self
            .api::<Value>(
                &what,
                format!("$JS.API.STREAM.PURGE.{name}"),
                json!({ "filter": filter }),
            )
            .await?
        {
            Ok(v) => Ok(v.get("purged").and_then(Value::as_u64).unwrap_or(0)),
            Err(e) => Err(failed(what, e)),
        }
    }

    /// Deletes a stream; false when there was none.
    pub async fn delete_stream(&self, name: &str) -> Result<bool> {
        let what = format!("deleting JetStream stream {name}");
        match self
            .api::<Value>(&what, format!("$JS.API.STREAM.DELETE.{name}"), json!({}))
            .await?
        {
            Ok(v) => Ok(v.get("success").and_then(Value::as_bool).unwrap_or(false)),
            Err(e) if e.err_code == STREAM_NOT_FOUND => Ok(false),
            Err(e) => Err(failed(what, e)),
        }
    }

    /// Every stream's name.
    pub async fn stream_names(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        loop {
            let page: Value = self
                .api::<Value>(
                    "listing JetStream streams",
                    "$JS.API.STREAM.NAMES".to_owned(),
                    json!({ "offset": names.len() }),
                )
                .await?
                .map_err(|e| failed("listing JetStream streams", e))?;
            let total = page.get("total").and_then(Value::as_u64).unwrap_or(0);
            let got: Vec<String> = page
                .get("streams")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let empty = got.is_empty();
            names.extend(got);
            if empty || names.len() as u64 >= total {
                return Ok(names);
            }
        }
    }

    /// Publishes one message and waits for the stream's ack; the inner error is JetStream's
    /// refusal (a wrong expected sequence, say).
    pub async fn publish(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<std::result::Result<PubAck, ApiError>> {
        let what = format!("publishing to {subject}");
        let reply = self
            .client
            .request_with_headers(subject, headers, payload)
            .await
            .map_err(|e| failed(what.clone(), e))?;
        parse_reply(&what, &reply.payload)
    }

    /// Publishes messages in order and waits for every ack: one reply subscription, the
    /// publishes pipelined.
    pub async fn publish_batch(
        &self,
        subject: &str,
        messages: Vec<(HeaderMap, Bytes)>,
    ) -> Result<Vec<u64>> {
        let what = format!("publishing to {subject}");
        let inbox = self.client.new_inbox();
        let mut replies = self
            .client
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(|e| failed(what.clone(), e))?;
        let count = messages.len();
        for (i, (headers, payload)) in messages.into_iter().enumerate() {
            self.client
                .publish_with_reply_and_headers(
                    subject.to_owned(),
                    format!("{inbox}.{i}"),
                    headers,
                    payload,
                )
                .await
                .map_err(|e| failed(what.clone(), e))?;
        }
        let mut seqs = vec![0; count];
        let mut got = 0;
        let wait = Duration::from_secs(10);
        while got < count {
            let reply = tokio::time::timeout(wait, replies.next())
                .await
                .map_err(|_| failed(what.clone(), "no ack from JetStream within 10s"))?
                .ok_or_else(|| failed(what.clone(), "the connection closed before the acks"))?;
            let index = reply
                .subject
                .rsplit('.')
                .next()
                .and_then(|i| i.parse::<usize>().ok())
                .filter(|&i| i < count);
            let Some(index) = index else { continue };
            let ack: PubAck = parse_reply(&what, &reply.payload)?.map_err(|e| {
                failed(
                    what.clone(),
                    format!("{e}; is another JetStream stream bound to this subject?"),
                )
            })?;
            if seqs[index] == 0 {
                got += 1;
            }
            seqs[index] = ack.seq;
        }
        let _ = replies.unsubscribe().await;
        Ok(seqs)
    }
}

fn parse_reply<T: DeserializeOwned>(
    what: &str,
    payload: &[u8],
) -> Result<std::result::Result<T, ApiError>> {
    let value: Value = serde_json::from_slice(payload).map_err(|e| {
        failed(
            what.to_owned(),
            format!("unreadable JetStream reply ({e}); is JetStream enabled (-js)?"),
        )
    })?;
    if let Some(error) = value.get("error") {
        let error: ApiError = serde_json::from_value(error.clone()).unwrap_or(ApiError {
            err_code: 0,
            description: error.to_string(),
        });
        return Ok(Err(error));
    }
    serde_json::from_value(value)
        .map(Ok)
        .map_err(|e| Error::backend(NAME, what.to_owned(), e))
}

#[cfg(test)]
mod tests {
    use super::{parse_headers, parse_time};
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn server_times_parse() {
        assert_eq!(
            parse_time("1970-01-02T00:00:01.5Z"),
            UNIX_EPOCH.checked_add(Duration::from_millis(86_401_500))
        );
        assert_eq!(
            parse_time("2026-12-03T10:47:46.678413557Z"),
            UNIX_EPOCH.checked_add(Duration::new(1_796_294_866, 678_413_557))
        );
        assert_eq!(parse_time("nonsense"), None);
    }

    #[test]
    fn header_blocks_parse() {
        let h = parse_headers(b"NATS/1.0\r\nA: 1\r\nStreams-Headers: {\"x\":\"y: z\"}\r\n\r\n");
        assert_eq!(
            h,
            [
                ("A".to_owned(), "1".to_owned()),
                ("Streams-Headers".to_owned(), "{\"x\":\"y: z\"}".to_owned())
            ]
        );
    }
}
