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
}
