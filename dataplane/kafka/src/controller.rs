//! Topic lifecycle: create, delete, add partitions, change configs, and the
//! startup recovery of the topic table.
//!
//! The controller runs on shard 0 and owns the authoritative `TopicTable`;
//! operations are serialized by one permit. Each change is made durable in
//! `topics.toml` before it is acknowledged, then pushed to every shard as a new
//! immutable snapshot. Creation opens partition logs before the table names
//! them; deletion removes the table entry before the logs. A crash in between
//! leaves partition directories the table does not name: startup deletes them.
//! (A single node runs this; with the Raft control plane the same operations
//! become commands of the replicated metadata log.)

use crate::shard::{local, owner_of};
use crate::topics::{self, ConfigOverrides, TopicError, TopicMeta, TopicTable};
use ferrolog_model::{Ntp, ShardId};
use ferrolog_storage::LogConfig;
use glommio::sync::Semaphore;
use kafka_protocol::error::ResponseError;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use tracing::{info, warn};

pub const CONTROLLER_SHARD: ShardId = ShardId(0);

pub type OpResult<T> = Result<T, (ResponseError, String)>;

struct Controller {
    table: RefCell<TopicTable>,
    permit: Semaphore,
}

thread_local! {
    static CONTROLLER: RefCell<Option<Rc<Controller>>> = const { RefCell::new(None) };
}

fn controller() -> Rc<Controller> {
    CONTROLLER.with(|c| {
        c.borrow()
            .clone()
            .expect("controller operation off the controller shard")
    })
}

/// `<topic>-<partition>` directory names back to an Ntp.
pub fn parse_partition_dir(name: &str) -> Option<Ntp> {
    let (topic, digits) = name.rsplit_once('-')?;
    if topic.is_empty() || digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let partition: i32 = digits.parse().ok()?;
    Some(Ntp::new(topic, partition))
}

