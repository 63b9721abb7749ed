//! Redis Cluster: the `redis+cluster://` URL, the parts of the contract that span two
//! streams (a dead letter, a redrive: two hash tags, so two slots), and listing the keys of
//! every primary.
//!
//! Everything else is the single-server code over a cluster connection: each script names
//! keys of one stream (`streams:{N}` and its side keys, one hash tag, so one slot), and the
//! cluster client routes it to the primary serving that slot, following `MOVED` / `ASK`
//! while slots move and a replica takes over.

use ::redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use ::redis::{RedisResult, Value};

use super::{deadlines_key, fields, millis, stream_key, RedisBackend};
use crate::backend::{Claim, GroupRef};
use crate::error::Result;
use crate::message::NewMessage;

/// The schemes of a cluster URL: `redis+cluster://` (plain) and `rediss+cluster://` (TLS).
pub(super) const SCHEMES: [(&str, &str); 2] = [
    ("redis+cluster://", "redis"),
    ("rediss+cluster://", "rediss"),
];

/// Whether `url` names a cluster.
pub(super) fn is_cluster_url(url: &str) -> bool {
    SCHEMES.iter().any(|(scheme, _)| url.starts_with(scheme))
}

/// The node URLs of `redis+cluster://[user:password@]host[:port],host[:port],...[/0][?query]`:
/// one `redis://[user:password@]host[:port][?query]` per listed node (the seed nodes; the
/// client learns the others from the cluster). `Err` says what is wrong.
pub(super) fn node_urls(url: &str) -> Result<Vec<String>, String> {
    let (rest, scheme) = SCHEMES
        .iter()
        .find_map(|(prefix, scheme)| url.strip_prefix(prefix).map(|rest| (rest, *scheme)))
        .ok_or_else(|| {
            "the URL does not start with redis+cluster:// or rediss+cluster://".to_owned()
        })?;
    let (userinfo, rest) = match rest.rfind('@') {
        Some(at) => (&rest[..=at], &rest[at + 1..]),
        None => ("", rest),
    };
    let hosts_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (hosts, tail) = rest.split_at(hosts_end);
    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, format!("?{query}")),
        None => (tail, String::new()),
    };
    if !matches!(path, "" | "/" | "/0") {
        return Err(format!(
            "a Redis Cluster has only database 0, and the URL names {path:?}"
        ));
    }
    let nodes: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|host| format!("{scheme}://{userinfo}{host}{query}"))
        .collect();
    if nodes.is_empty() {
        return Err("the URL names no node (write host:port[,host:port...])".to_owned());
    }
    Ok(nodes)
}

/// The addresses (host, port) of the primaries, from `CLUSTER SLOTS`.
pub(super) async fn primaries(
    conn: &mut ::redis::cluster_async::ClusterConnection,
) -> RedisResult<Vec<(String, u16)>> {
    let reply: Value = conn
        .route_command(
            ::redis::cmd("CLUSTER").arg("SLOTS").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
        )
        .await?;
    let mut out = Vec::new();
    if let Value::Array(ranges) = reply {
        for range in ranges {
            let Value::Array(cells) = range else { continue };
            // {start, end, {host, port, id, ...}, replicas...}
            let Some(Value::Array(primary)) = cells.get(2) else {
                continue;
            };
            let host = match primary.first() {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                _ => continue,
            };
            let Some(Value::Int(port)) = primary.get(1) else {
                continue;
            };
            let Ok(port) = u16::try_from(*port) else {
                continue;
            };
            if !out.contains(&(host.clone(), port)) {
                out.push((host, port));
            }
        }
    }
    Ok(out)
}

/// One page of `SCAN cursor MATCH pattern COUNT 1000` on the node at `(host, port)`.
pub(super) async fn scan_node(
    conn: &mut ::redis::cluster_async::ClusterConnection,
    node: &(String, u16),
    cursor: u64,
    pattern: &str,
) -> RedisResult<(u64, Vec<String>)> {
    let reply = conn
        .route_command(
            ::redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: node.0.clone(),
                port: node.1,
            }),
        )
        .await?;
    Ok(::redis::FromRedisValue::from_redis_value(reply)?)
}

/// The steps of a move across slots (a dead letter, a redrive), after each of which a test
/// may stop the move as a crash would ([`RedisBackend::stop_moves_after`]).
pub(super) mod step {
    /// In the source's slot: the claim leased (a dead letter) or the redrive lock taken.
    pub const TAKEN: u8 = 1;
    /// In the target's slot: the copy appended with its marker.
    pub const WRITTEN: u8 = 2;
    /// In the source's slot: the original acknowledged (a dead letter) or deleted.
    pub const REMOVED: u8 = 3;
}

