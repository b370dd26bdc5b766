//! Which CPUs take the interrupts of the data disk and of the NICs, as `rpk tune` looks at them
//! before it moves them: an interrupt handled on a shard's core, and the completion work the
//! kernel defers to a worker on that core, compete with the shard's reactor.
//!
//! A device's interrupt numbers come from sysfs: the directory of the block device holding the
//! data directory (`/sys/dev/block/MAJOR:MINOR`) or of a network interface
//! (`/sys/class/net/NAME/device`), walked up to the PCI function that owns the MSI vectors
//! (`msi_irqs/`) or a legacy `irq` line. Their names and how many each CPU has taken come from
//! `/proc/interrupts`, the CPUs they may run on from `/proc/irq/N/effective_affinity_list` (or
//! `smp_affinity_list`). Applying an IRQ cpuset writes `/proc/irq/N/smp_affinity_list`, which
//! needs root and an interrupt controller that allows it.
//!
//! Every function takes the sysfs and procfs roots, so the tests run on fixture trees.

use crate::{format_cpuset, parse_cpuset};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Levels walked up from a device's sysfs directory looking for its interrupts.
const WALK_UP_MAX: usize = 8;

/// One interrupt line as `/proc/interrupts` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IrqLine {
    pub irq: u32,
    /// The last column: the handler's name (e.g. `virtio1-req.0`, `nvme0q3`, `eth0-rx-0`).
    pub name: String,
    /// Interrupts taken so far, by CPU number.
    pub counts: BTreeMap<usize, u64>,
}

/// Parses `/proc/interrupts`: the header names the CPU columns (`CPU0 CPU1 ...`); numbered lines
/// only (the `NMI:`/`LOC:` summaries are not device interrupts).
pub fn parse_proc_interrupts(text: &str) -> BTreeMap<u32, IrqLine> {
    let mut lines = text.lines();
    let cpus: Vec<usize> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.strip_prefix("CPU")?.parse().ok())
        .collect();
    let mut out = BTreeMap::new();
    for line in lines {
        let mut fields = line.split_whitespace();
        let Some(irq) = fields
            .next()
            .and_then(|f| f.strip_suffix(':')?.parse::<u32>().ok())
        else {
            continue;
        };
        let rest: Vec<&str> = fields.collect();
        let counts: BTreeMap<usize, u64> = cpus
            .iter()
            .zip(rest.iter())
            .filter_map(|(cpu, n)| Some((*cpu, n.parse::<u64>().ok()?)))
            .collect();
        if counts.len() != cpus.len() {
            continue;
        }
        let name = rest.last().copied().unwrap_or_default().to_string();
        out.insert(irq, IrqLine { irq, name, counts });
    }
    out
}

/// The interrupt numbers of the device whose sysfs directory is `dir` (any path below its PCI
/// function: a block device, a partition, a virtio device, a network interface's `device`).
pub fn device_irqs(dir: &Path) -> Vec<u32> {
    let Ok(mut at) = fs::canonicalize(dir) else {
        return Vec::new();
    };
    for _ in 0..WALK_UP_MAX {
        let msi = at.join("msi_irqs");
        if let Ok(entries) = fs::read_dir(&msi) {
            let mut irqs: Vec<u32> = entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect();
            irqs.sort_unstable();
            if !irqs.is_empty() {
                return irqs;
            }
        }
        if let Some(irq) = fs::read_to_string(at.join("irq"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .filter(|irq| *irq != 0)
        {
            return vec![irq];
        }
        if !at.pop() {
            break;
        }
    }
    Vec::new()
}

/// The sysfs directory of the block device that holds `path` (`/sys/dev/block/MAJOR:MINOR`).
pub fn block_device_dir(sys: &Path, path: &Path) -> io::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dev = fs::metadata(path)?.dev();
    // glibc's major()/minor() encoding.
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    Ok(sys.join("dev/block").join(format!("{major}:{minor}")))
}

/// Network interfaces backed by a device (`/sys/class/net/NAME/device` exists): loopback,
/// veth, bridges and the like have no interrupts of their own.
pub fn nic_device_dirs(sys: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = fs::read_dir(sys.join("class/net")) else {
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let device = e.path().join("device");
            device
                .exists()
                .then(|| (e.file_name().to_string_lossy().into_owned(), device))
        })
        .collect();
    out.sort();
    out
}

/// The CPUs interrupt `irq` may be delivered to.
pub fn irq_affinity(proc_root: &Path, irq: u32) -> Option<Vec<usize>> {
    let dir = proc_root.join("irq").join(irq.to_string());
    ["effective_affinity_list", "smp_affinity_list"]
        .iter()
        .find_map(|f| parse_cpuset(fs::read_to_string(dir.join(f)).ok()?.trim()).ok())
}

