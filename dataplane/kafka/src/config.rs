//! Settings of the Kafka server, identical on every shard.

use crate::topics::TopicDefaults;
use ferrolog_model::NodeId;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    /// Where every shard listens (SO_REUSEPORT spreads connections).
    pub listen: SocketAddr,
    /// Host and port clients are told to connect to (Metadata).
    pub advertised_host: String,
    pub advertised_port: i32,
    /// The cluster id this data directory recorded at its first start: the
    /// id a new cluster takes when this node is its first leader (clients
    /// are told the cluster's id, from the metadata).
    pub cluster_id: String,
    pub rack: Option<String>,
    /// The control plane: initial voters (empty: a one-voter group of this
    /// node), the RPC listener and the address other nodes reach it at.
    pub seeds: Vec<(NodeId, String)>,
    pub rpc_listen: Option<SocketAddr>,
    pub rpc_advertised: String,
    /// Where shard 0's replication listener binds (shard `s` on the port +
    /// `s`); `None`: none (a node without a control-plane RPC listener).
    pub data_listen: Option<SocketAddr>,
    /// HOST:PORT other nodes reach shard 0's replication listener at, as
    /// the node registers it with the controller.
    pub data_advertised: Option<String>,
    /// The AF_XDP path of replication frames, when the profile asks for it
    /// and the node could set it up; `None`: TCP only.
    pub xdp: Option<std::sync::Arc<ferrolog_cluster::repl_xdp::XdpNode>>,
    /// Mutual TLS between nodes (the control-plane RPC and the replication
    /// data links, both ways); `None`: plain TCP.
    pub node_tls: Option<std::sync::Arc<ferrolog_transport::NodeTls>>,
    /// The node's hints about its peers, shared by its controller and data
    /// shards (see ferrolog_controlplane::peer_hints).
    pub peer_hints: std::sync::Arc<ferrolog_controlplane::peer_hints::PeerHints>,
    pub control_timing: ferrolog_controlplane::controller::ControlTiming,
    /// Largest request frame accepted; a larger size field closes the connection.
    pub max_request_bytes: usize,
    pub auto_create_topics: bool,
    /// The controller moves leaderships back to preferred replicas.
    pub auto_leader_rebalance: bool,
    /// Partitions of auto-created topics and of CreateTopics with -1.
    pub default_partitions: i32,
    pub topic_defaults: TopicDefaults,
    /// Per-shard cache of recently appended batches.
    pub batch_cache_bytes: usize,
    /// Segment files this node's partition logs may hold open (the
    /// profile's `storage.fd_budget`); bounds the partitions it accepts.
    pub fd_budget: usize,
    /// Once the first byte of a request arrived, the rest must arrive within this.
    pub request_read_timeout: Duration,
    /// A connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// Open connections per shard; more are closed at accept.
    pub connections_per_shard_max: usize,
    /// Long-poll fetches one partition remembers; more just wait out max_wait_ms.
    pub fetch_waiters_per_partition_max: usize,
    /// Longest max_wait_ms honoured for a fetch.
    pub fetch_max_wait: Duration,
    /// Most record bytes one fetch response carries, whatever the client
    /// asks (Kafka's fetch.max.bytes). Each owner shard reads at most this
    /// much for one fetch, plus at most one batch past it.
    pub fetch_response_max_bytes: usize,
    /// How long each shard's compactor sleeps between passes over its
    /// partitions (Kafka's log.cleaner.backoff.ms).
    pub compaction_interval: Duration,
    /// SO_BUSY_POLL on client sockets, in µs (0 = off).
    pub busy_poll_us: u32,
    /// The group coordinator's settings.
    pub groups: crate::groups::GroupConfig,
    /// Pending-connection queue of each shard's Kafka listener (listen(2)).
    pub listen_backlog: u32,
    /// Requests of one connection in progress at once (`server`): at least 1.
    pub pipeline_depth: usize,
    /// A plain-TCP connection whose Produce or Fetch names only partitions
    /// of another shard moves there, once (`server::moves_to`).
    pub move_connections: bool,
    /// The admin HTTP listener (/metrics, /v1/status), on the controller
    /// shard; `None`: no admin listener.
    pub admin_addr: Option<SocketAddr>,
    /// The CPU each shard is pinned to, by shard id (for /v1/status).
    pub shard_cpus: Vec<usize>,
    /// A shard whose reactor runs a timer this much late counts a stall.
    pub stall_threshold: Duration,
    /// TLS and SASL of the Kafka listener.
    pub security: std::sync::Arc<crate::security::SecurityConfig>,
    /// Whether requests are checked against the cluster's ACLs, the
    /// superusers and the no-ACL default.
    pub authorizer: ferrolog_controlplane::acls::AuthorizerConfig,
    /// Test only: requests run as `User:<client.id>` (a client without a
    /// client id keeps the session's principal), so that one test can act
    /// as several principals without a SASL login each. Never for production: any
    /// client can claim any principal.
    pub principal_from_client_id_test_only: bool,
}

impl ServerConfig {
    /// The partition layer's settings: the group coordinator's logs are
    /// its one internal topic.
    pub fn cluster_config(&self) -> ferrolog_cluster::ClusterConfig {
        ferrolog_cluster::ClusterConfig {
            node_id: self.node_id,
            data_dir: self.data_dir.clone(),
            batch_cache_bytes: self.batch_cache_bytes,
            fd_budget: self.fd_budget,
            fetch_waiters_per_partition_max: self.fetch_waiters_per_partition_max,
            topic_defaults: self.topic_defaults.clone(),
            internal_topics: vec![crate::groups::coordinator::internal_topic(&self.groups)],
            peer_hints: self.peer_hints.clone(),
        }
    }
}