/// The default of [`RedisBackend::move_lease`].
pub const DEFAULT_MOVE_LEASE: std::time::Duration = std::time::Duration::from_secs(30);

/// Leases a held claim for a dead-letter move: its deadline goes `lease` ms ahead (never
/// back), so no one takes it over while the move runs.
/// KEYS: stream, the group's claim deadlines. ARGV: group, consumer, id, token, lease in ms.
/// Returns 1 if the claim is held (and now leased), else 0.
static LEASE: std::sync::LazyLock<::redis::Script> = std::sync::LazyLock::new(|| {
    ::redis::Script::new(&format!(
        "{}{}",
        super::scripts::HELD,
        r"
if not held(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]) then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], 'GT', now + tonumber(ARGV[5]), ARGV[3])
return 1
"
    ))
});

/// How long the marker of a move across slots is kept (it is never deleted earlier: a
/// mover stalled past its lease may still come to write, and must find it).
pub const MARKER_LIFE: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// Appends the field/value strings ARGV[2..] to stream KEYS[1] unless marker KEYS[2] (a key
/// in the same slot, kept for ARGV[1] ms) says it was done: the new id, kept in the marker,
/// or the id the marker holds. Repeating it (a retry after a lost reply, a second mover, a
/// crash's second try) never appends twice.
static WRITE_ONCE: std::sync::LazyLock<::redis::Script> = std::sync::LazyLock::new(|| {
    ::redis::Script::new(
        r"
local done = redis.call('GET', KEYS[2])
if done then return done end
local args = {'XADD', KEYS[1], '*'}
for i = 2, #ARGV do args[#args + 1] = ARGV[i] end
local id = redis.call(unpack(args))
redis.call('SET', KEYS[2], id, 'PX', ARGV[1])
return id
",
    )
});

/// Takes the redrive lock KEYS[2] (value ARGV[3], for ARGV[2] ms) on entry ARGV[1] of
/// KEYS[1], if the entry is there and no one holds the lock. Returns 1 if taken.
static MOVE_LOCK: std::sync::LazyLock<::redis::Script> = std::sync::LazyLock::new(|| {
    ::redis::Script::new(
        r"
if redis.call('TYPE', KEYS[1]).ok ~= 'stream' then return 0 end
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then return 0 end
if not redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[2]) then return 0 end
return 1
",
    )
});

/// Deletes entry ARGV[2] of KEYS[1] (from every group's pending list too) and the redrive
/// lock KEYS[2], if the lock still holds our value ARGV[1]. Returns 1 if the entry was
/// deleted, 0 if it was gone, -1 if the lock expired (another redrive may hold it now).
static MOVE_FINISH: std::sync::LazyLock<::redis::Script> = std::sync::LazyLock::new(|| {
    ::redis::Script::new(&format!(
        "{}{}{}",
        super::ordered::LEAVE,
        super::admin::REMOVE,
        r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[2])
if redis.call('TYPE', KEYS[1]).ok ~= 'stream' then return 0 end
if remove(KEYS[1], ARGV[2]) then return 1 end
return 0
"
    ))
});

/// The marker of the dead letter of `id` of `stream` for `group`, in the dead-letter
/// stream `to`'s slot: `streams:{to}:dead:<length of stream>:<stream>:<group>:<id>` (the
/// length keeps stream and group apart whatever they hold).
pub(super) fn dead_letter_marker(to: &str, stream: &str, group: &str, id: &str) -> String {
    let stream = super::escape(stream);
    format!(
        "{}:dead:{}:{stream}:{group}:{id}",
        stream_key(to),
        stream.len()
    )
}

/// The marker of the redrive of `id` of `from` to `to`, in `to`'s slot:
/// `streams:{to}:moved:<from>:<id>`.
pub(super) fn move_marker(to: &str, from: &str, id: &str) -> String {
    format!("{}:moved:{}:{id}", stream_key(to), super::escape(from))
}

impl RedisBackend {
    /// How long a dead-letter move or a redrive between two streams of a Redis Cluster
    /// (which live in two slots, so no one script reaches both) holds its message: the
    /// claim is leased, or the redrive locked, for this long (default 30 s). A process that
    /// dies mid-move leaves the message to come back after it, and the next move finds the
    /// copy already written (a marker next to it, kept for [`MARKER_LIFE`]) and does not
    /// write it again. Keep it well above the time one
    /// move takes (three round trips); a single server moves in one script and ignores it.
    pub fn move_lease(mut self, lease: std::time::Duration) -> Self {
        self.move_lease = lease;
        self
    }

