//! The proposer side of topic changes: turns CreateTopics, DeleteTopics,
//! CreatePartitions, config changes and Metadata auto-creation into
//! [`TopicCommand`]s, choosing what the state machine must not (topic ids,
//! defaults, replica placement over the live brokers of the metadata
//! snapshot with `ferrolog_controlplane::placement`),
//! and proposes them to the controller on the control executor.
//!
//! Runs on the data shard of the request's connection. The controller
//! answers once the change is durable and every shard applied the new
//! snapshot, so the next request on any shard sees it.

use crate::shard::Shard;
use crate::topics::{self, TopicMeta};
use ferrolog_controlplane::commands::{self, TopicChange, TopicCommand, TopicDelta};
use ferrolog_controlplane::controller::{self as control, ControllerError};
use ferrolog_controlplane::metadata::MetadataSnapshot;
use ferrolog_controlplane::placement;
use ferrolog_controlplane::topics::{ConfigOverrides, ReplicaSet, TopicTable};
use ferrolog_model::NodeId;
use kafka_protocol::error::ResponseError;

pub use ferrolog_controlplane::commands::ConfigChange;

pub type OpResult<T> = Result<T, (ResponseError, String)>;

/// A topic to create.
#[derive(Clone, Debug)]
pub struct NewTopic {
    pub name: String,
    /// -1: the node default.
    pub partitions: i32,
    /// -1: the node default (1).
    pub replication_factor: i16,
    /// A manual replica assignment: (partition index, broker ids) per
    /// partition; empty: placement chooses.
    pub assignments: Vec<(i32, Vec<i32>)>,
    pub configs: Vec<(String, Option<String>)>,
}

fn controller_error(e: &ControllerError) -> (ResponseError, String) {
    (crate::errors::controller(e), e.to_string())
}

/// Proposes `cmds` on the control executor; one answer per command.
async fn propose(shard: &Shard, cmds: Vec<TopicCommand>, validate_only: bool) -> Vec<OpResult<TopicDelta>> {
    let n = cmds.len();
    let Some(control) = shard.smp.control_shard() else {
        return (0..n)
            .map(|_| {
                Err((
                    ResponseError::NotController,
                    "this node runs no controller".into(),
                ))
            })
            .collect();
    };
    let answers = shard
        .smp
        .submit_to(control, move || async move {
            control::local()
                .propose(cmds, validate_only)
                .await
                .into_iter()
                .map(|r| r.map_err(|e| controller_error(&e)))
                .collect::<Vec<_>>()
        })
        .await;
    match answers {
        Ok(a) => a,
        Err(e) => (0..n)
            .map(|_| Err((crate::errors::shard(&e), e.to_string())))
            .collect(),
    }
}

/// Proposes the commands among `prepared` (items refused before reaching
/// the controller keep their error); one answer per item, in order.
async fn propose_prepared(
    shard: &Shard,
    prepared: Vec<OpResult<TopicCommand>>,
    validate_only: bool,
) -> Vec<OpResult<TopicDelta>> {
    let mut cmds = Vec::new();
    let mut out: Vec<Option<OpResult<TopicDelta>>> = prepared
        .into_iter()
        .map(|p| match p {
            Ok(cmd) => {
                cmds.push(cmd);
                None
            }
            Err(e) => Some(Err(e)),
        })
        .collect();
    let mut answers = propose(shard, cmds, validate_only).await.into_iter();
    for slot in out.iter_mut().filter(|o| o.is_none()) {
        *slot = answers.next();
    }
    out.into_iter().map(|a| a.expect("every item answered")).collect()
}

/// Replica sets for `count` new partitions of `rf` replicas over the live
/// brokers of `meta`, balanced against `table` (the snapshot's table plus
/// what earlier items of the request created); a factor the live brokers
/// cannot hold is INVALID_REPLICATION_FACTOR.
fn place(meta: &MetadataSnapshot, table: &TopicTable, count: i32, rf: usize) -> OpResult<Vec<ReplicaSet>> {
    let count = usize::try_from(count).expect("callers pass a validated, positive partition count");
    placement::place(&meta.placement_brokers(), table, count, rf)
        .map_err(|e| (crate::errors::placement(&e), e.to_string()))
}

/// Applies a prepared command to the scratch copy of the table that a
/// request's items are placed against, so each item counts the replicas of
/// the items before it. The copy costs as much as counting the table's load
/// once, and topic changes are rare. `apply` is atomic, so a command it
/// refuses leaves the copy as it was; the controller refuses that command
/// too and reports why, so the error is dropped here.
fn note(scratch: &mut TopicTable, cmd: &OpResult<TopicCommand>) {
    if let Ok(cmd) = cmd {
        let _ = commands::apply(scratch, cmd);
    }
}

