//! What this node's own connections say about its peers, ahead of the
//! controller's verdict.
//!
//! When a node is killed, the kernel closes its sockets at once: every peer
//! holding a connection to it sees the close within microseconds, while the
//! controller needs a probe, a committed command and a published snapshot
//! (tens of milliseconds) to mark it down and elect new leaders. A client
//! that lost its connection to a partition leader asks a survivor for
//! Metadata in that window; an answer that still names the dead leader
//! sends librdkafka back to its one-second topic scan. [`PeerHints`] lets
//! the Kafka layer tell that window apart: a connection to the node ended
//! and nothing has been heard from it since.
//!
//! A hint is not a verdict. It never marks anyone down, never moves a
//! leader and never changes what the controller decides; the Metadata
//! handler only waits (bounded) for the controller's next snapshot while a
//! partition it is asked about is led by a node with a fresh hint.
//!
//! Fed by: the controller (a connection that carried a peer's heartbeats or
//! Raft messages ended; the leader: a heartbeat arrived) and every shard's
//! replication links (an established connection ended; a link's connect is
//! not a sign of life: a dying process's backlog still accepts). Shared by
//! the whole process (`Arc`, thread-safe): written on the control executor
//! and the data shards, read by the data shards.

use ferrolog_model::NodeId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::info;

#[derive(Clone, Copy, Debug, Default)]
struct Hint {
    /// When a connection to or from the node last ended.
    lost: Option<Instant>,
    /// When the node was last heard from (a heartbeat, a new connection).
    heard: Option<Instant>,
}

/// Per peer node: when a connection to it last ended and when it was last
/// heard from. See the module documentation.
#[derive(Debug, Default)]
pub struct PeerHints {
    hints: Mutex<HashMap<NodeId, Hint>>,
}

impl PeerHints {
    /// An established connection to or from `node` ended (closed or reset
    /// by the peer, or broken while writing). A connection attempt that
    /// fails is not a loss: it says nothing new about a node already lost.
    pub fn connection_lost(&self, node: NodeId) {
        self.at(node, Instant::now(), true);
        info!(node = %node, "a connection to node {node} ended: Metadata answers about partitions it leads wait (bounded) for the controller's verdict");
    }

    /// `node` was heard from (a heartbeat arrived). Clears a loss before
    /// now.
    pub fn heard_from(&self, node: NodeId) {
        self.at(node, Instant::now(), false);
    }

    fn at(&self, node: NodeId, now: Instant, lost: bool) {
        let mut hints = self.hints.lock().unwrap_or_else(|e| e.into_inner());
        let h = hints.entry(node).or_default();
        if lost {
            h.lost = Some(now);
        } else {
            h.heard = Some(now);
        }
    }

    /// Nodes whose connection ended less than `window` ago with nothing
    /// heard from them since, each with the time of that loss.
    pub fn lost_within(&self, window: Duration) -> Vec<(NodeId, Instant)> {
        self.lost_within_at(window, Instant::now())
    }

    fn lost_within_at(&self, window: Duration, now: Instant) -> Vec<(NodeId, Instant)> {
        let hints = self.hints.lock().unwrap_or_else(|e| e.into_inner());
        hints
            .iter()
            .filter_map(|(node, h)| {
                let lost = h.lost?;
                let fresh = now.saturating_duration_since(lost) < window;
                let unheard = h.heard.is_none_or(|heard| heard < lost);
                (fresh && unheard).then_some((*node, lost))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(1);

    #[test]
    fn a_loss_is_a_hint_until_the_node_is_heard_from_or_the_window_passes() {
        let hints = PeerHints::default();
        let t0 = Instant::now();
        assert!(hints.lost_within_at(W, t0).is_empty());
        hints.at(NodeId(2), t0, true);
        assert_eq!(hints.lost_within_at(W, t0), vec![(NodeId(2), t0)]);
        assert_eq!(
            hints.lost_within_at(W, t0 + Duration::from_millis(999)),
            vec![(NodeId(2), t0)]
        );
        assert!(hints.lost_within_at(W, t0 + W).is_empty(), "the window passed");
        // Heard from after the loss: no hint.
        hints.at(NodeId(2), t0 + Duration::from_millis(10), false);
        assert!(hints.lost_within_at(W, t0 + Duration::from_millis(20)).is_empty());
        // A later loss counts again; another node's hint is its own.
        let t1 = t0 + Duration::from_millis(30);
        hints.at(NodeId(2), t1, true);
        hints.at(NodeId(3), t1, false);
        assert_eq!(
            hints.lost_within_at(W, t1 + Duration::from_millis(1)),
            vec![(NodeId(2), t1)]
        );
    }

    #[test]
    fn heard_from_before_the_loss_does_not_clear_it() {
        let hints = PeerHints::default();
        let t0 = Instant::now();
        hints.at(NodeId(1), t0, false);
        hints.at(NodeId(1), t0 + Duration::from_millis(5), true);
        assert_eq!(hints.lost_within_at(W, t0 + Duration::from_millis(6)).len(), 1);
    }
}