    /// Makes the next move across slots stop right after `step` (1: taken, 2: copy
    /// written, 3: original removed) with an error, as a crash there would: the fault hook
    /// of the tests that try to break the moves. `None` disarms it.
    #[cfg(feature = "conformance")]
    #[doc(hidden)]
    pub fn stop_moves_after(&self, step: Option<u8>) {
        self.stop_after
            .store(step.unwrap_or(0), std::sync::atomic::Ordering::SeqCst);
    }

    /// The fault hook: an error if a test asked the move to stop after `reached` (once).
    fn stop_here(&self, reached: u8, what: &str) -> Result<()> {
        use std::sync::atomic::Ordering;
        if self
            .stop_after
            .compare_exchange(reached, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return Err(crate::error::Error::backend(
                super::NAME,
                what.to_owned(),
                format!("stopped after step {reached} by the fault hook"),
            ));
        }
        Ok(())
    }

    /// Step 2 of a move: appends `message` to `to` unless `marker` says it was (the id).
    async fn write_once(
        &self,
        to: &str,
        marker: &str,
        message: NewMessage,
        what: impl FnOnce() -> String,
    ) -> Result<String> {
        let mut write = WRITE_ONCE.prepare_invoke();
        write
            .key(stream_key(to))
            .key(marker)
            .arg(millis(MARKER_LIFE))
            .arg(fields(message));
        self.run_settling(&write, what).await
    }

    /// A dead letter on a cluster, where the dead-letter stream lives in another slot than
    /// its source, so no one script can reach both:
    ///
    /// 1. in the source's slot: lease the claim (its deadline [`move_lease`](Self::move_lease)
    ///    ahead), only if it is still held; a stale claim writes nothing;
    /// 2. in the dead-letter stream's slot: append the dead letter and a marker
    ///    ([`dead_letter_marker`]: stream, group, id) in one script, unless the marker is
    ///    there already (then nothing is appended);
    /// 3. in the source's slot: the fenced ack.
    ///
    /// A crash after 1 or 2 leaves the claim pending: it is delivered again once the lease
    /// passes, and its next dead letter finds the marker (after 2) instead of appending a
    /// second copy. The marker is not deleted after 3: a mover stalled past its lease
    /// between 1 and 2 (its claim taken over and dead-lettered meanwhile) must find it too;
    /// it expires after [`MARKER_LIFE`].
    pub(super) async fn dead_letter_across_slots(
        &self,
        group: GroupRef<'_>,
        claim: &Claim,
        to: &str,
        message: NewMessage,
        ordered: bool,
    ) -> Result<bool> {
        let what = || format!("moving {} of {} to {to}", claim.id, group.stream);
        let mut lease = LEASE.prepare_invoke();
        lease
            .key(stream_key(group.stream))
            .key(deadlines_key(group.stream, group.group))
            .arg(group.group)
            .arg(group.consumer)
            .arg(claim.id.as_str())
            .arg(claim.token.0)
            .arg(millis(self.move_lease));
        let held: i64 = self.run_settling(&lease, what).await?;
        if held == 0 {
            return Ok(false);
        }
        self.stop_here(step::TAKEN, &what())?;
        let marker = dead_letter_marker(to, group.stream, group.group, claim.id.as_str());
        let _dead_id = self.write_once(to, &marker, message, what).await?;
        self.wakeups.notify(to);
        self.stop_here(step::WRITTEN, &what())?;
        let acked: u64 = if ordered {
            let ack = super::ordered::ack_invocation(group, std::slice::from_ref(claim));
            self.run_settling(&ack, what).await?
        } else {
            let mut ack = self.scripts.ack.prepare_invoke();
            ack.key(stream_key(group.stream))
                .key(deadlines_key(group.stream, group.group))
                .arg(group.group)
                .arg(group.consumer)
                // The batch's id range: the one id.
                .arg(claim.id.as_str())
                .arg(claim.id.as_str())
                .arg(claim.id.as_str())
                .arg(claim.token.0);
            self.run_settling(&ack, what).await?
        };
        self.stop_here(step::REMOVED, &what())?;
        if acked == 0 {
            // Its next owner finds the marker, so it does not write the dead letter again.
            tracing::warn!(
                stream = %group.stream, group = %group.group, id = %claim.id,
                "the dead-letter move outlasted its lease and the claim was taken over; the \
                 dead letter is written once, and the message is delivered again"
            );
        }
        Ok(true)
    }