fn partition_dirs(data_dir: &Path) -> Result<Vec<Ntp>, String> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", data_dir.display()))?;
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if let Some(ntp) = entry.file_name().to_str().and_then(parse_partition_dir) {
            if is_dir {
                out.push(ntp);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The table a data directory implies: `topics.toml` if present; otherwise
/// (a directory written before topics were recorded) one topic per set of
/// partition directories.
fn recover_table(data_dir: &Path, dirs: &[Ntp]) -> Result<TopicTable, String> {
    if let Some(t) = TopicTable::load(data_dir)? {
        return Ok(t);
    }
    let mut table = TopicTable::default();
    for ntp in dirs {
        if topics::validate_name(&ntp.topic).is_err() {
            continue;
        }
        let t = table
            .topics
            .entry(ntp.topic.clone())
            .or_insert_with(|| TopicMeta {
                id: topics::new_topic_id(),
                partitions: 0,
                config: ConfigOverrides::new(),
            });
        t.partitions = t.partitions.max(ntp.partition.0 + 1);
    }
    if !table.topics.is_empty() {
        info!(
            topics = table.topics.len(),
            "adopted partition directories as topics"
        );
    }
    table
        .store(data_dir)
        .map_err(|e| format!("store topic table: {e}"))?;
    Ok(table)
}

fn all_partitions(table: &TopicTable) -> Vec<Ntp> {
    table
        .topics
        .iter()
        .flat_map(|(name, t)| (0..t.partitions).map(move |p| Ntp::new(name.clone(), p)))
        .collect()
}

/// Opens partitions on their owner shards, all shards in parallel.
async fn open_everywhere(items: Vec<(Ntp, LogConfig)>) -> Result<(), String> {
    let shard = local();
    let mut by_shard: BTreeMap<ShardId, Vec<(Ntp, LogConfig)>> = BTreeMap::new();
    for (ntp, cfg) in items {
        by_shard
            .entry(owner_of(&ntp, shard.smp.nr_shards()))
            .or_default()
            .push((ntp, cfg));
    }
    let mut tasks = Vec::new();
    for (owner, group) in by_shard {
        let smp = shard.smp.clone();
        tasks.push(glommio::spawn_local(async move {
            smp.submit_to(owner, move || async move { local().open_partitions(group).await })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r)
        }));
    }
    let mut first_err = None;
    for t in tasks {
        if let Err(e) = t.await {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

async fn remove_everywhere(ntps: Vec<Ntp>) -> Result<(), String> {
    let shard = local();
    let mut by_shard: BTreeMap<ShardId, Vec<Ntp>> = BTreeMap::new();
    for ntp in ntps {
        by_shard
            .entry(owner_of(&ntp, shard.smp.nr_shards()))
            .or_default()
            .push(ntp);
    }
    let mut first_err = None;
    for (owner, group) in by_shard {
        let r = shard
            .smp
            .submit_to(
                owner,
                move || async move { local().remove_partitions(group).await },
            )
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Pushes the controller's table to every shard as a new snapshot.
async fn publish(table: &TopicTable) {
    let snapshot = Arc::new(table.clone());
    let shard = local();
    for s in shard.smp.shards() {
        let snap = snapshot.clone();
        if let Err(e) = shard
            .smp
            .submit_to(s, move || async move { local().set_topics(snap) })
            .await
        {
            warn!(shard = %s, "cannot publish topic table: {e}");
        }
    }
}

/// Startup on shard 0: recover the table, drop orphan partition directories,
/// open every partition on its owner, publish the table.
pub async fn bootstrap() -> Result<(), String> {
    let shard = local();
    assert_eq!(
        shard.id(),
        CONTROLLER_SHARD,
        "bootstrap runs on the controller shard"
    );
    let data_dir = shard.config.data_dir.clone();
    let dirs = partition_dirs(&data_dir)?;
    let table = recover_table(&data_dir, &dirs)?;
    for ntp in &dirs {
        if !table.contains(ntp) {
            warn!(partition = %ntp, "removing partition directory of no topic (an interrupted create or delete)");
            let path = data_dir.join(ntp.dir_name());
            std::fs::remove_dir_all(&path).map_err(|e| format!("remove {}: {e}", path.display()))?;
        }
    }
    let defaults = &shard.config.topic_defaults;
    let items = all_partitions(&table)
        .into_iter()
        .map(|ntp| {
            let cfg = topics::log_config(&table.topics[&ntp.topic].config, defaults);
            (ntp, cfg)
        })
        .collect();
    open_everywhere(items).await?;
    publish(&table).await;
    info!(topics = table.topics.len(), "topic table recovered");
    CONTROLLER.with(|c| {
        *c.borrow_mut() = Some(Rc::new(Controller {
            table: RefCell::new(table),
            permit: Semaphore::new(1),
        }))
    });
    Ok(())
}

/// Every answer of an operation the controller cannot take (it is stopping).
fn refused<T>(n: usize) -> Vec<OpResult<T>> {
    (0..n)
        .map(|_| Err((ResponseError::NotController, "the controller is stopping".into())))
        .collect()
}

/// Runs a controller operation of `n` items from any shard; if the
/// controller shard cannot be reached, every item gets that error.
pub async fn call<T, F, Fut>(smp: &ferrolog_shard::Smp, n: usize, op: F) -> Vec<OpResult<T>>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Vec<OpResult<T>>> + 'static,
{
    match smp.submit_to(CONTROLLER_SHARD, op).await {
        Ok(answers) => answers,
        Err(e) => (0..n)
            .map(|_| Err((crate::errors::shard(&e), e.to_string())))
            .collect(),
    }
}

/// The partitions of the named topics, each with its topic's log settings.
fn partition_configs(
    table: &TopicTable,
    names: &[String],
    defaults: &topics::TopicDefaults,
) -> Vec<(Ntp, LogConfig)> {
    names
        .iter()
        .flat_map(|name| {
            let meta = &table.topics[name];
            let cfg = topics::log_config(&meta.config, defaults);
            (0..meta.partitions).map(move |p| (Ntp::new(name.clone(), p), cfg.clone()))
        })
        .collect()
}

/// A topic to create.
#[derive(Clone, Debug)]
pub struct NewTopic {
    pub name: String,
    /// -1: the node default.
    pub partitions: i32,
    /// -1: the node default (1).
    pub replication_factor: i16,
    pub has_assignments: bool,
    pub configs: Vec<(String, Option<String>)>,
}

fn store(table: &TopicTable) -> OpResult<()> {
    let shard = local();
    table.store(&shard.config.data_dir).map_err(|e| {
        warn!("cannot store topic table: {e}");
        (
            ResponseError::KafkaStorageError,
            format!("cannot store topic table: {e}"),
        )
    })
}

fn check_new_topic(table: &TopicTable, t: &NewTopic, default_partitions: i32) -> OpResult<TopicMeta> {
    topics::validate_name(&t.name).map_err(|e| (crate::errors::topic(&e), e.to_string()))?;
    if table.get(&t.name).is_some() {
        return Err((
            ResponseError::TopicAlreadyExists,
            format!("topic {} already exists", t.name),
        ));
    }
    let partitions = if t.partitions == -1 {
        default_partitions
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
    if t.replication_factor != -1 && t.replication_factor != 1 {
        return Err((
            ResponseError::InvalidReplicationFactor,
            format!(
                "replication factor {} on a single-node cluster (only 1)",
                t.replication_factor
            ),
        ));
    }
    if t.has_assignments {
        return Err((
            ResponseError::InvalidRequest,
            "manual replica assignment is not supported".into(),
        ));
    }
    let mut config = ConfigOverrides::new();
    for (k, v) in &t.configs {
        let Some(v) = v else {
            return Err((
                ResponseError::InvalidConfig,
                format!("config {k} has a null value"),
            ));
        };
        topics::validate_config(k, v).map_err(|e| (crate::errors::topic(&e), e.to_string()))?;
        config.insert(k.clone(), v.clone());
    }
    Ok(TopicMeta {
        id: topics::new_topic_id(),
        partitions,
        config,
    })
}

/// Creates topics; one answer per input, in order.
pub async fn create_topics(new: Vec<NewTopic>, validate_only: bool) -> Vec<OpResult<(String, TopicMeta)>> {
    let c = controller();
    let Ok(_permit) = c.permit.acquire_permit(1).await else {
        return refused(new.len());
    };
    let shard = local();
    let defaults = shard.config.topic_defaults.clone();
    let mut out = Vec::with_capacity(new.len());
    let mut table = c.table.borrow().clone();
    let mut created = Vec::new();
    for (i, t) in new.iter().enumerate() {
        let dup_in_request = new[..i].iter().any(|o| o.name == t.name);
        let r = if dup_in_request {
            Err((
                ResponseError::InvalidRequest,
                format!("topic {} named twice in one request", t.name),
            ))
        } else {
            check_new_topic(&table, t, shard.config.default_partitions)
        };
        match r {
            Ok(meta) if !validate_only => {
                table.topics.insert(t.name.clone(), meta.clone());
                created.push(t.name.clone());
                out.push(Ok((t.name.clone(), meta)));
            }
            other => out.push(other.map(|m| (t.name.clone(), m))),
        }
    }
    if created.is_empty() {
        return out;
    }
    let items = partition_configs(&table, &created, &defaults);
    let failed = match open_everywhere(items).await {
        Ok(()) => store(&table).err(),
        Err(e) => {
            warn!("cannot create partitions: {e}");
            Some((ResponseError::KafkaStorageError, e))
        }
    };
    if let Some(err) = failed {
        // Nothing was acknowledged: take the partitions back out.
        let ntps = created
            .iter()
            .flat_map(|n| (0..table.topics[n].partitions).map(move |p| Ntp::new(n.clone(), p)))
            .collect();
        if let Err(e) = remove_everywhere(ntps).await {
            warn!("cleanup after failed create: {e}");
        }
        return out
            .into_iter()
            .map(|r| match r {
                Ok((name, _)) => Err((err.0, format!("cannot create topic {name}: {}", err.1))),
                e => e,
            })
            .collect();
    }
    for name in &created {
        info!(topic = %name, partitions = table.topics[name].partitions, "created topic");
    }
    *c.table.borrow_mut() = table.clone();
    publish(&table).await;
    out
}

/// Creates one topic with defaults if it does not exist (Metadata auto-create).
pub async fn ensure_topic(name: String) -> OpResult<TopicMeta> {
    let existing = controller().table.borrow().get(&name).cloned();
    if let Some(t) = existing {
        return Ok(t);
    }
    let t = NewTopic {
        name: name.clone(),
        partitions: -1,
        replication_factor: -1,
        has_assignments: false,
        configs: Vec::new(),
    };
    match create_topics(vec![t], false).await.pop() {
        Some(Ok((_, meta))) => Ok(meta),
        Some(Err((ResponseError::TopicAlreadyExists, _))) => {
            controller().table.borrow().get(&name).cloned().ok_or((
                ResponseError::UnknownTopicOrPartition,
                format!("topic {name} vanished"),
            ))
        }
        Some(Err(e)) => Err(e),
        None => Err((ResponseError::UnknownServerError, "no answer".into())),
    }
}

/// Deletes topics by name; answers carry the deleted topic's id.
pub async fn delete_topics(names: Vec<String>) -> Vec<OpResult<u128>> {
    let c = controller();
    let Ok(_permit) = c.permit.acquire_permit(1).await else {
        return refused(names.len());
    };
    let mut table = c.table.borrow().clone();
    let mut out = Vec::with_capacity(names.len());
    let mut doomed = Vec::new();
    for name in &names {
        match table.topics.remove(name) {
            Some(meta) => {
                doomed.extend((0..meta.partitions).map(|p| Ntp::new(name.clone(), p)));
                out.push(Ok(meta.id));
            }
            None => out.push(Err((
                ResponseError::UnknownTopicOrPartition,
                format!("topic {name} does not exist"),
            ))),
        }
    }
    if doomed.is_empty() {
        return out;
    }
    if let Err(e) = store(&table) {
        return out.into_iter().map(|r| r.and(Err(e.clone()))).collect();
    }
    *c.table.borrow_mut() = table.clone();
    publish(&table).await;
    if let Err(e) = remove_everywhere(doomed).await {
        // The table no longer names them; startup removes what is left.
        warn!("deleting partition directories: {e}");
    }
    for (name, r) in names.iter().zip(&out) {
        if r.is_ok() {
            info!(topic = %name, "deleted topic");
        }
    }
    out
}

/// Grows topics to the given partition counts.
pub async fn create_partitions(items: Vec<(String, i32)>, validate_only: bool) -> Vec<OpResult<()>> {
    let c = controller();
    let Ok(_permit) = c.permit.acquire_permit(1).await else {
        return refused(items.len());
    };
    let defaults = local().config.topic_defaults.clone();
    let mut table = c.table.borrow().clone();
    let mut out = Vec::with_capacity(items.len());
    let mut new_parts = Vec::new();
    for (i, (name, count)) in items.iter().enumerate() {
        if items[..i].iter().any(|(n, _)| n == name) {
            out.push(Err((
                ResponseError::InvalidRequest,
                format!("topic {name} named twice"),
            )));
            continue;
        }
        let Some(meta) = table.topics.get_mut(name) else {
            out.push(Err((
                ResponseError::UnknownTopicOrPartition,
                format!("topic {name} does not exist"),
            )));
            continue;
        };
        if *count <= meta.partitions || *count > topics::PARTITIONS_MAX {
            out.push(Err((
                ResponseError::InvalidPartitions,
                format!(
                    "topic {name} has {} partitions; the new count must be in {}..={}",
                    meta.partitions,
                    meta.partitions + 1,
                    topics::PARTITIONS_MAX
                ),
            )));
            continue;
        }
        if !validate_only {
            let cfg = topics::log_config(&meta.config, &defaults);
            new_parts.extend((meta.partitions..*count).map(|p| (Ntp::new(name.clone(), p), cfg.clone())));
            meta.partitions = *count;
        }
        out.push(Ok(()));
    }
    if new_parts.is_empty() {
        return out;
    }
    let ntps: Vec<Ntp> = new_parts.iter().map(|(n, _)| n.clone()).collect();
    let failed = match open_everywhere(new_parts).await {
        Ok(()) => store(&table).err(),
        Err(e) => Some((ResponseError::KafkaStorageError, e)),
    };
    if let Some(err) = failed {
        if let Err(e) = remove_everywhere(ntps).await {
            warn!("cleanup after failed create_partitions: {e}");
        }
        return out.into_iter().map(|r| r.and(Err(err.clone()))).collect();
    }
    *c.table.borrow_mut() = table.clone();
    publish(&table).await;
    out
}

/// How a config request changes a topic's overrides.
#[derive(Clone, Debug)]
pub enum ConfigChange {
    /// AlterConfigs: the given set replaces every override.
    Replace(Vec<(String, Option<String>)>),
    /// IncrementalAlterConfigs: (key, operation, value); 0 SET, 1 DELETE,
    /// 2 APPEND, 3 SUBTRACT.
    Incremental(Vec<(String, i8, Option<String>)>),
}

fn apply_change(current: &ConfigOverrides, change: &ConfigChange) -> Result<ConfigOverrides, TopicError> {
    let invalid = |key: &str, value: &str, reason| TopicError::InvalidConfig {
        key: key.to_string(),
        value: value.to_string(),
        reason,
    };
    let mut next = match change {
        ConfigChange::Replace(_) => ConfigOverrides::new(),
        ConfigChange::Incremental(_) => current.clone(),
    };
    match change {
        ConfigChange::Replace(set) => {
            for (k, v) in set {
                let v = v
                    .as_deref()
                    .ok_or_else(|| invalid(k, "null", "a value is required"))?;
                topics::validate_config(k, v)?;
                next.insert(k.clone(), v.to_string());
            }
        }
        ConfigChange::Incremental(ops) => {
            for (k, op, v) in ops {
                match op {
                    0 => {
                        let v = v
                            .as_deref()
                            .ok_or_else(|| invalid(k, "null", "SET needs a value"))?;
                        topics::validate_config(k, v)?;
                        next.insert(k.clone(), v.to_string());
                    }
                    1 => {
                        if topics::effective(&next, &local().config.topic_defaults, k).is_none() {
                            return Err(TopicError::UnknownConfig(k.clone()));
                        }
                        next.remove(k);
                    }
                    _ => {
                        return Err(invalid(
                            k,
                            v.as_deref().unwrap_or("null"),
                            "APPEND and SUBTRACT apply to list configs; this broker has none",
                        ))
                    }
                }
            }
        }
    }
    Ok(next)
}

/// Changes topic configs; one answer per input.
pub async fn alter_configs(items: Vec<(String, ConfigChange)>, validate_only: bool) -> Vec<OpResult<()>> {
    let c = controller();
    let Ok(_permit) = c.permit.acquire_permit(1).await else {
        return refused(items.len());
    };
    let defaults = local().config.topic_defaults.clone();
    let mut table = c.table.borrow().clone();
    let mut out = Vec::with_capacity(items.len());
    let mut changed = Vec::new();
    for (name, change) in &items {
        let Some(meta) = table.topics.get_mut(name) else {
            out.push(Err((
                ResponseError::UnknownTopicOrPartition,
                format!("topic {name} does not exist"),
            )));
            continue;
        };
        match apply_change(&meta.config, change) {
            Ok(next) => {
                if !validate_only {
                    meta.config = next;
                    changed.push(name.clone());
                }
                out.push(Ok(()));
            }
            Err(e) => out.push(Err((crate::errors::topic(&e), e.to_string()))),
        }
    }
    if changed.is_empty() {
        return out;
    }
    if let Err(e) = store(&table) {
        return out.into_iter().map(|r| r.and(Err(e.clone()))).collect();
    }
    let items = partition_configs(&table, &changed, &defaults);
    if let Err(e) = open_everywhere(items).await {
        warn!("applying topic configs: {e}");
    }
    *c.table.borrow_mut() = table.clone();
    publish(&table).await;
    for name in &changed {
        info!(topic = %name, "changed topic config");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_dir_names() {
        assert_eq!(parse_partition_dir("orders-3"), Some(Ntp::new("orders", 3)));
        assert_eq!(parse_partition_dir("my-topic-12"), Some(Ntp::new("my-topic", 12)));
        assert_eq!(parse_partition_dir("orders"), None);
        assert_eq!(parse_partition_dir("-1"), None);
        assert_eq!(parse_partition_dir("x-1a"), None);
        assert_eq!(parse_partition_dir("x-+1"), None);
        assert_eq!(parse_partition_dir("x--1"), Some(Ntp::new("x-", 1)));
    }
}
