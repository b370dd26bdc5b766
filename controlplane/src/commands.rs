//! Topic commands and the state machine that applies them to a `TopicTable`.
//!
//! A command is data: everything it needs is in it, ids included (the
//! proposer picks them, e.g. with `topics::new_topic_id`), so applying the
//! same commands in the same order gives the same table on every node. That
//! makes `apply` the Raft state machine of the controller: it is pure (no
//! clock, randomness or I/O), deterministic (only ordered maps, checks in a
//! fixed order, so a refused command always gets the same error), and atomic
//! (a plan is checked against the table without touching it, then committed by
//! code that cannot fail). Acting on a change (opening or removing partition
//! logs) is the reconciler's job, driven by the returned `TopicDelta`.

use crate::topics::{
    self, validate_replica_set, AssignmentError, ConfigOverrides, PartitionAssignment, ReplicaSet,
    TopicError, TopicMeta, TopicTable, PARTITIONS_MAX,
};
use ferrolog_model::NodeId;

/// IncrementalAlterConfigs operations.
pub const CONFIG_OP_SET: i8 = 0;
pub const CONFIG_OP_DELETE: i8 = 1;
pub const CONFIG_OP_APPEND: i8 = 2;
pub const CONFIG_OP_SUBTRACT: i8 = 3;

/// How a config request changes a topic's overrides.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ConfigChange {
    /// AlterConfigs: the given set replaces every override.
    Replace(Vec<(String, Option<String>)>),
    /// IncrementalAlterConfigs: (key, operation, value), applied in order.
    Incremental(Vec<(String, i8, Option<String>)>),
}

impl ConfigChange {
    /// The overrides after this change, or the first entry it refuses. SET
    /// needs a valid value; DELETE needs a known key; APPEND and SUBTRACT
    /// apply to list configs only (`topics::is_list_config`), starting from
    /// the current value (the override, else the list's default): APPEND adds
    /// the items not yet listed, SUBTRACT removes the items given, and the
    /// result must be a valid value.
    pub fn apply_to(&self, current: &ConfigOverrides) -> Result<ConfigOverrides, TopicError> {
        let invalid = |key: &str, value: Option<&str>, reason| TopicError::InvalidConfig {
            key: key.to_string(),
            value: value.unwrap_or("null").to_string(),
            reason,
        };
        match self {
            ConfigChange::Replace(set) => {
                let mut next = ConfigOverrides::new();
                for (k, v) in set {
                    let v = v
                        .as_deref()
                        .ok_or_else(|| invalid(k, None, "a value is required"))?;
                    topics::validate_config(k, v)?;
                    next.insert(k.clone(), v.to_string());
                }
                Ok(next)
            }
            ConfigChange::Incremental(ops) => {
                let mut next = current.clone();
                for (k, op, v) in ops {
                    match *op {
                        CONFIG_OP_SET => {
                            let v = v
                                .as_deref()
                                .ok_or_else(|| invalid(k, None, "SET needs a value"))?;
                            topics::validate_config(k, v)?;
                            next.insert(k.clone(), v.to_string());
                        }
                        CONFIG_OP_DELETE => {
                            if !topics::is_known_config(k) {
                                return Err(TopicError::UnknownConfig(k.clone()));
                            }
                            next.remove(k);
                        }
                        CONFIG_OP_APPEND | CONFIG_OP_SUBTRACT => {
                            if !topics::is_known_config(k) {
                                return Err(TopicError::UnknownConfig(k.clone()));
                            }
                            if !topics::is_list_config(k) {
                                return Err(invalid(
                                    k,
                                    v.as_deref(),
                                    "APPEND and SUBTRACT apply to list configs only",
                                ));
                            }
                            let given = v
                                .as_deref()
                                .ok_or_else(|| invalid(k, None, "APPEND and SUBTRACT need a value"))?;
                            let current = next
                                .get(k)
                                .cloned()
                                .unwrap_or_else(|| topics::list_default(k).to_string());
                            let mut items: Vec<String> = topics::list_items(&current)
                                .into_iter()
                                .map(str::to_string)
                                .collect();
                            for item in topics::list_items(given) {
                                if *op == CONFIG_OP_APPEND {
                                    if !items.iter().any(|i| i == item) {
                                        items.push(item.to_string());
                                    }
                                } else {
                                    items.retain(|i| i != item);
                                }
                            }
                            let value = items.join(",");
                            topics::validate_config(k, &value)?;
                            next.insert(k.clone(), value);
                        }
                        _ => return Err(invalid(k, v.as_deref(), "unknown operation")),
                    }
                }
                Ok(next)
            }
        }
    }
}