/// One command per item, in order: `make` sees the table with the commands
/// of the items before it applied, and those items. A command that would
/// give a broker more partitions than `partitions_max` is refused.
fn prepare_in_order<T>(
    meta: &MetadataSnapshot,
    items: &[T],
    partitions_max: usize,
    mut make: impl FnMut(&TopicTable, &[T], &T) -> OpResult<TopicCommand>,
) -> Vec<OpResult<TopicCommand>> {
    let mut scratch = TopicTable::clone(&meta.topics);
    (0..items.len())
        .map(|i| {
            let cmd = make(&scratch, &items[..i], &items[i])
                .and_then(|cmd| within_node_limit(&scratch, cmd, partitions_max));
            note(&mut scratch, &cmd);
            cmd
        })
        .collect()
}

/// The partition replicas a node accepts: every partition keeps its active
/// segment file open, within the profile's `storage.fd_budget`
/// (`ferrolog_cluster::manager::partitions_max`). Every broker is taken to
/// have this node's budget and shard count (nodes of a cluster share a
/// profile; a broker does not register its own).
fn node_partitions_max(shard: &Shard) -> usize {
    ferrolog_cluster::manager::partitions_max(shard.config.fd_budget, shard.smp.nr_shards())
}

/// `cmd`, unless it would give a broker more than `max` partition replicas
/// on top of what `table` assigns it: INVALID_PARTITIONS, naming the broker.
fn within_node_limit(table: &TopicTable, cmd: TopicCommand, max: usize) -> OpResult<TopicCommand> {
    let new = match &cmd {
        TopicCommand::CreateTopic { assignments, .. } => assignments,
        TopicCommand::CreatePartitions { new_assignments, .. } => new_assignments,
        _ => return Ok(cmd),
    };
    let mut count: std::collections::BTreeMap<NodeId, usize> = std::collections::BTreeMap::new();
    for node in new.iter().flatten() {
        *count.entry(*node).or_default() += 1;
    }
    for a in table.topics.values().flat_map(|t| &t.assignments) {
        for node in &a.replicas {
            if let Some(c) = count.get_mut(node) {
                *c += 1;
            }
        }
    }
    match count.into_iter().find(|&(_, c)| c > max) {
        Some((node, c)) => Err((
            ResponseError::InvalidPartitions,
            format!(
                "broker {node} would hold {c} partitions, more than the {max} its open-file budget allows (storage.fd_budget)"
            ),
        )),
        None => Ok(cmd),
    }
}

/// Creates topics; one answer per input, in order.
pub async fn create_topics(
    shard: &Shard,
    new: Vec<NewTopic>,
    validate_only: bool,
) -> Vec<OpResult<(String, TopicMeta)>> {
    let meta = shard.metadata();
    let prepared = prepare_in_order(&meta, &new, node_partitions_max(shard), |scratch, earlier, t| {
        command_for_new_topic(shard, &meta, scratch, earlier, t)
    });
    propose_prepared(shard, prepared, validate_only)
        .await
        .into_iter()
        .map(|a| {
            a.map(|d| match d.change {
                TopicChange::Created { name, meta } => (name, meta),
                other => unreachable!("a create answered with {other:?}"),
            })
        })
        .collect()
}

