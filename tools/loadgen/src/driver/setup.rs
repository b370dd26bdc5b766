//! Before the load starts: check the client configurations, reach the broker, create the topic
//! if needed, wait for its partition leaders, and read where each partition ends.

use super::shared::Notes;
use ferrolog_loadgen::options::{Compression, Workload};
use futures_lite::future::block_on;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::{FromClientConfigAndContext, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::BaseProducer;
use rdkafka::{ClientConfig, ClientContext};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bound of each metadata, admin and offset request, and of the wait for partition leaders.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between metadata polls while waiting for leaders.
const LEADER_POLL: Duration = Duration::from_millis(100);
/// Bound of one of those metadata polls.
const LEADER_METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// Callbacks of the clients that only set things up (admin, metadata, config probes).
pub struct PlainCtx {
    pub role: &'static str,
    pub notes: Arc<Notes>,
}

impl ClientContext for PlainCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.notes.client_log(self.role, level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.notes.client_error(self.role, &error, reason);
    }
}

impl ConsumerContext for PlainCtx {}

impl rdkafka::producer::ProducerContext for PlainCtx {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

pub fn client_config(settings: &[(String, String)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in settings {
        c.set(k, v);
    }
    c
}

/// Creates a client of type `T` from `settings`.
pub fn create<T, C>(settings: &[(String, String)], context: C) -> Result<T, KafkaError>
where
    T: FromClientConfigAndContext<C>,
    C: ClientContext,
{
    T::from_config_and_context(&client_config(settings), context)
}

/// Checks that librdkafka accepts the producer and consumer settings (compression codecs it
/// was built without, misspelt `-X`/`-C` keys), so a bad one fails here and not mid-run.
pub fn check_client_configs(w: &Workload, notes: &Arc<Notes>) -> Result<(), String> {
    if w.compression != Compression::None {
        // The codec alone first, so a codec missing from the build is named as such.
        let settings = [
            ("bootstrap.servers".to_string(), w.bootstrap.clone()),
            ("compression.type".to_string(), w.compression.as_str().to_string()),
        ];
        let probe = PlainCtx {
            role: "producer check",
            notes: Arc::clone(notes),
        };
        if let Err(e) = create::<BaseProducer<PlainCtx>, _>(&settings, probe) {
            return Err(format!(
                "--compression {} is not available in this build of librdkafka ({e})",
                w.compression.as_str()
            ));
        }
    }
    let probe = PlainCtx {
        role: "producer check",
        notes: Arc::clone(notes),
    };
    create::<BaseProducer<PlainCtx>, _>(&w.producer_settings(0), probe)
        .map_err(|e| format!("librdkafka refuses the producer configuration: {e}"))?;
    if w.consumers > 0 {
        let probe = PlainCtx {
            role: "consumer check",
            notes: Arc::clone(notes),
        };
        create::<BaseConsumer<PlainCtx>, _>(&w.consumer_settings("loadgen-config-check", 0), probe)
            .map_err(|e| format!("librdkafka refuses the consumer configuration: {e}"))?;
    }
    Ok(())
}

/// The topic as the run uses it.
pub struct Topic {
    pub partitions: u32,
    pub created: bool,
    /// Per partition, the end offset before the run (where the group starts reading).
    pub start_offsets: Vec<i64>,
}

/// Settings of the clients that only set things up (no `-X`/`-C`: those are per role).
pub fn admin_settings(w: &Workload) -> [(String, String); 2] {
    [
        ("bootstrap.servers".to_string(), w.bootstrap.clone()),
        ("client.id".to_string(), "ferrolog-loadgen-admin".to_string()),
    ]
}

/// A client for metadata and offsets.
pub fn metadata_client(w: &Workload, notes: &Arc<Notes>) -> Result<BaseConsumer<PlainCtx>, String> {
    let settings = admin_settings(w);
    let ctx = PlainCtx {
        role: "admin",
        notes: Arc::clone(notes),
    };
    create(&settings, ctx).map_err(|e| format!("creating the metadata client: {e}"))
}

/// Finds or creates the topic, waits until every partition has a leader, and reads the end
/// offsets.
pub fn prepare_topic(
    w: &Workload,
    meta: &BaseConsumer<PlainCtx>,
    notes: &Arc<Notes>,
) -> Result<Topic, String> {
    // All topics: asking for this one by name would auto-create it on brokers that do that.
    let md = meta.fetch_metadata(None, ADMIN_TIMEOUT).map_err(|e| {
        format!(
            "no metadata from {} within {ADMIN_TIMEOUT:?}: {e} (is a Kafka broker listening there?)",
            w.bootstrap
        )
    })?;
    if md.brokers().is_empty() {
        return Err(format!("the metadata from {} lists no brokers", w.bootstrap));
    }
    let existing = md
        .topics()
        .iter()
        .find(|t| t.name() == w.topic && t.error().is_none())
        .map(|t| t.partitions().len());
    let created = match existing {
        Some(n) => {
            if n != w.partitions as usize {
                eprintln!(
                    "topic {} exists with {n} partitions (not --partitions {}); using it as it is",
                    w.topic, w.partitions
                );
            }
            false
        }
        None => create_topic(w, notes)?,
    };
    let partitions = wait_leaders(meta, &w.topic, created.then_some(w.partitions))?;
    let mut start_offsets = Vec::with_capacity(partitions as usize);
    for p in 0..partitions {
        let partition = i32::try_from(p).map_err(|_| format!("partition {p} out of range"))?;
        let (_, high) = meta
            .fetch_watermarks(&w.topic, partition, ADMIN_TIMEOUT)
            .map_err(|e| format!("reading the end offset of {}/{p}: {e}", w.topic))?;
        start_offsets.push(high);
    }
    Ok(Topic {
        partitions,
        created,
        start_offsets,
    })
}

/// Creates the topic; `false` if it exists already (created meanwhile by someone else).
fn create_topic(w: &Workload, notes: &Arc<Notes>) -> Result<bool, String> {
    let settings = admin_settings(w);
    let ctx = PlainCtx {
        role: "admin",
        notes: Arc::clone(notes),
    };
    let admin: AdminClient<PlainCtx> =
        create(&settings, ctx).map_err(|e| format!("creating the admin client: {e}"))?;
    let partitions = i32::try_from(w.partitions).map_err(|_| "--partitions out of range".to_string())?;
    let topic = NewTopic::new(
        &w.topic,
        partitions,
        TopicReplication::Fixed(i32::from(w.replication_factor)),
    );
    let opts = AdminOptions::new()
        .operation_timeout(Some(ADMIN_TIMEOUT))
        .request_timeout(Some(ADMIN_TIMEOUT));
    let results = block_on(admin.create_topics([&topic], &opts))
        .map_err(|e| format!("CreateTopics for {} failed: {e}", w.topic))?;
    let mut created = false;
    for r in results {
        match r {
            Ok(_) => created = true,
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                eprintln!("topic {name} exists already; using it");
            }
            Err((name, code)) => {
                return Err(format!(
                    "creating topic {name} ({} partitions, replication factor {}) failed: {code}",
                    w.partitions, w.replication_factor
                ))
            }
        }
    }
    Ok(created)
}

/// Waits until every partition of `topic` (and `expected` of them, if given) has a leader;
/// returns the partition count.
fn wait_leaders(meta: &BaseConsumer<PlainCtx>, topic: &str, expected: Option<u32>) -> Result<u32, String> {
    let deadline = Instant::now() + ADMIN_TIMEOUT;
    let mut last = String::from("no metadata yet");
    while Instant::now() < deadline {
        match meta.fetch_metadata(Some(topic), LEADER_METADATA_TIMEOUT) {
            Ok(md) => match md.topics().iter().find(|t| t.name() == topic) {
                Some(t) if t.error().is_some() => last = format!("topic error {:?}", t.error()),
                Some(t) => {
                    let n = t.partitions().len();
                    let led = t
                        .partitions()
                        .iter()
                        .filter(|p| p.leader() >= 0 && p.error().is_none())
                        .count();
                    if n > 0 && led == n && expected.is_none_or(|e| e as usize == n) {
                        return u32::try_from(n).map_err(|_| format!("{topic} has {n} partitions"));
                    }
                    last = format!("{led} of {n} partitions have a leader");
                }
                None => last = "topic missing from the metadata".to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(LEADER_POLL);
    }
    Err(format!(
        "topic {topic} is not ready within {ADMIN_TIMEOUT:?}: {last}"
    ))
}