    /// A redrive on a cluster (source and target in two slots):
    ///
    /// 1. in the source's slot: take the entry's redrive lock (`streams:{N}:redrive:<id>`,
    ///    holding a value of this call's own, for [`move_lease`](Self::move_lease)), while
    ///    the entry is there, so of concurrent redrives one moves it and the others find it
    ///    taken;
    /// 2. in the target's slot: append the new message and a marker ([`move_marker`]) in
    ///    one script, unless the marker is there (then its id is the new message's);
    /// 3. in the source's slot: delete the entry and the lock, if the lock is still ours.
    ///
    /// A crash after 1 or 2 leaves the entry where it was: a redrive once the lock expires
    /// moves it, and after 2 finds the marker, so the target holds it once. A lock that
    /// expired mid-move (the move outlasted it) makes step 3 refuse: the other redrive that
    /// may hold the lock now finishes the move with the same copy. The marker stays (for
    /// [`MARKER_LIFE`]), so a redrive stalled past its lock between 1 and 2 finds it too.
    pub(super) async fn move_across_slots(
        &self,
        from: &str,
        id: &str,
        to: &str,
        message: NewMessage,
    ) -> Result<Option<String>> {
        let what = || format!("moving {id} of {from} to {to}");
        let mut conn = self.conn.clone();
        let lock = format!("{}:redrive:{id}", stream_key(from));
        let mine = format!("{:016x}", crate::engine::random_u64());
        let mut take = MOVE_LOCK.prepare_invoke();
        take.key(stream_key(from))
            .key(&lock)
            .arg(id)
            .arg(millis(self.move_lease))
            .arg(&mine);
        let taken: i64 = take
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(what(), e))?;
        if taken == 0 {
            return Ok(None);
        }
        self.stop_here(step::TAKEN, &what())?;
        let new_id = self
            .write_once(to, &move_marker(to, from, id), message, what)
            .await?;
        self.stop_here(step::WRITTEN, &what())?;
        let mut finish = MOVE_FINISH.prepare_invoke();
        finish.key(stream_key(from)).key(&lock).arg(&mine).arg(id);
        let finished: i64 = self.run_settling(&finish, what).await?;
        self.stop_here(step::REMOVED, &what())?;
        if finished < 0 {
            return Err(crate::error::Error::backend(
                super::NAME,
                what(),
                format!(
                    "the move outlasted its lock ({:?}), so another move may have finished it; \
                     the copy {new_id} is written once: if the original is still there, move it \
                     again to finish (it is not copied twice)",
                    self.move_lease
                ),
            ));
        }
        Ok(Some(new_id))
    }

    /// The keys matching `pattern` on every primary of the cluster (`SCAN` per node: a
    /// cluster-wide `SCAN` does not exist), deduplicated.
    pub(super) async fn scan_cluster(&self, pattern: &str) -> Result<Vec<String>> {
        let mut conn = self.conn.clone();
        let Some(cluster) = conn.cluster() else {
            return Ok(Vec::new());
        };
        let nodes = primaries(cluster)
            .await
            .map_err(|e| self.error("listing the cluster's nodes".to_owned(), e))?;
        let mut keys = Vec::new();
        for node in &nodes {
            let mut cursor = 0;
            loop {
                let (next, page) =
                    scan_node(cluster, node, cursor, pattern)
                        .await
                        .map_err(|e| {
                            self.error(format!("listing streams on {}:{}", node.0, node.1), e)
                        })?;
                keys.extend(page);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_url_lists_its_seed_nodes() {
        assert_eq!(
            node_urls("redis+cluster://h1:7000,h2:7001").ok(),
            Some(vec![
                "redis://h1:7000".to_owned(),
                "redis://h2:7001".to_owned()
            ])
        );
        assert_eq!(
            node_urls("rediss+cluster://u:p%40ss@h1,h2:7001/0?insecure").ok(),
            Some(vec![
                "rediss://u:p%40ss@h1?insecure".to_owned(),
                "rediss://u:p%40ss@h2:7001?insecure".to_owned()
            ])
        );
        assert!(node_urls("redis+cluster://h1:7000/3").is_err());
        assert!(node_urls("redis+cluster://").is_err());
        assert!(is_cluster_url("redis+cluster://h"));
        assert!(!is_cluster_url("redis://h"));
    }
}
