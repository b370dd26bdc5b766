//! The control plane under a network partition, with each node in its own
//! Linux network namespace.
//!
//! The test builds its own network: a hub namespace holding a bridge, and
//! per node a namespace with a veth pair into the bridge (10.99.0.N/24).
//! nftables rules inside a node's namespace cut it off (every packet in or
//! out of its veth dropped). Nodes, clients and `ferrolog cluster status`
//! run inside the namespaces with `ip netns exec`; traffic never leaves
//! them. Everything the test creates is removed when it ends (also on a
//! failure: `Drop`). Needs root, iproute2 and nftables (tools/setup.sh).

use std::time::Duration;

mod common;
use common::netns::{alive_members, leader_of, python_bounded, seeds, wait_until, Net, Node};

/// `cluster_admin.py` inside a node's namespace, against that node.
fn admin(node: &Node, args: &[&str]) {
    let mut all = vec!["--bootstrap".to_string(), node.bootstrap()];
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let (ok, out, err) = python_bounded(&node.ns, "cluster_admin.py", &all, Duration::from_secs(90));
    assert!(
        ok,
        "cluster_admin.py {args:?} on node {}: {err}\n{out}\n{}",
        node.id,
        node.log()
    );
    println!("{}", out.trim_end());
}

#[test]
fn an_isolated_controller_leader_is_replaced_refuses_linearizable_reads_and_catches_up_after_healing() {
    let net = Net::create(3);
    let root = tempfile::tempdir().expect("tempdir");
    let seeds = seeds(3);
    let nodes: Vec<Node> = (1..=3)
        .map(|i| Node::start(&net, i, &seeds, root.path()))
        .collect();
    let v = wait_until(&nodes, 1, "a leader and three live members", |v| {
        leader_of(v) > 0 && alive_members(v) == 3
    });
    let old = leader_of(&v) as usize;
    let term = v["term"].as_u64().expect("term");
    admin(&nodes[old - 1], &["create", "before-split", "2", "3"]);

    net.isolate(old);
    let majority = (1..=3).find(|i| *i != old).expect("a majority node");
    let v = wait_until(&nodes, majority, "a new leader on the majority side", |v| {
        leader_of(v) > 0 && leader_of(v) as usize != old
    });
    assert!(v["term"].as_u64().expect("term") > term, "{v}");
    admin(&nodes[majority - 1], &["create", "during-split", "1", "1"]);
    // The isolated node cannot serve a linearizable read: its ReadIndex
    // never gets a quorum, and the status call fails instead of answering
    // from stale state.
    let stale = nodes[old - 1].status();
    assert!(
        stale.is_err(),
        "the isolated node answered a linearizable read: {stale:?}"
    );

    net.heal(old);
    let new = leader_of(&v);
    wait_until(&nodes, old, "the healed node following the new leader", |v| {
        // Two topics of the test and the group coordinator's.
        leader_of(v) == new && v["topics"].as_u64() == Some(3)
    });
    admin(
        &nodes[old - 1],
        &["wait-topics", "3", "before-split:2", "during-split:1"],
    );
    // It was marked down while cut off; once heard again it is live, and a
    // topic on all three nodes can be placed.
    wait_until(&nodes, old, "three live members again", |v| alive_members(v) == 3);
    admin(&nodes[old - 1], &["create", "after-heal", "1", "3"]);
}