/// A change to the topic table, as the controller's log carries it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TopicCommand {
    /// One replica set per partition; partition i is led by the first
    /// replica of set i, at epoch 0.
    CreateTopic {
        name: String,
        id: u128,
        config: ConfigOverrides,
        assignments: Vec<ReplicaSet>,
    },
    /// `id` must be the topic's current id: a command that names an older
    /// topic of the same name (deleted and recreated since) is refused.
    DeleteTopic {
        name: String,
        id: u128,
    },
    /// Replica sets of the new partitions only, in partition order.
    CreatePartitions {
        name: String,
        new_assignments: Vec<ReplicaSet>,
    },
    AlterConfig {
        name: String,
        change: ConfigChange,
    },
}

impl TopicCommand {
    /// The topic the command is about.
    pub fn name(&self) -> &str {
        match self {
            TopicCommand::CreateTopic { name, .. }
            | TopicCommand::DeleteTopic { name, .. }
            | TopicCommand::CreatePartitions { name, .. }
            | TopicCommand::AlterConfig { name, .. } => name,
        }
    }
}

/// Why a command is refused. Kafka error codes are chosen by the kafka crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("topic {name} already exists")]
    TopicExists { name: String },
    #[error("topic {name} does not exist")]
    UnknownTopic { name: String },
    #[error("topic {name} has id {actual:032x}, not {expected:032x}")]
    IdMismatch {
        name: String,
        expected: u128,
        actual: u128,
    },
    #[error("topic id {id:032x} is already the id of topic {existing}")]
    DuplicateTopicId { id: u128, existing: String },
    #[error(transparent)]
    InvalidName(TopicError),
    #[error("topic {name}: {source}")]
    InvalidConfig { name: String, source: TopicError },
    /// `count` is the count the command would leave; `min` the least it may
    /// be (1, or one more than the topic has).
    #[error("topic {name}: partition count {count} outside {min}..={PARTITIONS_MAX}")]
    InvalidPartitionCount { name: String, count: usize, min: i32 },
    #[error("topic {name}: {source}")]
    InvalidAssignment { name: String, source: AssignmentError },
}

/// What an applied command changed, and the table's revision after it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TopicDelta {
    pub revision: u64,
    pub change: TopicChange,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TopicChange {
    Created {
        name: String,
        meta: TopicMeta,
    },
    /// `meta` is the topic as it was.
    Deleted {
        name: String,
        meta: TopicMeta,
    },
    /// Partitions `from..to` were added, with these assignments.
    PartitionsAdded {
        name: String,
        from: i32,
        to: i32,
        assignments: Vec<PartitionAssignment>,
    },
    /// `before` may equal `after`: a change that sets what is already set
    /// is still a command that was applied.
    ConfigChanged {
        name: String,
        before: ConfigOverrides,
        after: ConfigOverrides,
    },
}

/// `count` single-replica partitions on `node`; `None` if `count` is outside
/// 1..=PARTITIONS_MAX, so that a requested count is bounded before anything
/// is sized by it.
pub fn assign_all_to(node: NodeId, count: i32) -> Option<Vec<ReplicaSet>> {
    (1..=PARTITIONS_MAX)
        .contains(&count)
        .then(|| (0..count).map(|_| vec![node]).collect())
}

