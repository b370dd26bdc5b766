//! Property tests of the topic state machine against a simple model: random
//! sequences of valid and invalid commands (names from a small alphabet so that
//! they collide, reused, stale and fresh ids, bad configs, empty and oversized
//! partition counts, bad replica sets) applied to a `TopicTable` and to a
//! plain map that implements the rules independently. After every step: the
//! same accept/refuse decision (and kind of refusal), the same state, a refused
//! command leaves the table byte-for-byte unchanged, the revision moves by one
//! exactly on success, the delta is the before/after difference, the
//! invariants hold, and a second table fed the same commands is equal.

use ferrolog_controlplane::commands::{
    apply, check, CommandError, ConfigChange, TopicChange, TopicCommand, TopicDelta,
};
use ferrolog_controlplane::topics::{
    validate_config, validate_name, ConfigOverrides, ReplicaSet, TopicTable, CONFIG_KEYS, PARTITIONS_MAX,
    REPLICATION_FACTOR_MAX,
};
use ferrolog_model::{Epoch, NodeId};
use proptest::prelude::*;
use proptest::sample::{subsequence, Index};
use proptest::test_runner::TestCaseError;
use std::collections::{BTreeMap, BTreeSet};

// ---- The model ----------------------------------------------------------

/// A topic as the model sees it: parallel vectors, no shared types with the
/// table beyond strings and integers.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ModelTopic {
    id: u128,
    replicas: Vec<Vec<i32>>,
    leaders: Vec<i32>,
    epochs: Vec<i32>,
    config: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Model {
    revision: u64,
    topics: BTreeMap<String, ModelTopic>,
}

/// The kind of a refusal, for comparing decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    Exists,
    Unknown,
    IdMismatch,
    DuplicateId,
    Name,
    Config,
    Count,
    Assignment,
}

fn kind(e: &CommandError) -> Refusal {
    match e {
        CommandError::TopicExists { .. } => Refusal::Exists,
        CommandError::UnknownTopic { .. } => Refusal::Unknown,
        CommandError::IdMismatch { .. } => Refusal::IdMismatch,
        CommandError::DuplicateTopicId { .. } => Refusal::DuplicateId,
        CommandError::InvalidName(_) => Refusal::Name,
        CommandError::InvalidConfig { .. } => Refusal::Config,
        CommandError::InvalidPartitionCount { .. } => Refusal::Count,
        CommandError::InvalidAssignment { .. } => Refusal::Assignment,
    }
}

fn raw(set: &ReplicaSet) -> Vec<i32> {
    set.iter().map(|n| n.0).collect()
}

/// Whether a replica set is acceptable: non-empty, bounded, non-negative
/// distinct nodes, and `factor` of them when the topic has a factor.
fn set_ok(set: &[i32], factor: Option<usize>) -> bool {
    let distinct: BTreeSet<i32> = set.iter().copied().collect();
    !set.is_empty()
        && set.len() <= REPLICATION_FACTOR_MAX
        && set.iter().all(|&n| n >= 0)
        && distinct.len() == set.len()
        && factor.is_none_or(|f| f == set.len())
}

fn model_config_change(
    current: &BTreeMap<String, String>,
    change: &ConfigChange,
) -> Option<BTreeMap<String, String>> {
    let valid = |k: &str, v: &str| validate_config(k, v).is_ok();
    match change {
        ConfigChange::Replace(set) => {
            let mut next = BTreeMap::new();
            for (k, v) in set {
                let v = v.as_ref()?;
                if !valid(k, v) {
                    return None;
                }
                next.insert(k.clone(), v.clone());
            }
            Some(next)
        }
        ConfigChange::Incremental(ops) => {
            let mut next = current.clone();
            for (k, op, v) in ops {
                match (op, v) {
                    (0, Some(v)) if valid(k, v) => {
                        next.insert(k.clone(), v.clone());
                    }
                    (1, _) if CONFIG_KEYS.contains(&k.as_str()) || k == "compression.type" => {
                        next.remove(k);
                    }
                    // cleanup.policy is the one list config: APPEND adds the
                    // items not listed yet, SUBTRACT removes items, starting
                    // from the current value or the default "delete".
                    (2 | 3, Some(v)) if k == "cleanup.policy" => {
                        let items = |s: &str| -> Vec<String> {
                            s.split(',')
                                .map(|i| i.trim().to_string())
                                .filter(|i| !i.is_empty())
                                .collect()
                        };
                        let mut list = items(next.get(k).map_or("delete", String::as_str));
                        for item in items(v) {
                            if *op == 2 {
                                if !list.contains(&item) {
                                    list.push(item);
                                }
                            } else {
                                list.retain(|i| *i != item);
                            }
                        }
                        let value = list.join(",");
                        if !valid(k, &value) {
                            return None;
                        }
                        next.insert(k.clone(), value);
                    }
                    _ => return None,
                }
            }
            Some(next)
        }
    }
}