/// What a device's interrupts look like on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIrqs {
    /// What the device is, for people: "data disk vda", "NIC eth0".
    pub what: String,
    pub irqs: Vec<IrqInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IrqInfo {
    pub irq: u32,
    pub name: String,
    /// Interrupts taken so far, by CPU, only CPUs that took any.
    pub taken: BTreeMap<usize, u64>,
    /// The CPUs it may be delivered to, if readable.
    pub affinity: Option<Vec<usize>>,
}

impl DeviceIrqs {
    /// CPUs that took any of these interrupts, or may take them.
    pub fn cpus(&self) -> Vec<usize> {
        let mut cpus: Vec<usize> = self
            .irqs
            .iter()
            .flat_map(|i| {
                i.taken
                    .keys()
                    .copied()
                    .chain(i.affinity.iter().flatten().copied())
            })
            .collect();
        cpus.sort_unstable();
        cpus.dedup();
        cpus
    }

    /// One line per interrupt: number, name, CPUs it was taken on (with counts), affinity.
    pub fn describe(&self) -> Vec<String> {
        self.irqs
            .iter()
            .map(|i| {
                let taken = if i.taken.is_empty() {
                    "none taken yet".to_string()
                } else {
                    i.taken
                        .iter()
                        .map(|(cpu, n)| format!("{n} on CPU {cpu}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let affinity = i
                    .affinity
                    .as_deref()
                    .map_or_else(|| "unknown".to_string(), format_cpuset);
                format!("IRQ {} {}: {taken}; affinity {affinity}", i.irq, i.name)
            })
            .collect()
    }
}

fn device(what: String, irqs: &[u32], lines: &BTreeMap<u32, IrqLine>, proc_root: &Path) -> DeviceIrqs {
    DeviceIrqs {
        what,
        irqs: irqs
            .iter()
            .map(|irq| {
                let line = lines.get(irq);
                IrqInfo {
                    irq: *irq,
                    name: line.map_or_else(|| "?".to_string(), |l| l.name.clone()),
                    taken: line
                        .map(|l| {
                            l.counts
                                .iter()
                                .filter(|(_, n)| **n > 0)
                                .map(|(c, n)| (*c, *n))
                                .collect()
                        })
                        .unwrap_or_default(),
                    affinity: irq_affinity(proc_root, *irq),
                }
            })
            .collect(),
    }
}

/// The interrupts of the disk holding `data_dir` and of every NIC, from the given roots (`/sys`
/// and `/proc` on a real machine). A device whose interrupts cannot be found is left out.
pub fn survey(sys: &Path, proc_root: &Path, data_dir: &Path) -> Vec<DeviceIrqs> {
    let lines = fs::read_to_string(proc_root.join("interrupts"))
        .map(|t| parse_proc_interrupts(&t))
        .unwrap_or_default();
    let mut out = Vec::new();
    if let Ok(dir) = block_device_dir(sys, data_dir) {
        let irqs = device_irqs(&dir);
        if !irqs.is_empty() {
            let name = fs::canonicalize(&dir)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "?".into());
            out.push(device(format!("data disk {name}"), &irqs, &lines, proc_root));
        }
    }
    for (name, dir) in nic_device_dirs(sys) {
        let irqs = device_irqs(&dir);
        if !irqs.is_empty() {
            out.push(device(format!("NIC {name}"), &irqs, &lines, proc_root));
        }
    }
    out
}

/// The shard CPUs that also take (or may take) interrupts of `devices`, with the devices.
pub fn shared_with_shards(devices: &[DeviceIrqs], shard_cpus: &[usize]) -> Vec<(String, Vec<usize>)> {
    devices
        .iter()
        .filter_map(|d| {
            let shared: Vec<usize> = d.cpus().into_iter().filter(|c| shard_cpus.contains(c)).collect();
            (!shared.is_empty()).then(|| (d.what.clone(), shared))
        })
        .collect()
}

/// Moves every interrupt of `devices` to `cpus` (`/proc/irq/N/smp_affinity_list`). Returns the
/// interrupts that refused, with why (not root, a controller that pins them, ...).
pub fn apply_affinity(proc_root: &Path, devices: &[DeviceIrqs], cpus: &[usize]) -> Vec<(u32, String)> {
    let list = format_cpuset(cpus);
    let mut failed = Vec::new();
    for i in devices.iter().flat_map(|d| &d.irqs) {
        let path = proc_root
            .join("irq")
            .join(i.irq.to_string())
            .join("smp_affinity_list");
        if let Err(e) = fs::write(&path, format!("{list}\n")) {
            failed.push((i.irq, e.to_string()));
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const INTERRUPTS: &str = "           CPU0       CPU1       
 24:          2          0  IO-APIC   5-edge      ACPI:Ged
 35:          0          2 PCI-MSIX-0000:00:02.0   0-edge      virtio1-config
 36:          0    7006898 PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0
 38:          0       3686 PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0
 39:       2700          0 PCI-MSIX-0000:00:03.0   2-edge      virtio2-output.0
NMI:          0          0   Non-maskable interrupts
LOC:   12345678   23456789   Local timer interrupts
";

    #[test]
    fn proc_interrupts_lines_parse_with_their_cpus() {
        let lines = parse_proc_interrupts(INTERRUPTS);
        assert_eq!(
            lines.keys().copied().collect::<Vec<_>>(),
            vec![24, 35, 36, 38, 39]
        );
        let req = &lines[&36];
        assert_eq!(req.name, "virtio1-req.0");
        assert_eq!(req.counts, BTreeMap::from([(0, 0), (1, 7_006_898)]));
        assert_eq!(lines[&24].name, "ACPI:Ged");
    }

    /// A fixture sysfs and procfs: a virtio disk vda (IRQs 35, 36) at PCI 0000:00:02.0 and a
    /// virtio NIC eth0 (IRQs 38, 39) at 0000:00:03.0; lo has no device.
    fn fixture() -> tempfile::TempDir {
        let t = tempfile::tempdir().expect("tempdir");
        let r = t.path();
        let pci = r.join("sys/devices/pci0000:00");
        let disk = pci.join("0000:00:02.0");
        fs::create_dir_all(disk.join("virtio1/block/vda")).expect("mkdir");
        fs::create_dir_all(disk.join("msi_irqs/35")).expect("mkdir");
        fs::create_dir_all(disk.join("msi_irqs/36")).expect("mkdir");
        let nic = pci.join("0000:00:03.0");
        fs::create_dir_all(nic.join("virtio2")).expect("mkdir");
        fs::create_dir_all(nic.join("msi_irqs/38")).expect("mkdir");
        fs::create_dir_all(nic.join("msi_irqs/39")).expect("mkdir");
        fs::create_dir_all(r.join("sys/class/net/eth0")).expect("mkdir");
        fs::create_dir_all(r.join("sys/class/net/lo")).expect("mkdir");
        symlink(nic.join("virtio2"), r.join("sys/class/net/eth0/device")).expect("symlink");
        fs::create_dir_all(r.join("proc")).expect("mkdir");
        fs::write(r.join("proc/interrupts"), INTERRUPTS).expect("write");
        for (irq, aff) in [(35, "0-1"), (36, "1"), (38, "1"), (39, "0")] {
            let d = r.join(format!("proc/irq/{irq}"));
            fs::create_dir_all(&d).expect("mkdir");
            fs::write(d.join("effective_affinity_list"), format!("{aff}\n")).expect("write");
            fs::write(d.join("smp_affinity_list"), "0-1\n").expect("write");
        }
        t
    }

    #[test]
    fn a_block_device_and_a_nic_are_traced_to_their_interrupts() {
        let t = fixture();
        let r = t.path();
        let disk = r.join("sys/devices/pci0000:00/0000:00:02.0/virtio1/block/vda");
        assert_eq!(device_irqs(&disk), vec![35, 36]);
        let nics = nic_device_dirs(&r.join("sys"));
        assert_eq!(nics.len(), 1, "lo has no device: {nics:?}");
        assert_eq!(nics[0].0, "eth0");
        assert_eq!(device_irqs(&nics[0].1), vec![38, 39]);
        let lines = parse_proc_interrupts(INTERRUPTS);
        let d = device("data disk vda".into(), &[35, 36], &lines, &r.join("proc"));
        assert_eq!(d.cpus(), vec![0, 1], "IRQ 35 may run on 0-1");
        assert_eq!(
            d.describe(),
            vec![
                "IRQ 35 virtio1-config: 2 on CPU 1; affinity 0-1".to_string(),
                "IRQ 36 virtio1-req.0: 7006898 on CPU 1; affinity 1".to_string(),
            ]
        );
        let shared = shared_with_shards(std::slice::from_ref(&d), &[1]);
        assert_eq!(shared, vec![("data disk vda".to_string(), vec![1])]);
        assert!(shared_with_shards(&[d], &[2, 3]).is_empty());
        // A device with no interrupt found anywhere above it.
        fs::create_dir_all(r.join("sys/devices/virtual/net/veth0")).expect("mkdir");
        assert!(device_irqs(&r.join("sys/devices/virtual/net/veth0")).is_empty());
    }

    #[test]
    fn applying_an_irq_cpuset_writes_each_affinity_and_reports_refusals() {
        let t = fixture();
        let r = t.path();
        let lines = parse_proc_interrupts(INTERRUPTS);
        let mut d = device("NIC eth0".into(), &[38, 39], &lines, &r.join("proc"));
        assert!(apply_affinity(&r.join("proc"), std::slice::from_ref(&d), &[0]).is_empty());
        for irq in [38, 39] {
            let text = fs::read_to_string(r.join(format!("proc/irq/{irq}/smp_affinity_list"))).expect("read");
            assert_eq!(text, "0\n");
        }
        // An interrupt whose affinity file cannot be written is reported, the others done.
        d.irqs.push(IrqInfo {
            irq: 77,
            name: "gone".into(),
            taken: BTreeMap::new(),
            affinity: None,
        });
        let failed = apply_affinity(&r.join("proc"), &[d], &[1]);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, 77);
    }
}
