//! The connections the backend sends its commands and scripts over, behind one type: a
//! reconnecting connection to a single server, a plain one (for the blocking reads of the
//! wake-up tasks), or a Redis Cluster connection that routes each command to the node
//! serving its key's slot. Every command and script names keys of one stream only (one hash
//! tag, so one slot), so the same code runs on each.

use ::redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Cmd, Pipeline, RedisFuture, Value};

/// A connection to a single server or to a cluster; cheap to clone (clones share it).
#[derive(Clone)]
pub(super) enum Conn {
    /// A single server, reconnecting after a drop or a restart.
    Managed(ConnectionManager),
    /// A single server, one connection (the wake-up tasks open their own).
    Direct(MultiplexedConnection),
    /// A Redis Cluster: each command goes to the primary serving its key's slot.
    Cluster(ClusterConnection),
}

impl Conn {
    /// The cluster connection, when this is one.
    pub(super) fn cluster(&mut self) -> Option<&mut ClusterConnection> {
        match self {
            Conn::Cluster(c) => Some(c),
            _ => None,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Managed(c) => c.req_packed_command(cmd),
            Conn::Direct(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Direct(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Managed(c) => c.get_db(),
            Conn::Direct(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Where new connections go: the wake-up tasks open their own, since a blocking read holds
/// the connection it runs on.
#[derive(Clone, Debug)]
pub(super) enum Target {
    Single(Box<::redis::Client>),
    /// A cluster client whose response timeout leaves room for a blocking read.
    Cluster(Box<::redis::cluster::ClusterClient>),
}

impl Target {
    /// A new connection of its own whose replies may take up to `response_timeout` (a
    /// blocking read's time and then some).
    pub(super) async fn connect_own(
        &self,
        response_timeout: std::time::Duration,
    ) -> ::redis::RedisResult<Conn> {
        match self {
            Target::Single(client) => {
                let config = ::redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(std::time::Duration::from_secs(5)))
                    .set_response_timeout(Some(response_timeout));
                Ok(Conn::Direct(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                ))
            }
            Target::Cluster(client) => Ok(Conn::Cluster(client.get_async_connection().await?)),
        }
    }
}
