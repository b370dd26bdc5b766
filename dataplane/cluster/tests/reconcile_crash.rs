//! The partition manager's reconciler against real directories, with the
//! node "killed" between any two steps of creating, growing and deleting
//! topics.
//!
//! Each case runs a random sequence of topic commands through the real
//! controller (`ferrolog_controlplane::controller`, which stores the table
//! before it publishes) and the real partition manager of one shard,
//! appending a record to every partition after each command is answered.
//! The manager is told to stop after a random number of directory steps
//! (open, delete, set aside), as a process killed at that point would, and
//! the executor ends without closing anything. A second life on the same
//! data directory then must converge to the stored table:
//! - the table is the one of the last command whose store completed;
//! - exactly the partitions it names are open, and every record appended to
//!   them and acknowledged is still there;
//! - no other partition directory is left in the data directory, and no
//!   data directory of a named partition was set aside (only directories no
//!   topic names are, and none of those is deleted or turned into a topic).

use bytes::Bytes;
use ferrolog_cluster::{ClusterConfig, PartitionManager, Placement};
use ferrolog_controlplane::commands::{assign_all_to, TopicCommand};
use ferrolog_controlplane::controller::{Controller, ControllerConfig, Publish};
use ferrolog_controlplane::metadata::MetadataSnapshot;
use ferrolog_controlplane::state::Registration;
use ferrolog_controlplane::topics::{TopicDefaults, DEFAULT_MAX_MESSAGE_BYTES};
use ferrolog_model::{BatchBuilder, NodeId, Ntp, TimestampMs};
use ferrolog_shard::RuntimeConfig;
use ferrolog_storage::{Durability, LogConfig};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

const NODE: NodeId = NodeId(0);
/// Topic names are drawn from this many, so creates, deletes and re-creates
/// of the same name happen often.
const NAMES: u8 = 2;

#[derive(Clone, Debug)]
enum Op {
    Create { name: u8, partitions: i32 },
    Grow { name: u8, by: i32 },
    Delete { name: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..NAMES, 1..=3i32).prop_map(|(name, partitions)| Op::Create { name, partitions }),
        1 => (0..NAMES, 1..=2i32).prop_map(|(name, by)| Op::Grow { name, by }),
        2 => (0..NAMES).prop_map(|name| Op::Delete { name }),
    ]
}

/// What the test expects: each topic's id and partition count, and how many
/// records each partition acknowledged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Model {
    topics: BTreeMap<String, (u128, i32)>,
    acked: BTreeMap<Ntp, i64>,
}

impl Model {
    fn partitions(&self) -> BTreeSet<Ntp> {
        self.topics
            .iter()
            .flat_map(|(n, (_, count))| (0..*count).map(move |p| Ntp::new(n.clone(), p)))
            .collect()
    }
}

fn cluster_config(data_dir: &Path) -> ClusterConfig {
    ClusterConfig {
        node_id: NODE,
        data_dir: data_dir.to_path_buf(),
        batch_cache_bytes: 1 << 20,
        fd_budget: 1024,
        fetch_waiters_per_partition_max: 4,
        topic_defaults: TopicDefaults {
            log: LogConfig {
                segment_bytes: 64 << 10,
                durability: Durability::Fsync,
                ..LogConfig::default()
            },
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        },
        internal_topics: Vec::new(),
        peer_hints: Default::default(),
    }
}

