# Node-to-node RPC of the control plane (see src/rpc.rs).
#
# The transport knows nothing of Raft or of the metadata state machine: Raft
# messages and admin commands travel as opaque bytes. Every request that can
# change state names the sender's cluster id (empty while the sender does not
# know it yet) and its node id; a node refuses a request whose non-empty
# cluster id differs from its own. Errors (refusals, a mismatched cluster id)
# come back as Cap'n Proto exceptions.

@0x8024c147d26ed907;

struct Member {
  nodeId @0 :UInt64;
  kafkaHost @1 :Text;
  kafkaPort @2 :UInt16;
  rpcAddr @3 :Text;
  rack @4 :Text;        # empty = no rack
  shards @5 :UInt32;
  dataAddr @6 :Text;    # HOST:PORT of shard 0's replication listener; empty = none
  xdpAddr @7 :Text;     # IPV4:PORT of the node's AF_XDP replication endpoint; empty = none
}

interface Control {
  # Raft messages, in order, each an encoded raft-rs message.
  raft @0 (clusterId :Text, from :UInt64, messages :List(Data)) -> ();

  # Forwards admin commands to the controller leader; replies with the log
  # index they were committed at and their results, both opaque.
  propose @1 (clusterId :Text, from :UInt64, commands :Data) -> (index :UInt64, results :Data);

  # A node (re)joins; the reply names the cluster, the node's new incarnation
  # and the controller leader (0 = none known).
  register @2 (clusterId :Text, from :UInt64, member :Member)
      -> (clusterId :Text, incarnation :UInt64, leader :UInt64);

  # Keeps a registration's session alive.
  heartbeat @3 (clusterId :Text, from :UInt64, incarnation :UInt64) -> (leader :UInt64, term :UInt64);

  # The node's view of the cluster, for operators.
  status @4 () -> (json :Text);

  # The controller leader asks this node's replica of a partition to
  # prepare a leader election at `epoch` (from then on it refuses older
  # epochs); the reply is its durable log's last epoch (-1 = empty log)
  # and end offset.
  prepareElection @5 (clusterId :Text, from :UInt64, topic :Text, partition :Int32, epoch :Int32)
      -> (lastEpoch :Int32, logEnd :Int64);

  # A node asks the controller leader to elect a new leader for a
  # partition (it was assigned leadership of an epoch it cannot lead).
  # A node that is not the leader refuses, naming the leader.
  requestElection @6 (clusterId :Text, from :UInt64, topic :Text, partition :Int32, preferred :Bool) -> ();
  # preferred: a balancing election that moves leadership to the first
  # replica of the set if its log is as good as the best.

  # The controller leader asks the node that leads a partition which of its
  # replicas are in sync (the leader included) at the leader epoch it
  # answers; refused when this node's replica does not lead.
  insyncReplicas @7 (clusterId :Text, from :UInt64, topic :Text, partition :Int32)
      -> (leaderEpoch :Int32, nodes :List(Int32));
}