/// The command for one topic of a CreateTopics, or why it is refused
/// before it reaches the controller. `earlier` are the request's topics
/// before it; `table` is what placement balances against.
fn command_for_new_topic(
    shard: &Shard,
    meta: &MetadataSnapshot,
    table: &TopicTable,
    earlier: &[NewTopic],
    t: &NewTopic,
) -> OpResult<TopicCommand> {
    if earlier.iter().any(|o| o.name == t.name) {
        return Err((
            ResponseError::InvalidRequest,
            format!("topic {} named twice in one request", t.name),
        ));
    }
    topics::validate_name(&t.name).map_err(|e| (crate::errors::topic(&e), e.to_string()))?;
    if meta.topics.get(&t.name).is_some() {
        return Err((
            ResponseError::TopicAlreadyExists,
            format!("topic {} already exists", t.name),
        ));
    }
    // The node's internal topics (the group coordinator's) exist without
    // being in the table; a topic of the same name would share their logs.
    if shard.cluster.config.internal(&t.name).is_some() {
        return Err((
            ResponseError::TopicAlreadyExists,
            format!("topic {} is an internal topic of the broker", t.name),
        ));
    }
    let manual = if t.assignments.is_empty() {
        None
    } else {
        Some(manual_assignment(meta, t)?)
    };
    let partitions = if let Some(m) = &manual {
        i32::try_from(m.len()).unwrap_or(i32::MAX)
    } else if t.partitions == -1 {
        shard.config.default_partitions
    } else {
        t.partitions
    };
    if !(1..=topics::PARTITIONS_MAX).contains(&partitions) {
        return Err((
            ResponseError::InvalidPartitions,
            format!(
                "partition count {partitions} outside 1..={}",
                topics::PARTITIONS_MAX
            ),
        ));
    }
    // -1 is the node default: 1, as for auto-created topics. Whether the
    // live brokers can hold the factor is placement's answer.
    let rf = match t.replication_factor {
        -1 => 1,
        rf => usize::try_from(rf).map_err(|_| {
            (
                ResponseError::InvalidReplicationFactor,
                format!("replication factor {rf} is negative"),
            )
        })?,
    };
    let assignments = match manual {
        Some(m) => m,
        None => place(meta, table, partitions, rf)?,
    };
    let mut config = ConfigOverrides::new();
    for (k, v) in &t.configs {
        let Some(v) = v else {
            return Err((
                ResponseError::InvalidConfig,
                format!("config {k} has a null value"),
            ));
        };
        config.insert(k.clone(), v.clone());
    }
    Ok(TopicCommand::CreateTopic {
        name: t.name.clone(),
        id: topics::new_topic_id(),
        config,
        assignments,
    })
}

/// The replica sets of a CreateTopics manual assignment, by partition
/// index, as Kafka checks them: partition count and replication factor
/// must be -1; the indexes 0..n, each once; every set non-empty, without
/// repeats, of live brokers, and all of one size.
fn manual_assignment(meta: &MetadataSnapshot, t: &NewTopic) -> OpResult<Vec<ReplicaSet>> {
    let bad = |msg: String| Err((ResponseError::InvalidReplicaAssignment, msg));
    if t.partitions != -1 || t.replication_factor != -1 {
        return Err((
            ResponseError::InvalidRequest,
            "both a manual assignment and a partition count or replication factor were given (they must be -1)"
                .into(),
        ));
    }
    let n = t.assignments.len();
    if n > topics::PARTITIONS_MAX as usize {
        return Err((
            ResponseError::InvalidPartitions,
            format!("{n} partitions, more than {}", topics::PARTITIONS_MAX),
        ));
    }
    let mut sets: Vec<Option<ReplicaSet>> = vec![None; n];
    for (index, brokers) in &t.assignments {
        let Some(slot) = usize::try_from(*index).ok().and_then(|i| sets.get_mut(i)) else {
            return bad(format!(
                "partition {index}: indexes must run from 0 to {} (one per partition)",
                n - 1
            ));
        };
        if slot.is_some() {
            return bad(format!("partition {index} is assigned twice"));
        }
        let set: ReplicaSet = brokers.iter().copied().map(NodeId).collect();
        *slot = Some(set);
    }
    let sets: Vec<ReplicaSet> = sets
        .into_iter()
        .map(|s| s.expect("n slots, n distinct indexes"))
        .collect();
    let factor = sets[0].len();
    for (p, set) in sets.iter().enumerate() {
        let p = p as i32;
        if let Err(e) = topics::validate_replica_set(p, set, Some(factor)) {
            return bad(e.to_string());
        }
        if let Some(n) = set.iter().find(|n| !meta.is_live(**n)) {
            return bad(format!(
                "partition {p}: broker {n} is not a live broker of the cluster"
            ));
        }
    }
    Ok(sets)
}

/// Creates one topic with defaults if it does not exist (Metadata auto-create).
pub async fn ensure_topic(shard: &Shard, name: String) -> OpResult<TopicMeta> {
    if let Some(t) = shard.topics().get(&name) {
        return Ok(t.clone());
    }
    let t = NewTopic {
        name: name.clone(),
        partitions: -1,
        replication_factor: -1,
        assignments: Vec::new(),
        configs: Vec::new(),
    };
    match create_topics(shard, vec![t], false).await.pop() {
        Some(Ok((_, meta))) => Ok(meta),
        Some(Err((ResponseError::TopicAlreadyExists, _))) => shard.topics().get(&name).cloned().ok_or((
            ResponseError::UnknownTopicOrPartition,
            format!("topic {name} vanished"),
        )),
        Some(Err(e)) => Err(e),
        None => Err((ResponseError::UnknownServerError, "no answer".into())),
    }
}