impl Model {
    fn apply(&mut self, cmd: &TopicCommand) -> Result<(), Refusal> {
        match cmd {
            TopicCommand::CreateTopic {
                name,
                id,
                config,
                assignments,
            } => {
                if validate_name(name).is_err() {
                    return Err(Refusal::Name);
                }
                if self.topics.contains_key(name) {
                    return Err(Refusal::Exists);
                }
                if self.topics.values().any(|t| t.id == *id) {
                    return Err(Refusal::DuplicateId);
                }
                if assignments.is_empty() || assignments.len() > PARTITIONS_MAX as usize {
                    return Err(Refusal::Count);
                }
                let sets: Vec<Vec<i32>> = assignments.iter().map(raw).collect();
                let factor = sets[0].len();
                if !sets.iter().all(|s| set_ok(s, Some(factor))) {
                    return Err(Refusal::Assignment);
                }
                if !config.iter().all(|(k, v)| validate_config(k, v).is_ok()) {
                    return Err(Refusal::Config);
                }
                let topic = ModelTopic {
                    id: *id,
                    leaders: sets.iter().map(|s| s[0]).collect(),
                    epochs: vec![0; sets.len()],
                    replicas: sets,
                    config: config.clone(),
                };
                self.topics.insert(name.clone(), topic);
            }
            TopicCommand::DeleteTopic { name, id } => {
                let t = self.topics.get(name).ok_or(Refusal::Unknown)?;
                if t.id != *id {
                    return Err(Refusal::IdMismatch);
                }
                self.topics.remove(name);
            }
            TopicCommand::CreatePartitions {
                name,
                new_assignments,
            } => {
                let t = self.topics.get_mut(name).ok_or(Refusal::Unknown)?;
                let total = t.replicas.len() + new_assignments.len();
                if new_assignments.is_empty() || total > PARTITIONS_MAX as usize {
                    return Err(Refusal::Count);
                }
                let factor = t.replicas[0].len();
                let sets: Vec<Vec<i32>> = new_assignments.iter().map(raw).collect();
                if !sets.iter().all(|s| set_ok(s, Some(factor))) {
                    return Err(Refusal::Assignment);
                }
                for s in sets {
                    t.leaders.push(s[0]);
                    t.epochs.push(0);
                    t.replicas.push(s);
                }
            }
            TopicCommand::AlterConfig { name, change } => {
                let t = self.topics.get_mut(name).ok_or(Refusal::Unknown)?;
                t.config = model_config_change(&t.config, change).ok_or(Refusal::Config)?;
            }
        }
        self.revision += 1;
        Ok(())
    }
}

/// The table in the model's terms.
fn project(table: &TopicTable) -> Model {
    let topics = table
        .topics
        .iter()
        .map(|(name, t)| {
            let topic = ModelTopic {
                id: t.id,
                replicas: t.assignments.iter().map(|a| raw(&a.replicas)).collect(),
                leaders: t.assignments.iter().map(|a| a.leader.0).collect(),
                epochs: t.assignments.iter().map(|a| a.leader_epoch.0).collect(),
                config: t.config.clone(),
            };
            (name.clone(), topic)
        })
        .collect();
    Model {
        revision: table.revision,
        topics,
    }
}

// ---- Checks -------------------------------------------------------------

fn check_invariants(table: &TopicTable) -> Result<(), TestCaseError> {
    let mut ids = BTreeSet::new();
    for (name, t) in &table.topics {
        prop_assert!(validate_name(name).is_ok(), "bad name {name:?}");
        prop_assert!(
            (1..=PARTITIONS_MAX).contains(&t.partitions()),
            "{name}: count {}",
            t.partitions()
        );
        prop_assert_eq!(t.assignments.len(), t.partitions() as usize);
        let factor = t.assignments[0].replicas.len();
        for a in &t.assignments {
            prop_assert!(
                set_ok(&raw(&a.replicas), Some(factor)),
                "{name}: bad set {:?}",
                a.replicas
            );
            prop_assert!(
                a.replicas.contains(&a.leader),
                "{name}: leader {} not in its set",
                a.leader
            );
            // Nothing but a leadership change bumps epochs, and no command here makes one.
            prop_assert_eq!(a.leader_epoch, Epoch(0));
        }
        for (k, v) in &t.config {
            prop_assert!(validate_config(k, v).is_ok(), "{name}: bad config {k}={v}");
        }
        prop_assert!(ids.insert(t.id), "id {:x} used twice", t.id);
    }
    prop_assert_eq!(table.validate(), Ok(()));
    Ok(())
}