/// Whether `apply` would accept `cmd`, without changing the table (for
/// validate-only requests).
pub fn check(table: &TopicTable, cmd: &TopicCommand) -> Result<(), CommandError> {
    plan(table, cmd).map(drop)
}

/// Applies one command: on success the table has changed as the delta says
/// and its revision is one higher; on error the table is untouched.
///
/// The checks run in a fixed order, and the first failing one is the answer:
/// - CreateTopic: name valid, name free, id unused, partition count, replica
///   sets (in partition order), configs (in key order);
/// - DeleteTopic: topic exists, id matches;
/// - CreatePartitions: topic exists, new count, replica sets (the topic's
///   replication factor);
/// - AlterConfig: topic exists, the change (in entry order).
pub fn apply(table: &mut TopicTable, cmd: &TopicCommand) -> Result<TopicDelta, CommandError> {
    let plan = plan(table, cmd)?;
    let change = commit(table, plan);
    table.revision = table
        .revision
        .checked_add(1)
        .expect("topic table revision overflowed u64");
    debug_assert_eq!(table.validate(), Ok(()), "a command broke the topic table");
    Ok(TopicDelta {
        revision: table.revision,
        change,
    })
}

/// A checked command, ready to commit.
enum Plan {
    Create(String, TopicMeta),
    Delete(String),
    Grow(String, Vec<PartitionAssignment>),
    Config(String, ConfigOverrides),
}

/// Every check of `apply`; reads the table only.
fn plan(table: &TopicTable, cmd: &TopicCommand) -> Result<Plan, CommandError> {
    let unknown = |name: &str| CommandError::UnknownTopic {
        name: name.to_string(),
    };
    match cmd {
        TopicCommand::CreateTopic {
            name,
            id,
            config,
            assignments,
        } => {
            topics::validate_name(name).map_err(CommandError::InvalidName)?;
            if table.get(name).is_some() {
                return Err(CommandError::TopicExists { name: name.clone() });
            }
            if let Some((existing, _)) = table.by_id(*id) {
                return Err(CommandError::DuplicateTopicId {
                    id: *id,
                    existing: existing.clone(),
                });
            }
            let assignments = new_partitions(name, 0, None, assignments)?;
            for (k, v) in config {
                topics::validate_config(k, v).map_err(|source| CommandError::InvalidConfig {
                    name: name.clone(),
                    source,
                })?;
            }
            let meta = TopicMeta {
                id: *id,
                config: config.clone(),
                assignments,
            };
            Ok(Plan::Create(name.clone(), meta))
        }
        TopicCommand::DeleteTopic { name, id } => {
            let meta = table.get(name).ok_or_else(|| unknown(name))?;
            if meta.id != *id {
                return Err(CommandError::IdMismatch {
                    name: name.clone(),
                    expected: *id,
                    actual: meta.id,
                });
            }
            Ok(Plan::Delete(name.clone()))
        }
        TopicCommand::CreatePartitions {
            name,
            new_assignments,
        } => {
            let meta = table.get(name).ok_or_else(|| unknown(name))?;
            let added = new_partitions(
                name,
                meta.partitions(),
                Some(meta.replication_factor()),
                new_assignments,
            )?;
            Ok(Plan::Grow(name.clone(), added))
        }
        TopicCommand::AlterConfig { name, change } => {
            let meta = table.get(name).ok_or_else(|| unknown(name))?;
            let after = change
                .apply_to(&meta.config)
                .map_err(|source| CommandError::InvalidConfig {
                    name: name.clone(),
                    source,
                })?;
            Ok(Plan::Config(name.clone(), after))
        }
    }
}

/// Checks replica sets for partitions `first..` of a topic that has `first`
/// partitions (and `factor` replicas each, if any), and makes their initial
/// assignments.
fn new_partitions(
    name: &str,
    first: i32,
    factor: Option<usize>,
    sets: &[ReplicaSet],
) -> Result<Vec<PartitionAssignment>, CommandError> {
    let count = first as usize + sets.len();
    if sets.is_empty() || count > PARTITIONS_MAX as usize {
        return Err(CommandError::InvalidPartitionCount {
            name: name.to_string(),
            count,
            min: first + 1,
        });
    }
    // A new topic's sets must all match its first.
    let factor = factor.or(sets.first().map(Vec::len));
    for (p, set) in (first..).zip(sets) {
        validate_replica_set(p, set, factor).map_err(|source| CommandError::InvalidAssignment {
            name: name.to_string(),
            source,
        })?;
    }
    Ok(sets.iter().cloned().map(PartitionAssignment::initial).collect())
}