fn unknown_topic(name: &str) -> (ResponseError, String) {
    (
        ResponseError::UnknownTopicOrPartition,
        format!("topic {name} does not exist"),
    )
}

/// Deletes topics by name; answers carry the deleted topic's id.
pub async fn delete_topics(shard: &Shard, names: Vec<String>) -> Vec<OpResult<u128>> {
    let table = shard.topics();
    let prepared = names
        .iter()
        .enumerate()
        .map(|(i, name)| match table.get(name) {
            Some(t) if !names[..i].contains(name) => Ok(TopicCommand::DeleteTopic {
                name: name.clone(),
                id: t.id,
            }),
            _ => Err(unknown_topic(name)),
        })
        .collect();
    propose_prepared(shard, prepared, false)
        .await
        .into_iter()
        .map(|a| {
            a.map(|d| match d.change {
                TopicChange::Deleted { meta, .. } => meta.id,
                other => unreachable!("a delete answered with {other:?}"),
            })
        })
        .collect()
}

/// Grows topics to the given partition counts.
pub async fn create_partitions(
    shard: &Shard,
    items: Vec<(String, i32)>,
    validate_only: bool,
) -> Vec<OpResult<()>> {
    let meta = shard.metadata();
    let prepared = prepare_in_order(
        &meta,
        &items,
        node_partitions_max(shard),
        |scratch, earlier, item| command_for_growth(&meta, scratch, earlier, item),
    );
    propose_prepared(shard, prepared, validate_only)
        .await
        .into_iter()
        .map(|r| r.map(drop))
        .collect()
}

/// The command that grows one topic of a CreatePartitions to `count`
/// partitions, or why it is refused before it reaches the controller.
/// `earlier` are the request's items before it; `table` is what placement
/// balances against.
fn command_for_growth(
    meta: &MetadataSnapshot,
    table: &TopicTable,
    earlier: &[(String, i32)],
    (name, count): &(String, i32),
) -> OpResult<TopicCommand> {
    if earlier.iter().any(|(n, _)| n == name) {
        return Err((ResponseError::InvalidRequest, format!("topic {name} named twice")));
    }
    let t = meta
        .topics
        .get(name)
        .filter(|_| !topics::is_internal(name))
        .ok_or_else(|| unknown_topic(name))?;
    let current = t.partitions();
    if *count <= current || *count > topics::PARTITIONS_MAX {
        return Err((
            ResponseError::InvalidPartitions,
            format!(
                "topic {name} has {current} partitions; the new count must be in {}..={}",
                current + 1,
                topics::PARTITIONS_MAX
            ),
        ));
    }
    // New partitions keep the topic's replication factor, which the live
    // brokers may no longer be able to hold.
    Ok(TopicCommand::CreatePartitions {
        name: name.clone(),
        new_assignments: place(meta, table, count - current, t.replication_factor())?,
    })
}

/// Changes topic configs; one answer per input.
pub async fn alter_configs(
    shard: &Shard,
    items: Vec<(String, ConfigChange)>,
    validate_only: bool,
) -> Vec<OpResult<()>> {
    // The internal topics are the broker's: refused as unknown, unproposed.
    let (internal, items): (Vec<_>, Vec<_>) = items
        .into_iter()
        .enumerate()
        .partition(|(_, (name, _))| topics::is_internal(name));
    let order: Vec<usize> = items.iter().map(|(i, _)| *i).collect();
    let cmds = items
        .into_iter()
        .map(|(_, (name, change))| TopicCommand::AlterConfig { name, change })
        .collect();
    let mut out: Vec<Option<OpResult<()>>> = (0..order.len() + internal.len()).map(|_| None).collect();
    for (i, (name, _)) in internal {
        out[i] = Some(Err(unknown_topic(&name)));
    }
    let results = propose(shard, cmds, validate_only).await;
    for (i, r) in order.into_iter().zip(results) {
        out[i] = Some(r.map(drop));
    }
    out.into_iter().map(|r| r.expect("every item answered")).collect()
}

/// A producer id never handed out before in this cluster.
pub async fn next_producer_id(shard: &Shard) -> OpResult<i64> {
    let Some(control) = shard.smp.control_shard() else {
        return Err((
            ResponseError::NotController,
            "this node runs no controller".into(),
        ));
    };
    shard
        .smp
        .submit_to(control, || async {
            control::local()
                .next_producer_id()
                .await
                .map_err(|e| controller_error(&e))
        })
        .await
        .map_err(|e| (crate::errors::shard(&e), e.to_string()))?
}