/// The change that turns `before` into `after`, for a command about `name`.
fn expected_change(
    before: &TopicTable,
    after: &TopicTable,
    name: &str,
) -> Result<TopicChange, TestCaseError> {
    let names: BTreeSet<&String> = before.topics.keys().chain(after.topics.keys()).collect();
    let changed: Vec<&String> = names
        .into_iter()
        .filter(|n| before.get(n) != after.get(n))
        .collect();
    prop_assert!(changed.len() <= 1, "one command changed {changed:?}");
    if let Some(n) = changed.first() {
        prop_assert_eq!(n.as_str(), name);
    }
    let name = name.to_string();
    Ok(match (before.get(&name), after.get(&name)) {
        (None, Some(meta)) => TopicChange::Created {
            name,
            meta: meta.clone(),
        },
        (Some(meta), None) => TopicChange::Deleted {
            name,
            meta: meta.clone(),
        },
        (Some(b), Some(a)) if b.partitions() != a.partitions() => {
            prop_assert_eq!((b.id, &b.config), (a.id, &a.config));
            prop_assert_eq!(&a.assignments[..b.assignments.len()], &b.assignments[..]);
            TopicChange::PartitionsAdded {
                name,
                from: b.partitions(),
                to: a.partitions(),
                assignments: a.assignments[b.assignments.len()..].to_vec(),
            }
        }
        (Some(b), Some(a)) => {
            prop_assert_eq!((b.id, &b.assignments), (a.id, &a.assignments));
            TopicChange::ConfigChanged {
                name,
                before: b.config.clone(),
                after: a.config.clone(),
            }
        }
        (None, None) => {
            return Err(TestCaseError::fail(format!(
                "accepted a command about no topic {name}"
            )))
        }
    })
}

// ---- Generated operations -------------------------------------------------

const NAMES: [&str; 5] = ["a", "b", "c", "bad/name", ".."];
const KEYS: [&str; 5] = [
    "retention.ms",
    "segment.bytes",
    "cleanup.policy",
    "compression.type",
    "x.unknown",
];
const VALUES: [&str; 6] = ["1000", "-1", "8192", "delete", "compact", "abc"];
const NODES: i32 = 5;

/// How a command's topic id is chosen, resolved against the model's state.
#[derive(Clone, Debug)]
enum IdPick {
    /// From a small pool, so ids of deleted topics come back.
    Pool(u128),
    /// Almost surely unused.
    Fresh(u128),
    /// The id of some existing topic (a collision on create).
    OfTopic(Index),
    /// The named topic's current id (a valid delete).
    Current,
}

/// How a command's replica sets are chosen.
#[derive(Clone, Debug)]
enum Sets {
    /// Distinct valid nodes, `factor` per set (possibly no sets).
    Uniform(Vec<Vec<i32>>),
    /// Valid sets of the named topic's factor (a valid grow).
    MatchingFactor(usize),
    /// Anything: empty sets, negative and repeated nodes, mixed sizes.
    Arbitrary(Vec<Vec<i32>>),
    /// Exactly PARTITIONS_MAX partitions in all, or one more.
    Bulk { over: bool },
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        name: &'static str,
        id: IdPick,
        config: Vec<(&'static str, &'static str)>,
        sets: Sets,
    },
    Delete {
        name: &'static str,
        id: IdPick,
    },
    Grow {
        name: &'static str,
        sets: Sets,
    },
    Alter {
        name: &'static str,
        change: ConfigChange,
    },
}

fn name() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        8 => proptest::sample::select(&NAMES[..2]),
        1 => Just(NAMES[2]),
        1 => proptest::sample::select(&NAMES[3..]),
    ]
}

fn id_pick() -> impl Strategy<Value = IdPick> {
    prop_oneof![
        3 => (1u128..=4).prop_map(IdPick::Pool),
        3 => any::<u128>().prop_map(IdPick::Fresh),
        1 => any::<Index>().prop_map(IdPick::OfTopic),
        3 => Just(IdPick::Current),
    ]
}