/// Makes a checked plan real. Cannot fail: `plan` checked everything.
fn commit(table: &mut TopicTable, plan: Plan) -> TopicChange {
    let planned = "a planned command names a topic the table has";
    match plan {
        Plan::Create(name, meta) => {
            let previous = table.topics.insert(name.clone(), meta.clone());
            assert!(
                previous.is_none(),
                "CreateTopic planned over an existing topic {name}"
            );
            TopicChange::Created { name, meta }
        }
        Plan::Delete(name) => {
            let meta = table.topics.remove(&name).expect(planned);
            TopicChange::Deleted { name, meta }
        }
        Plan::Grow(name, assignments) => {
            let meta = table.topics.get_mut(&name).expect(planned);
            let from = meta.partitions();
            meta.assignments.extend(assignments.iter().cloned());
            TopicChange::PartitionsAdded {
                name,
                from,
                to: meta.partitions(),
                assignments,
            }
        }
        Plan::Config(name, after) => {
            let meta = table.topics.get_mut(&name).expect(planned);
            let before = std::mem::replace(&mut meta.config, after.clone());
            TopicChange::ConfigChanged { name, before, after }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topics::{CLEANUP_POLICY, RETENTION_MS, SEGMENT_BYTES};
    use ferrolog_model::Epoch;

    const ID: u128 = 0x42;

    fn create(name: &str, id: u128, partitions: i32) -> TopicCommand {
        TopicCommand::CreateTopic {
            name: name.into(),
            id,
            config: ConfigOverrides::new(),
            assignments: assign_all_to(NodeId(1), partitions).expect("count in range"),
        }
    }

    fn nodes(ids: &[i32]) -> ReplicaSet {
        ids.iter().copied().map(NodeId).collect()
    }

    #[test]
    fn create_names_leaders_at_epoch_zero_and_bumps_the_revision() {
        let mut t = TopicTable::default();
        let cmd = TopicCommand::CreateTopic {
            name: "orders".into(),
            id: ID,
            config: ConfigOverrides::new(),
            assignments: vec![nodes(&[2, 1]), nodes(&[1, 2])],
        };
        let delta = apply(&mut t, &cmd).expect("create");
        assert_eq!(delta.revision, 1);
        let meta = t.get("orders").expect("created").clone();
        assert_eq!(meta.partitions(), 2);
        assert_eq!(meta.assignments[0].leader, NodeId(2));
        assert_eq!(meta.assignments[1].leader, NodeId(1));
        assert!(meta.assignments.iter().all(|a| a.leader_epoch == Epoch(0)));
        assert_eq!(
            delta.change,
            TopicChange::Created {
                name: "orders".into(),
                meta
            }
        );
    }

    #[test]
    fn a_stale_delete_does_not_remove_the_recreated_topic() {
        let mut t = TopicTable::default();
        apply(&mut t, &create("orders", 1, 1)).expect("create");
        apply(
            &mut t,
            &TopicCommand::DeleteTopic {
                name: "orders".into(),
                id: 1,
            },
        )
        .expect("delete");
        apply(&mut t, &create("orders", 2, 1)).expect("recreate");
        let before = t.clone();
        let stale = TopicCommand::DeleteTopic {
            name: "orders".into(),
            id: 1,
        };
        assert_eq!(
            apply(&mut t, &stale),
            Err(CommandError::IdMismatch {
                name: "orders".into(),
                expected: 1,
                actual: 2
            })
        );
        assert_eq!(t, before);
    }

    #[test]
    fn refusals_name_the_first_failing_check() {
        let mut t = TopicTable::default();
        apply(&mut t, &create("orders", ID, 2)).expect("create");
        let before = t.clone();
        let cases = [
            (create("bad/name", 7, 1), "invalid topic name"),
            (create("orders", 7, 1), "already exists"),
            (create("other", ID, 1), "already the id of topic orders"),
            (
                TopicCommand::CreateTopic {
                    name: "other".into(),
                    id: 7,
                    config: ConfigOverrides::new(),
                    assignments: vec![],
                },
                "partition count 0 outside 1..=100000",
            ),
            (
                TopicCommand::CreateTopic {
                    name: "other".into(),
                    id: 7,
                    config: ConfigOverrides::new(),
                    assignments: vec![nodes(&[1, 2]), nodes(&[3])],
                },
                "partition 1: 1 replicas where the topic's partitions have 2",
            ),
            (
                TopicCommand::CreateTopic {
                    name: "other".into(),
                    id: 7,
                    config: [(SEGMENT_BYTES.to_string(), "1".to_string())].into(),
                    assignments: vec![nodes(&[1])],
                },
                "segment.bytes",
            ),
            (
                TopicCommand::CreatePartitions {
                    name: "orders".into(),
                    new_assignments: vec![],
                },
                "partition count 2 outside 3..=100000",
            ),
            (
                TopicCommand::CreatePartitions {
                    name: "orders".into(),
                    new_assignments: vec![nodes(&[1, 2])],
                },
                "partition 2: 2 replicas where the topic's partitions have 1",
            ),
            (
                TopicCommand::CreatePartitions {
                    name: "orders".into(),
                    new_assignments: vec![nodes(&[-1])],
                },
                "invalid node id -1",
            ),
            (
                TopicCommand::AlterConfig {
                    name: "nope".into(),
                    change: ConfigChange::Replace(vec![]),
                },
                "does not exist",
            ),
        ];
        for (cmd, why) in cases {
            let err = apply(&mut t, &cmd).expect_err(why).to_string();
            assert!(err.contains(why), "{cmd:?}: {err}");
            assert_eq!(t, before, "{cmd:?} changed the table");
        }
    }

    #[test]
    fn grow_appends_partitions_led_by_their_first_replica() {
        let mut t = TopicTable::default();
        apply(&mut t, &create("orders", ID, 1)).expect("create");
        let grow = TopicCommand::CreatePartitions {
            name: "orders".into(),
            new_assignments: vec![nodes(&[3]), nodes(&[4])],
        };
        let delta = apply(&mut t, &grow).expect("grow");
        assert_eq!(delta.revision, 2);
        let TopicChange::PartitionsAdded {
            from,
            to,
            assignments,
            ..
        } = delta.change
        else {
            panic!("not a PartitionsAdded: {delta:?}");
        };
        assert_eq!((from, to), (1, 3));
        assert_eq!(assignments[1].leader, NodeId(4));
        assert_eq!(t.get("orders").map(TopicMeta::partitions), Some(3));
    }

    #[test]
    fn incremental_config_operations() {
        let mut current = ConfigOverrides::new();
        current.insert(RETENTION_MS.into(), "1000".into());
        let op =
            |k: &str, op, v: Option<&str>| ConfigChange::Incremental(vec![(k.into(), op, v.map(Into::into))]);
        let set = op(SEGMENT_BYTES, CONFIG_OP_SET, Some("8192"))
            .apply_to(&current)
            .expect("set");
        assert_eq!(set.len(), 2);
        let deleted = op(RETENTION_MS, CONFIG_OP_DELETE, None)
            .apply_to(&current)
            .expect("delete");
        assert!(deleted.is_empty());
        // Deleting a known key that is not set is fine; an unknown key is not.
        assert!(op(SEGMENT_BYTES, CONFIG_OP_DELETE, None)
            .apply_to(&current)
            .is_ok());
        assert_eq!(
            op("x.y", CONFIG_OP_DELETE, None).apply_to(&current),
            Err(TopicError::UnknownConfig("x.y".into()))
        );
        for bad in [CONFIG_OP_APPEND, CONFIG_OP_SUBTRACT, 9] {
            assert!(op(RETENTION_MS, bad, Some("1")).apply_to(&current).is_err());
        }
        // cleanup.policy is a list: APPEND and SUBTRACT start from its default.
        let appended = op(CLEANUP_POLICY, CONFIG_OP_APPEND, Some("compact"))
            .apply_to(&current)
            .expect("append");
        assert_eq!(appended[CLEANUP_POLICY], "delete,compact");
        let again = op(CLEANUP_POLICY, CONFIG_OP_APPEND, Some("compact"))
            .apply_to(&appended)
            .expect("append twice");
        assert_eq!(again[CLEANUP_POLICY], "delete,compact");
        let subtracted = op(CLEANUP_POLICY, CONFIG_OP_SUBTRACT, Some("delete"))
            .apply_to(&appended)
            .expect("subtract");
        assert_eq!(subtracted[CLEANUP_POLICY], "compact");
        // Nothing left, an unknown policy, or no value: refused.
        assert!(op(CLEANUP_POLICY, CONFIG_OP_SUBTRACT, Some("compact"))
            .apply_to(&subtracted)
            .is_err());
        assert!(op(CLEANUP_POLICY, CONFIG_OP_APPEND, Some("shred"))
            .apply_to(&current)
            .is_err());
        assert!(op(CLEANUP_POLICY, CONFIG_OP_APPEND, None)
            .apply_to(&current)
            .is_err());
        assert!(op(RETENTION_MS, CONFIG_OP_SET, None).apply_to(&current).is_err());
        // The configs of topic_configs: DELETE takes them back to the default;
        // the throttle lists take APPEND and SUBTRACT, the others do not.
        let zstd = op("compression.type", CONFIG_OP_SET, Some("zstd"))
            .apply_to(&current)
            .expect("set compression.type");
        let back = op("compression.type", CONFIG_OP_DELETE, None)
            .apply_to(&zstd)
            .expect("delete compression.type");
        assert!(!back.contains_key("compression.type"));
        assert!(op("compression.type", CONFIG_OP_APPEND, Some("gzip"))
            .apply_to(&current)
            .is_err());
        let throttle = "leader.replication.throttled.replicas";
        let listed = op(throttle, CONFIG_OP_APPEND, Some("0:1"))
            .apply_to(&current)
            .expect("append to a throttle list");
        let listed = op(throttle, CONFIG_OP_APPEND, Some("1:2"))
            .apply_to(&listed)
            .expect("append again");
        assert_eq!(listed[throttle], "0:1,1:2");
        let left = op(throttle, CONFIG_OP_SUBTRACT, Some("0:1"))
            .apply_to(&listed)
            .expect("subtract");
        assert_eq!(left[throttle], "1:2");
        assert!(op(throttle, CONFIG_OP_APPEND, Some("0"))
            .apply_to(&current)
            .is_err());
        let replaced = ConfigChange::Replace(vec![(SEGMENT_BYTES.into(), Some("8192".into()))])
            .apply_to(&current)
            .expect("replace");
        assert_eq!(replaced.keys().collect::<Vec<_>>(), [SEGMENT_BYTES]);
        assert!(ConfigChange::Replace(vec![(SEGMENT_BYTES.into(), None)])
            .apply_to(&current)
            .is_err());
    }

    #[test]
    fn assign_all_to_bounds_the_count() {
        assert_eq!(assign_all_to(NodeId(3), 2), Some(vec![nodes(&[3]), nodes(&[3])]));
        for bad in [i32::MIN, -1, 0, PARTITIONS_MAX + 1, i32::MAX] {
            assert_eq!(assign_all_to(NodeId(3), bad), None);
        }
        assert_eq!(
            assign_all_to(NodeId(3), PARTITIONS_MAX).map(|a| a.len()),
            Some(PARTITIONS_MAX as usize)
        );
    }
}
