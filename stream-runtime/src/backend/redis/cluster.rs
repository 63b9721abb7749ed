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

/// Whether a claim is still held (the ownership check of every settling script), alone.
/// KEYS: stream. ARGV: group, consumer, id, token. Returns 1 or 0.
static HELD_CHECK: std::sync::LazyLock<::redis::Script> = std::sync::LazyLock::new(|| {
    ::redis::Script::new(&format!(
        "{}\nif held(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]) then return 1 end\nreturn 0\n",
        super::scripts::HELD
    ))
});

/// How long a redrive holds the lock on its entry.
const MOVE_LOCK_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// Takes the redrive lock KEYS[2] on entry ARGV[1] of KEYS[1] for ARGV[2] ms, if the entry
/// is there and no one holds the lock. Returns 1 if taken.
static MOVE_LOCK: std::sync::LazyLock<::redis::Script> = std::sync::LazyLock::new(|| {
    ::redis::Script::new(
        r"
if redis.call('TYPE', KEYS[1]).ok ~= 'stream' then return 0 end
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then return 0 end
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[2]) then return 0 end
return 1
",
    )
});

impl RedisBackend {
    /// Appends one message to `stream` (no trimming): its id.
    async fn add(&self, stream: &str, message: NewMessage) -> RedisResult<String> {
        ::redis::cmd("XADD")
            .arg(stream_key(stream))
            .arg("*")
            .arg(fields(message))
            .query_async(&mut self.conn.clone())
            .await
    }

    /// A dead letter on a cluster, where the dead-letter stream lives in another slot than
    /// its source, so no one script can reach both: (1) check the claim is still held,
    /// (2) append the dead letter, (3) acknowledge the claim with the fenced ack. A stale
    /// claim writes nothing. A crash between (2) and (3) leaves the claim to expire and be
    /// delivered again, so the message may be dead-lettered twice (never lost).
    pub(super) async fn dead_letter_across_slots(
        &self,
        group: GroupRef<'_>,
        claim: &Claim,
        to: &str,
        message: NewMessage,
        ordered: bool,
    ) -> Result<bool> {
        let what = || format!("moving {} of {} to {to}", claim.id, group.stream);
        let mut check = HELD_CHECK.prepare_invoke();
        check
            .key(stream_key(group.stream))
            .arg(group.group)
            .arg(group.consumer)
            .arg(claim.id.as_str())
            .arg(claim.token.0);
        let held: i64 = self.run_settling(&check, what).await?;
        if held == 0 {
            return Ok(false);
        }
        let _dead_id = self
            .add(to, message)
            .await
            .map_err(|e| self.error(what(), e))?;
        self.wakeups.notify(to);
        let acked: u64 = if ordered {
            let ack = super::ordered::ack_invocation(group, std::slice::from_ref(claim));
            self.run_settling(&ack, what).await?
        } else {
            let mut ack = self.scripts.ack.prepare_invoke();
            ack.key(stream_key(group.stream))
                .key(deadlines_key(group.stream, group.group))
                .arg(group.group)
                .arg(group.consumer)
                .arg(claim.id.as_str())
                .arg(claim.token.0);
            self.run_settling(&ack, what).await?
        };
        if acked == 0 {
            tracing::warn!(
                stream = %group.stream, group = %group.group, id = %claim.id,
                "the claim expired while its dead letter was written; the message will be \
                 delivered again"
            );
        }
        Ok(true)
    }

    /// A redrive on a cluster (source and target in two slots): take the entry's redrive
    /// lock (`streams:{N}:redrive:<id>`, in the source's slot, while the entry is there, so
    /// of concurrent redrives one moves it and the others find it taken), append the new
    /// message, then delete the entry (from every group's pending list too). A crash between
    /// the append and the delete leaves both: a redrive after the lock expires (30 s) may
    /// append it again.
    pub(super) async fn move_across_slots(
        &self,
        from: &str,
        id: &str,
        to: &str,
        message: NewMessage,
        delete: &::redis::Script,
    ) -> Result<Option<String>> {
        let what = || format!("moving {id} of {from} to {to}");
        let mut conn = self.conn.clone();
        let lock = format!("{}:redrive:{id}", stream_key(from));
        let mut take = MOVE_LOCK.prepare_invoke();
        take.key(stream_key(from))
            .key(&lock)
            .arg(id)
            .arg(millis(MOVE_LOCK_TTL));
        let taken: i64 = take
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(what(), e))?;
        if taken == 0 {
            return Ok(None);
        }
        let new_id = self
            .add(to, message)
            .await
            .map_err(|e| self.error(what(), e))?;
        let mut invocation = delete.prepare_invoke();
        invocation.key(stream_key(from)).arg(id);
        let _deleted: Vec<String> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(what(), e))?;
        let _: ::redis::RedisResult<i64> =
            ::redis::cmd("DEL").arg(&lock).query_async(&mut conn).await;
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