fn sets() -> impl Strategy<Value = Sets> {
    let nodes: Vec<i32> = (0..NODES).collect();
    let uniform = (1usize..=3).prop_flat_map(move |factor| {
        proptest::collection::vec(subsequence(nodes.clone(), factor).prop_shuffle(), 0..=4)
    });
    let arbitrary = proptest::collection::vec(proptest::collection::vec(-1..NODES, 0..=4), 0..=4);
    prop_oneof![
        4 => uniform.prop_map(Sets::Uniform),
        4 => (0usize..=3).prop_map(Sets::MatchingFactor),
        2 => arbitrary.prop_map(Sets::Arbitrary),
    ]
    // No `Sets::Bulk` here: tables of PARTITIONS_MAX (100,000) partitions,
    // generated hundreds of times per run and written to TOML, took minutes
    // in a debug build. `a_fixed_history_applies_as_the_model_predicts`
    // drives the cap (one over, then exactly at it) through the same model.
}

/// Valid pairs.
const GOOD: [(&str, &str); 5] = [
    ("retention.ms", "1000"),
    ("retention.ms", "-1"),
    ("segment.bytes", "8192"),
    ("cleanup.policy", "delete"),
    ("compression.type", "zstd"),
];

/// Mostly valid pairs; otherwise any key with any value (unknown keys, bad values).
fn key_value() -> impl Strategy<Value = (&'static str, &'static str)> {
    prop_oneof![
        3 => proptest::sample::select(&GOOD[..]),
        1 => (proptest::sample::select(&KEYS[..]), proptest::sample::select(&VALUES[..])),
    ]
}

fn config_change() -> impl Strategy<Value = ConfigChange> {
    let value = |v: &str| Some(v.to_string());
    let set = key_value().prop_map(move |(k, v)| (k.to_string(), value(v)));
    let null = proptest::sample::select(&KEYS[..]).prop_map(|k| (k.to_string(), None));
    let entry = prop_oneof![9 => set, 1 => null];
    let replace = proptest::collection::vec(entry.clone(), 0..=3).prop_map(ConfigChange::Replace);
    let op = prop_oneof![6 => Just(0i8), 3 => Just(1i8), 1 => -1i8..=4];
    let incremental = proptest::collection::vec((entry, op), 0..=3)
        .prop_map(|ops| ConfigChange::Incremental(ops.into_iter().map(|((k, v), op)| (k, op, v)).collect()));
    prop_oneof![replace, incremental]
}

fn create_config() -> impl Strategy<Value = Vec<(&'static str, &'static str)>> {
    prop_oneof![2 => Just(vec![]), 1 => proptest::collection::vec(key_value(), 1..=2)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (name(), id_pick(), create_config(), sets())
            .prop_map(|(name, id, config, sets)| Op::Create { name, id, config, sets }),
        2 => (name(), id_pick()).prop_map(|(name, id)| Op::Delete { name, id }),
        3 => (name(), sets()).prop_map(|(name, sets)| Op::Grow { name, sets }),
        3 => (name(), config_change()).prop_map(|(name, change)| Op::Alter { name, change }),
    ]
}

fn to_sets(raw: &[Vec<i32>]) -> Vec<ReplicaSet> {
    raw.iter()
        .map(|s| s.iter().copied().map(NodeId).collect())
        .collect()
}

/// `count` valid sets of `factor` nodes each, rotating through the nodes.
fn valid_sets(count: usize, factor: usize) -> Vec<ReplicaSet> {
    (0..count)
        .map(|i| {
            (0..factor)
                .map(|j| NodeId(((i + j) % NODES as usize) as i32))
                .collect()
        })
        .collect()
}