/// One life of the node on one shard: `body` gets the manager and the
/// controller once the stored table has been published.
fn life<R: Send + 'static>(
    data_dir: &Path,
    body: impl FnOnce(
            Rc<PartitionManager>,
            Rc<Controller>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = R>>>
        + Send
        + Sync
        + Clone
        + 'static,
) -> R {
    let runtime = RuntimeConfig {
        cpus: vec![ferrolog_shard::first_allowed_cpu()],
        io_memory_bytes: 1 << 20,
        ring_depth: 64,
        spin_before_park: Duration::ZERO,
        channel_capacity: 16,
    };
    let dir = data_dir.to_path_buf();
    let out = Arc::new(std::sync::Mutex::new(None));
    let slot = out.clone();
    let ended = ferrolog_shard::run(runtime, move |smp| {
        let (dir, body, slot) = (dir.clone(), body.clone(), slot.clone());
        async move {
            let config = Arc::new(cluster_config(&dir));
            let manager = PartitionManager::new(smp, config, Arc::new(Placement::hashed(1)));
            ferrolog_cluster::install(manager.clone());
            let m = manager.clone();
            let publish: Publish = Rc::new(move |snap: Arc<MetadataSnapshot>| {
                let m = m.clone();
                Box::pin(async move {
                    m.apply_snapshot(snap).await;
                })
            });
            let controller = Controller::bootstrap(
                ControllerConfig {
                    data_dir: dir.clone(),
                    local_cluster_id: "test".into(),
                    me: Registration {
                        id: NODE,
                        kafka_host: "127.0.0.1".into(),
                        kafka_port: 9092,
                        rpc_addr: String::new(),
                        rack: None,
                        shards: 1,
                        data_addr: None,
                        xdp_addr: None,
                    },
                    seeds: Vec::new(),
                    rpc_listen: None,
                    timing: Default::default(),
                    offsets_topic: false,
                    auto_leader_rebalance: true,
                    tls: None,
                    peer_hints: Default::default(),
                },
                publish,
            )
            .await
            .map_err(|e| e.to_string())?;
            let r = body(manager, controller).await;
            *slot.lock().expect("slot") = Some(r);
            // Ends without closing anything: a kill -9.
            Ok(())
        }
    })
    .expect("runtime");
    for r in ended {
        r.expect("life ended cleanly");
    }
    let r = out.lock().expect("slot").take();
    r.expect("the life ran")
}

fn record_batch(tag: &str) -> Bytes {
    let ts = TimestampMs(1_700_000_000_000);
    Bytes::from(BatchBuilder::new(ts).record(ts, None, tag.as_bytes()).build())
}

/// Runs `ops` until the manager has taken `crash_after` steps; returns the
/// model of what was stored and acknowledged.
async fn run_ops(m: Rc<PartitionManager>, c: Rc<Controller>, ops: Vec<Op>, crash_after: usize) -> Model {
    m.crash_after_steps(crash_after);
    let mut model = Model::default();
    let mut next_id = 1u128;
    for op in ops {
        let (name, cmd) = match op {
            Op::Create { name, partitions } => {
                let name = format!("t{name}");
                next_id += 1;
                let cmd = TopicCommand::CreateTopic {
                    name: name.clone(),
                    id: next_id,
                    config: Default::default(),
                    assignments: assign_all_to(NODE, partitions).expect("count in range"),
                };
                (name, cmd)
            }
            Op::Grow { name, by } => {
                let name = format!("t{name}");
                let cmd = TopicCommand::CreatePartitions {
                    name: name.clone(),
                    new_assignments: assign_all_to(NODE, by).expect("count in range"),
                };
                (name, cmd)
            }
            Op::Delete { name } => {
                let name = format!("t{name}");
                let id = c.table().get(&name).map_or(0, |t| t.id);
                (name.clone(), TopicCommand::DeleteTopic { name, id })
            }
        };
        let applied = c.propose(vec![cmd], false).await.pop().expect("one answer");
        if applied.is_ok() {
            // Stored before it was published: the table has it whatever
            // happened to the publish.
            let table = c.table();
            match table.get(&name) {
                Some(t) => {
                    model.topics.insert(name.clone(), (t.id, t.partitions()));
                }
                None => {
                    model.topics.remove(&name);
                    model.acked.retain(|n, _| n.topic != name);
                }
            }
        }
        if m.crashed() {
            break;
        }
        for ntp in model.partitions() {
            let p = m
                .partition(&ntp)
                .expect("a named partition is open after its command");
            p.log
                .append(record_batch(&ntp.to_string()))
                .await
                .expect("append");
            *model.acked.entry(ntp).or_default() += 1;
        }
    }
    model
}

