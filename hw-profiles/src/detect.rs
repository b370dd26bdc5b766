//! Hardware detection: what this machine has (CPUs, cores, NUMA nodes, caches, memory), read
//! through hwloc (the `hwlocality` crate over the system libhwloc).
//!
//! [`detect`] runs once at startup on the main thread (and in `ferrolog tune`); the [`Machine`]
//! it returns is plain data that validation ([`crate::Profile::validate_for`]) and logging use.
//! Tests build a `Machine` by hand, so validation never depends on the machine it runs on.
//!
//! The topology is loaded with hwloc's `INCLUDE_DISALLOWED` flag, so a process restricted to some
//! CPUs by a cgroup still sees every online CPU and all of the machine's memory: a profile
//! describes the machine, and the same CPU numbers as `/sys/devices/system/cpu/online`. Memory is
//! the NUMA nodes' total (MemTotal), not what is free, and not a cgroup's memory limit.

use std::collections::BTreeMap;

use hwlocality::object::attributes::ObjectAttributes;
use hwlocality::object::types::ObjectType;
use hwlocality::object::TopologyObject;
use hwlocality::topology::builder::BuildFlags;
use hwlocality::Topology;

use crate::format_bytes;

/// What [`detect`] found. Every CPU list holds OS indexes (the numbers of
/// `/sys/devices/system/cpu/cpuN` and of cpuset lists), sorted and distinct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// Online CPUs (hwloc PUs, i.e. hardware threads).
    pub cpus: Vec<usize>,
    /// Physical cores; each online CPU is in exactly one, SMT siblings share one.
    pub cores: Vec<Core>,
    /// NUMA nodes, by OS index; at least one.
    pub numa_nodes: Vec<NumaNode>,
    /// Data and unified CPU caches (instruction caches left out), outermost level last.
    pub caches: Vec<Cache>,
    /// Memory of the whole machine: the sum over its NUMA nodes.
    pub memory_bytes: u64,
}

/// One physical core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Core {
    /// Its online hardware threads.
    pub cpus: Vec<usize>,
}

/// One NUMA node: memory and the CPUs closest to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumaNode {
    pub os_index: usize,
    /// Online CPUs local to this node (empty for a CPU-less memory node).
    pub cpus: Vec<usize>,
    pub memory_bytes: u64,
}

/// One CPU cache instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    /// 1 for L1, 2 for L2, ...
    pub level: usize,
    pub bytes: u64,
    /// Online CPUs that share it.
    pub cpus: Vec<usize>,
}

/// Why [`detect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("hwloc cannot load this machine's topology: {0}")]
    Topology(String),
    #[error("hwloc found no online CPU")]
    NoCpus,
    #[error("hwloc found no memory (no NUMA node reports its size)")]
    NoMemory,
}

/// Loads this machine's topology with hwloc.
pub fn detect() -> Result<Machine, DetectError> {
    let topology = Topology::builder()
        .with_flags(BuildFlags::INCLUDE_DISALLOWED)
        .map_err(|e| DetectError::Topology(e.to_string()))?
        .build()
        .map_err(|e| DetectError::Topology(e.to_string()))?;

    let cpus = cpus_of(Some(topology.root_object()));
    if cpus.is_empty() {
        return Err(DetectError::NoCpus);
    }

    let mut cores: Vec<Core> = topology
        .objects_with_type(ObjectType::Core)
        .map(|core| Core {
            cpus: cpus_of(Some(core)),
        })
        .filter(|core| !core.cpus.is_empty())
        .collect();
    // Some virtual machines and architectures report PUs without Core objects: then every CPU
    // counts as a core of its own, so the "one core per CPU" invariant still holds.
    if cores.is_empty() {
        cores = cpus.iter().map(|&cpu| Core { cpus: vec![cpu] }).collect();
    }
    cores.sort_by_key(|core| core.cpus[0]);

    let mut numa_nodes: Vec<NumaNode> = topology
        .objects_with_type(ObjectType::NUMANode)
        .map(|node| NumaNode {
            os_index: node.os_index().unwrap_or(node.logical_index()),
            cpus: cpus_of(Some(node)),
            memory_bytes: match node.attributes() {
                Some(ObjectAttributes::NUMANode(numa)) => numa.local_memory().map_or(0, |m| m.get()),
                _ => 0,
            },
        })
        .collect();
    numa_nodes.sort_by_key(|node| node.os_index);
    let memory_bytes: u64 = numa_nodes.iter().map(|node| node.memory_bytes).sum();
    if memory_bytes == 0 {
        return Err(DetectError::NoMemory);
    }

    let mut caches: Vec<Cache> = topology
        .objects()
        .filter(|object| object.object_type().is_cpu_data_cache())
        .filter_map(|object| match object.attributes() {
            Some(ObjectAttributes::Cache(cache)) => Some(Cache {
                level: cache.depth(),
                bytes: cache.size().map_or(0, |size| size.get()),
                cpus: cpus_of(Some(object)),
            }),
            _ => None,
        })
        .filter(|cache| cache.bytes > 0)
        .collect();
    caches.sort_by_key(|cache| (cache.level, cache.cpus.first().copied()));

    Ok(Machine {
        cpus,
        cores,
        numa_nodes,
        caches,
        memory_bytes,
    })
}

