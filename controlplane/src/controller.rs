//! The controller: the one writer of the cluster metadata.
//!
//! It runs on the node's control executor (never on a data shard), takes
//! proposed [`TopicCommand`]s one batch at a time (a permit), applies them
//! with the pure state machine (`commands::apply`), makes the new table
//! durable (`topics.toml`, written on the blocking pool) and only then
//! publishes an immutable [`MetadataSnapshot`] through the `Publish` hook,
//! which the node wires to every shard's reconciler. Nothing here opens,
//! creates or deletes a partition: the shards do, to match what was
//! published. On a single node the controller applies commands locally;
//! the Raft control plane will put the same commands through a replicated
//! log before applying them.
//!
//! Also here: the producer id allocator (InitProducerId).

use crate::commands::{self, CommandError, TopicChange, TopicCommand, TopicDelta};
use crate::metadata::{Broker, MetadataSnapshot};
use crate::producer_ids::{ProducerIdAllocator, ProducerIdError};
use crate::topics::{TableFileError, TopicTable, TOPICS_FILE};
use ferrolog_model::NodeId;
use glommio::sync::Semaphore;
use std::cell::RefCell;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use tracing::{info, warn};

/// Hands a new snapshot to every shard and resolves once they applied it.
pub type Publish = Rc<dyn Fn(Arc<MetadataSnapshot>) -> Pin<Box<dyn Future<Output = ()>>>>;

/// What the controller needs to know of its node.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    pub data_dir: PathBuf,
    pub cluster_id: String,
    /// This node as clients see it.
    pub broker: Broker,
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("cannot store {TOPICS_FILE}: {0}")]
    Store(std::io::Error),
    #[error(transparent)]
    ProducerIds(#[from] ProducerIdError),
    #[error("the controller is stopping")]
    Stopping,
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("cannot load the topic table: {0}")]
    Load(#[from] TableFileError),
}

pub struct Controller {
    config: ControllerConfig,
    table: RefCell<Arc<TopicTable>>,
    permit: Semaphore,
    publish: Publish,
    producer_ids: RefCell<Option<ProducerIdAllocator>>,
}

thread_local! {
    static CONTROLLER: RefCell<Option<Rc<Controller>>> = const { RefCell::new(None) };
}

/// The controller of this executor. Panics elsewhere: a programmer error.
pub fn local() -> Rc<Controller> {
    CONTROLLER.with(|c| {
        c.borrow()
            .clone()
            .expect("controller used off the control executor")
    })
}

impl Controller {
    /// Loads the table (no file: an empty one; a directory never becomes a
    /// topic here), publishes it, and installs the controller on this
    /// executor.
    pub async fn bootstrap(
        config: ControllerConfig,
        publish: Publish,
    ) -> Result<Rc<Controller>, BootstrapError> {
        let (dir, node) = (config.data_dir.clone(), config.broker.id);
        let table = ferrolog_shard::blocking(move || TopicTable::load(&dir, node))
            .await?
            .unwrap_or_default();
        info!(
            topics = table.topics.len(),
            revision = table.revision,
            "topic table loaded"
        );
        let c = Rc::new(Controller {
            config,
            table: RefCell::new(Arc::new(table)),
            permit: Semaphore::new(1),
            publish,
            producer_ids: RefCell::new(None),
        });
        CONTROLLER.with(|slot| *slot.borrow_mut() = Some(c.clone()));
        (c.publish)(c.snapshot()).await;
        Ok(c)
    }

    pub fn node_id(&self) -> NodeId {
        self.config.broker.id
    }

    /// The current table (what proposers read to choose their commands).
    pub fn table(&self) -> Arc<TopicTable> {
        self.table.borrow().clone()
    }

    /// The metadata as published.
    pub fn snapshot(&self) -> Arc<MetadataSnapshot> {
        Arc::new(MetadataSnapshot {
            cluster_id: self.config.cluster_id.clone(),
            controller: self.config.broker.id,
            brokers: vec![self.config.broker.clone()],
            topics: self.table(),
        })
    }

    /// Applies `cmds` in order, each on the table the previous ones left;
    /// one answer per command. Unless `validate_only`, the table is stored
    /// and published once, after every command was applied; if it cannot be
    /// stored, nothing changes and every accepted command gets the error.
    pub async fn propose(
        &self,
        cmds: Vec<TopicCommand>,
        validate_only: bool,
    ) -> Vec<Result<TopicDelta, ControllerError>> {
        let Ok(_permit) = self.permit.acquire_permit(1).await else {
            return cmds.iter().map(|_| Err(ControllerError::Stopping)).collect();
        };
        let mut table = TopicTable::clone(&self.table());
        let mut out: Vec<Result<TopicDelta, ControllerError>> = cmds
            .iter()
            .map(|c| commands::apply(&mut table, c).map_err(ControllerError::from))
            .collect();
        if validate_only || out.iter().all(Result::is_err) {
            return out;
        }
        let (dir, stored) = (self.config.data_dir.clone(), table.clone());
        if let Err(e) = ferrolog_shard::blocking(move || stored.store(&dir)).await {
            warn!("cannot store the topic table: {e}");
            let kind = e.kind();
            for r in out.iter_mut().filter(|r| r.is_ok()) {
                *r = Err(ControllerError::Store(std::io::Error::new(kind, e.to_string())));
            }
            return out;
        }
        for d in out.iter().flatten() {
            info!(revision = d.revision, "{}", describe(&d.change));
        }
        *self.table.borrow_mut() = Arc::new(table);
        (self.publish)(self.snapshot()).await;
        out
    }

    /// A producer id never handed out before from this data directory.
    pub fn next_producer_id(&self) -> Result<i64, ControllerError> {
        let mut ids = self.producer_ids.borrow_mut();
        if ids.is_none() {
            *ids = Some(ProducerIdAllocator::open(&self.config.data_dir)?);
        }
        Ok(ids.as_mut().expect("opened above").allocate()?)
    }
}

/// One line for the log about an applied change (not its whole delta: a
/// topic of thousands of partitions would make a line of thousands of
/// assignments).
fn describe(change: &TopicChange) -> String {
    match change {
        TopicChange::Created { name, meta } => format!(
            "created topic {name} ({} partitions, replication factor {})",
            meta.partitions(),
            meta.replication_factor()
        ),
        TopicChange::Deleted { name, .. } => format!("deleted topic {name}"),
        TopicChange::PartitionsAdded { name, from, to, .. } => {
            format!("added partitions {from}..{to} to topic {name}")
        }
        TopicChange::ConfigChanged { name, after, .. } => {
            format!("changed the config of topic {name}: {after:?}")
        }
    }
}