/// Partition directories in the data dir (`<topic>-<n>`).
fn partition_dirs(data_dir: &Path) -> BTreeSet<Ntp> {
    std::fs::read_dir(data_dir)
        .expect("read data dir")
        .filter_map(|e| {
            let name = e.expect("entry").file_name().to_string_lossy().to_string();
            ferrolog_cluster::manager::parse_partition_dir(&name)
        })
        .collect()
}

fn set_aside_count(data_dir: &Path) -> usize {
    match std::fs::read_dir(data_dir.join(ferrolog_cluster::manager::SET_ASIDE_DIR)) {
        Ok(d) => d.count(),
        Err(_) => 0,
    }
}

fn check_case(dir: PathBuf, ops: Vec<Op>, crash_after: usize) -> Result<(), TestCaseError> {
    let model = life(&dir, move |m, c| Box::pin(run_ops(m, c, ops, crash_after)));
    let before = partition_dirs(&dir);
    let aside_before = set_aside_count(&dir);
    // Second life: converge, then report what is open and held.
    type Seen = (BTreeMap<String, (u128, i32)>, BTreeMap<Ntp, i64>);
    let (table, held): Seen = life(&dir, |m, c| {
        Box::pin(async move {
            let table = c
                .table()
                .topics
                .iter()
                .map(|(n, t)| (n.clone(), (t.id, t.partitions())))
                .collect();
            let held = m
                .partitions()
                .iter()
                .map(|p| (p.ntp.clone(), p.high_watermark().0))
                .collect();
            (table, held)
        })
    });
    prop_assert_eq!(
        &table,
        &model.topics,
        "the stored table is the last one acknowledged"
    );
    let named = model.partitions();
    let open: BTreeSet<Ntp> = held.keys().cloned().collect();
    prop_assert_eq!(&open, &named, "exactly the named partitions are open");
    for (ntp, acked) in &model.acked {
        prop_assert!(
            held[ntp] >= *acked,
            "{ntp}: {} records held, {acked} acknowledged",
            held[ntp]
        );
    }
    // A named partition with nothing written has no directory (its log is
    // unborn); one with records has one.
    let dirs = partition_dirs(&dir);
    prop_assert!(
        dirs.is_subset(&named),
        "only named partitions have directories: {dirs:?} against {named:?}"
    );
    for (ntp, acked) in &model.acked {
        prop_assert!(
            *acked == 0 || dirs.contains(ntp),
            "{ntp} holds records but has no directory"
        );
    }
    // Directories the crash left that no topic names were set aside, not
    // deleted; none of them is a named partition's.
    let strays = before.difference(&named).count();
    prop_assert_eq!(set_aside_count(&dir), aside_before + strays);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn a_node_killed_between_any_two_steps_converges_to_its_table(
        ops in prop::collection::vec(op(), 1..8),
        crash_after in 0usize..24,
    ) {
        let dir = tempfile::tempdir_in(std::env::temp_dir()).expect("tempdir");
        check_case(dir.path().to_path_buf(), ops, crash_after)?;
    }
}

/// One crash spelled out: a delete of three partitions killed after its
/// first removal leaves two directories no topic names; the next life sets
/// both aside (their data kept) and opens nothing.
#[test]
fn a_delete_cut_short_sets_the_rest_aside() {
    let dir = tempfile::tempdir_in(std::env::temp_dir()).expect("tempdir");
    let ops = vec![
        Op::Create {
            name: 0,
            partitions: 3,
        },
        Op::Delete { name: 0 },
    ];
    // Three opens, then one of the three removals.
    let model = life(dir.path(), move |m, c| Box::pin(run_ops(m, c, ops, 4)));
    assert!(model.topics.is_empty(), "the delete was stored: {model:?}");
    assert_eq!(partition_dirs(dir.path()).len(), 2, "two removals never ran");
    check_case(dir.path().to_path_buf(), Vec::new(), usize::MAX).expect("converges");
    assert_eq!(set_aside_count(dir.path()), 2);
    assert!(partition_dirs(dir.path()).is_empty());
}