/// The online CPUs of an object, sorted (hwloc bitmaps iterate in increasing order).
fn cpus_of(object: Option<&TopologyObject>) -> Vec<usize> {
    object
        .and_then(TopologyObject::cpuset)
        .map(|set| set.iter_set().map(usize::from).collect())
        .unwrap_or_default()
}

impl Machine {
    /// One line for logs: "2 CPUs on 2 cores, 1 NUMA node, 23.4 GiB, L1 48 KiB x2, L2 2 MiB x2,
    /// L3 32 MiB x1".
    pub fn summary(&self) -> String {
        let plural = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let mut parts = vec![
            format!(
                "{} on {}",
                plural(self.cpus.len(), "CPU", "CPUs"),
                plural(self.cores.len(), "core", "cores")
            ),
            plural(self.numa_nodes.len(), "NUMA node", "NUMA nodes"),
            format_bytes(self.memory_bytes),
        ];
        // Caches of one level usually share a size; count instances per (level, size).
        let mut levels: BTreeMap<(usize, u64), usize> = BTreeMap::new();
        for cache in &self.caches {
            *levels.entry((cache.level, cache.bytes)).or_default() += 1;
        }
        for ((level, bytes), count) in levels {
            parts.push(format!("L{level} {} x{count}", format_bytes(bytes)));
        }
        parts.join(", ")
    }

    /// The NUMA node whose CPUs include `cpu`, if any.
    pub fn numa_node_of(&self, cpu: usize) -> Option<&NumaNode> {
        self.numa_nodes
            .iter()
            .find(|node| node.cpus.binary_search(&cpu).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::online_cpus;

    #[test]
    fn detect_is_consistent_with_this_machine() {
        let machine = detect().expect("hwloc detects this machine");
        assert_eq!(
            machine.cpus,
            online_cpus(),
            "hwloc and /sys disagree on online CPUs"
        );
        assert!(machine.cpus.windows(2).all(|pair| pair[0] < pair[1]));

        let mut in_cores: Vec<usize> = machine.cores.iter().flat_map(|core| core.cpus.clone()).collect();
        in_cores.sort_unstable();
        assert_eq!(in_cores, machine.cpus, "every CPU is in exactly one core");

        assert!(!machine.numa_nodes.is_empty());
        assert!(machine.memory_bytes > 0);
        assert_eq!(
            machine.memory_bytes,
            machine
                .numa_nodes
                .iter()
                .map(|node| node.memory_bytes)
                .sum::<u64>()
        );
        for node in &machine.numa_nodes {
            assert!(node.cpus.iter().all(|cpu| machine.cpus.contains(cpu)), "{node:?}");
        }
        for cache in &machine.caches {
            assert!(cache.level >= 1 && cache.bytes > 0, "{cache:?}");
            assert!(
                cache.cpus.iter().all(|cpu| machine.cpus.contains(cpu)),
                "{cache:?}"
            );
        }
        // hwloc's root object sums the same NUMA memory independently of our loop.
        let topology = Topology::builder()
            .with_flags(BuildFlags::INCLUDE_DISALLOWED)
            .expect("flags")
            .build()
            .expect("topology");
        assert_eq!(machine.memory_bytes, topology.root_object().total_memory());

        let summary = machine.summary();
        assert!(
            summary.starts_with(&format!("{} CPU", machine.cpus.len())),
            "{summary}"
        );
    }

    #[test]
    fn summary_counts_and_pluralises() {
        let machine = Machine {
            cpus: vec![0, 1],
            cores: vec![Core { cpus: vec![0] }, Core { cpus: vec![1] }],
            numa_nodes: vec![NumaNode {
                os_index: 0,
                cpus: vec![0, 1],
                memory_bytes: 25_125_558_272,
            }],
            caches: vec![
                Cache {
                    level: 1,
                    bytes: 48 << 10,
                    cpus: vec![0],
                },
                Cache {
                    level: 1,
                    bytes: 48 << 10,
                    cpus: vec![1],
                },
                Cache {
                    level: 3,
                    bytes: 32 << 20,
                    cpus: vec![0, 1],
                },
            ],
            memory_bytes: 25_125_558_272,
        };
        assert_eq!(
            machine.summary(),
            "2 CPUs on 2 cores, 1 NUMA node, 23.4 GiB, L1 48 KiB x2, L3 32 MiB x1"
        );
        assert_eq!(machine.numa_node_of(1).map(|node| node.os_index), Some(0));
        assert_eq!(machine.numa_node_of(7), None);
    }
}