/// The concrete command an operation stands for in the model's current state.
fn resolve(op: &Op, model: &Model) -> TopicCommand {
    let topic = |name: &str| model.topics.get(name);
    let id = |pick: &IdPick, name: &str| match pick {
        IdPick::Pool(id) | IdPick::Fresh(id) => *id,
        IdPick::OfTopic(i) if !model.topics.is_empty() => model
            .topics
            .values()
            .nth(i.index(model.topics.len()))
            .map_or(1, |t| t.id),
        IdPick::OfTopic(_) => 1,
        IdPick::Current => topic(name).map_or(1, |t| t.id),
    };
    let sets = |sets: &Sets, name: &str, grow: bool| {
        let (count, factor) = topic(name).map_or((0, 1), |t| (t.replicas.len(), t.replicas[0].len()));
        let existing = if grow { count } else { 0 };
        match sets {
            Sets::Uniform(s) | Sets::Arbitrary(s) => to_sets(s),
            Sets::MatchingFactor(n) => valid_sets(*n, factor),
            Sets::Bulk { over } => {
                let want = PARTITIONS_MAX as usize + usize::from(*over);
                valid_sets(
                    want.saturating_sub(existing).max(1),
                    if grow { factor } else { 1 },
                )
            }
        }
    };
    match op {
        Op::Create {
            name,
            id: pick,
            config,
            sets: s,
        } => TopicCommand::CreateTopic {
            name: name.to_string(),
            id: id(pick, name),
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<ConfigOverrides>(),
            assignments: sets(s, name, false),
        },
        Op::Delete { name, id: pick } => TopicCommand::DeleteTopic {
            name: name.to_string(),
            id: id(pick, name),
        },
        Op::Grow { name, sets: s } => TopicCommand::CreatePartitions {
            name: name.to_string(),
            new_assignments: sets(s, name, true),
        },
        Op::Alter { name, change } => TopicCommand::AlterConfig {
            name: name.to_string(),
            change: change.clone(),
        },
    }
}

/// Applies the operations to a table, a twin table and the model, checking
/// every property after each step. Returns the table.
fn run(ops: &[Op]) -> Result<TopicTable, TestCaseError> {
    let mut table = TopicTable::default();
    let mut twin = TopicTable::default();
    let mut model = Model::default();
    for op in ops {
        let cmd = resolve(op, &model);
        let before = table.clone();
        let before_bytes = before.to_toml().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let checked = check(&table, &cmd);
        let result = apply(&mut table, &cmd);
        let expected = model.apply(&cmd);
        prop_assert_eq!(result.as_ref().map(drop).map_err(kind), expected, "{:?}", cmd);
        prop_assert_eq!(checked, result.as_ref().map(drop).map_err(Clone::clone));
        prop_assert_eq!(&project(&table), &model);
        match &result {
            Ok(TopicDelta { revision, change }) => {
                prop_assert_eq!(*revision, before.revision + 1);
                prop_assert_eq!(table.revision, before.revision + 1);
                prop_assert_eq!(change, &expected_change(&before, &table, cmd.name())?);
            }
            Err(_) => {
                prop_assert_eq!(&table, &before);
                let after_bytes = table.to_toml().map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(
                    after_bytes == before_bytes,
                    "a refused command changed the file bytes"
                );
            }
        }
        check_invariants(&table)?;
        prop_assert_eq!(apply(&mut twin, &cmd), result);
        prop_assert_eq!(&twin, &table);
    }
    Ok(table)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The table makes the model's decisions, reaches the model's state, and
    /// keeps every invariant, step by step.
    #[test]
    fn table_agrees_with_the_model_step_by_step(ops in proptest::collection::vec(op(), 1..40)) {
        run(&ops)?;
    }

    /// Any table the commands can build survives a store and a load
    /// unchanged, revision included.
    #[test]
    fn generated_tables_round_trip_through_the_file(
        ops in proptest::collection::vec(op(), 1..30),
        node in 0..NODES,
    ) {
        let table = run(&ops)?;
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        table.store(dir.path()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let loaded = TopicTable::load(dir.path(), NodeId(node)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(loaded, Some(table));
    }
}

/// One fixed sequence through every kind of change and refusal, so that a
/// change in the rules shows up as a readable failure, not only a shrunk case.
#[test]
fn a_fixed_history_applies_as_the_model_predicts() {
    let ops = [
        Op::Create {
            name: "a",
            id: IdPick::Pool(1),
            config: vec![("retention.ms", "1000")],
            sets: Sets::MatchingFactor(2),
        },
        Op::Create {
            name: "b",
            id: IdPick::Pool(1),
            config: vec![],
            sets: Sets::MatchingFactor(1),
        },
        Op::Grow {
            name: "a",
            sets: Sets::MatchingFactor(0),
        },
        Op::Grow {
            name: "a",
            sets: Sets::Bulk { over: true },
        },
        Op::Grow {
            name: "a",
            sets: Sets::Bulk { over: false },
        },
        Op::Alter {
            name: "a",
            change: ConfigChange::Incremental(vec![("x.unknown".into(), 1, None)]),
        },
        Op::Delete {
            name: "a",
            id: IdPick::Pool(2),
        },
        Op::Delete {
            name: "a",
            id: IdPick::Current,
        },
    ];
    let table = run(&ops).expect("model agreement");
    assert_eq!(table.revision, 3);
    assert!(table.topics.is_empty());
}
