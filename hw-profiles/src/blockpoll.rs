//! Whether the data disk can complete I/O by polling, and what that does for a durable append.
//!
//! An O_DIRECT write issued through io_uring on ext4 or XFS completes by an interrupt, and
//! iomap then finishes it on the file system's `dio/<disk>` workqueue: a kernel worker (nice 0)
//! on the CPU that completed the request wakes the shard. Only a synchronous write (a blocking
//! `pwrite`) is woken from the interrupt itself. Measured on the development VM
//! (docs/benchmarks.md, "The write's completion goes through a kernel worker"): 100% of the
//! broker's write completions came through that worker, costing nothing at p50 and 38-88 us
//! against 31-45 us for the raw write at p99.
//!
//! Poll queues do not change that for writes. iomap lets a request be polled only when its
//! completion may run inline or in the caller's task, and an io_uring write gets neither: io_uring
//! does not set `IOCB_DIO_CALLER_COMP` (turned off in Linux 6.6), and iomap clears `IOCB_HIPRI`
//! for such a write (fs/iomap/direct-io.c, io_uring/rw.c). So on an `IORING_SETUP_IOPOLL` ring,
//! which glommio uses for a file whose device has poll queues, a write still completes through
//! the interrupt and the worker while the ring spins for it. Reads complete inline and are polled.
//! Poll queues are a driver parameter set at boot (`nvme.poll_queues`, `virtio_blk.poll_queues`);
//! the block device shows them as `queue/io_poll` = 1.
//!
//! Where that worker runs is the CPU that completes the request, which `queue/rq_affinity`
//! chooses: 1 (the default) completes it on the interrupt's CPU when that CPU shares a cache with
//! the one that issued the request, 2 always on the issuing CPU (an IPI when the interrupt
//! landed elsewhere). A shard's write then completes, and its worker runs, on the shard's own
//! CPU, which is idle while the shard waits, instead of the interrupt's CPU, where a client or
//! anything else may be running. That is what a machine wants whose interrupts cannot be kept off
//! the shards' CPUs (`shards.irq_cpuset` unset: every CPU runs a shard); where they are moved to
//! CPUs without a shard, those CPUs are meant to do the completion work and 1 is right. On the
//! dev VM, whose disk interrupts all land on CPU 1 and cannot be moved, 2 took a busy-polling client's p99.9 from a median of 858 to 500 us over
//! seven interleaved pairs (shards at nice -10; 1,058 to 534 us at nice 0), its p99 unchanged
//! (docs/benchmarks.md, "A busy client's first messages after a pause, and where the disk's
//! completions run").
//!
//! Every function takes the sysfs root or a sysfs directory, so the tests run on fixture trees.

use crate::irq::block_device_dir;
use std::fs;
use std::path::{Path, PathBuf};

/// The data disk's completion settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDisk {
    /// The whole disk's name (`vda`, `nvme0n1`): a partition's parent.
    pub disk: String,
    /// The disk's driver (`virtio_blk`, `nvme`), where sysfs names it.
    pub driver: Option<String>,
    /// `queue/io_poll`: whether the disk has poll queues; `None` where the file is missing.
    pub io_poll: Option<bool>,
    /// `queue/rq_affinity` (0, 1 or 2); `None` where the file is missing.
    pub rq_affinity: Option<u8>,
}

/// What `ferrolog tune` proposes for `queue/rq_affinity`: complete on the issuing CPU.
pub const RQ_AFFINITY_ISSUER: u8 = 2;

/// The whole disk of a block device's sysfs directory: the directory itself, or its parent when
/// it is a partition (it has a `partition` file).
fn whole_disk(dir: &Path) -> PathBuf {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    if dir.join("partition").exists() {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    }
}

fn link_name(path: &Path) -> Option<String> {
    fs::read_link(path)
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// The polling and completion settings of the block device at `dir` (a `/sys/dev/block/MAJ:MIN`
/// directory, a disk's or a partition's).
pub fn data_disk(dir: &Path) -> DataDisk {
    let disk = whole_disk(dir);
    let name = disk
        .file_name()
        .map_or_else(|| "?".to_owned(), |n| n.to_string_lossy().into_owned());
    // A virtio disk's `device` is the virtio device, whose `driver` is virtio_blk; an NVMe
    // namespace's `device` is the controller, whose own `device` (the PCI function) has the
    // `nvme` driver.
    let driver =
        link_name(&disk.join("device/driver")).or_else(|| link_name(&disk.join("device/device/driver")));
    let io_poll = fs::read_to_string(disk.join("queue/io_poll"))
        .ok()
        .and_then(|t| match t.trim() {
            "0" => Some(false),
            "1" => Some(true),
            _ => None,
        });
    let rq_affinity = fs::read_to_string(disk.join("queue/rq_affinity"))
        .ok()
        .and_then(|t| t.trim().parse().ok());
    DataDisk {
        disk: name,
        driver,
        io_poll,
        rq_affinity,
    }
}

/// The polling state of the disk holding `data_dir`, from the sysfs root `sys`.
pub fn survey(sys: &Path, data_dir: &Path) -> Option<DataDisk> {
    let dir = block_device_dir(sys, data_dir).ok()?;
    dir.exists().then(|| data_disk(&dir))
}

impl DataDisk {
    /// One line for `ferrolog tune`'s report.
    pub fn describe(&self) -> String {
        let driver = self
            .driver
            .as_deref()
            .map_or(String::new(), |d| format!(" ({d})"));
        let state = match self.io_poll {
            Some(true) => {
                "has poll queues (io_poll 1): glommio polls the shards' reads; their writes still \
                 complete through the disk's interrupt and the file system's kernel worker"
            }
            Some(false) => {
                "has no poll queues (io_poll 0): each write's completion reaches its shard through \
                 the disk's interrupt and the file system's kernel worker"
            }
            None => "does not say whether it can poll (no queue/io_poll)",
        };
        format!("data disk {}{driver} {state}", self.disk)
    }

    /// One line on where the disk's completions run, for `ferrolog tune`; `None` where sysfs
    /// does not say.
    pub fn describe_completions(&self) -> Option<String> {
        let how = match self.rq_affinity? {
            0 => "where the interrupt lands",
            1 => "on the interrupt's CPU when it shares a cache with the issuing one",
            2 => "on the CPU that issued the request",
            _ => "in a way this build does not know",
        };
        Some(format!(
            "data disk {} completes requests {how} (rq_affinity {})",
            self.disk, self.rq_affinity?
        ))
    }

    /// The command that makes the disk complete every request on the CPU that issued it (a
    /// shard's writes on the shard's CPU), where it does not and the interrupts stay on the
    /// shards' CPUs; where `shards.irq_cpuset` moves them off (`interrupts_off_shards`), their
    /// CPUs are meant to do the completion work, and there is nothing to propose. The path is
    /// under the sysfs root `/sys`.
    pub fn rq_affinity_proposal(&self, interrupts_off_shards: bool) -> Option<String> {
        match self.rq_affinity {
            Some(v) if v != RQ_AFFINITY_ISSUER && !interrupts_off_shards => Some(format!(
                "echo {RQ_AFFINITY_ISSUER} > /sys/block/{}/queue/rq_affinity",
                self.disk
            )),
            _ => None,
        }
    }

    /// What would give the disk poll queues, where it has none and its driver has the parameter:
    /// the kernel command line setting for `queues` poll queues. It helps reads from disk only
    /// (see the module's documentation).
    pub fn proposal(&self, queues: usize) -> Option<String> {
        if self.io_poll != Some(false) {
            return None;
        }
        let module = match self.driver.as_deref() {
            Some("nvme") => "nvme",
            Some("virtio_blk") => "virtio_blk",
            _ => return None,
        };
        Some(format!(
            "{module}.poll_queues={} on the kernel command line (a boot parameter) lets the shards \
             poll their reads from disk (Fetch of data no longer cached); writes through io_uring \
             are not polled by the kernel, so it does not shorten an append",
            queues.max(1)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A virtio disk vda with a partition vda1, and an NVMe namespace nvme0n1 with poll queues.
    fn fixture() -> tempfile::TempDir {
        let t = tempfile::tempdir().expect("tempdir");
        let r = t.path().join("sys");
        let virtio = r.join("devices/pci0000:00/0000:00:02.0/virtio1");
        fs::create_dir_all(virtio.join("block/vda/vda1")).expect("mkdir");
        fs::create_dir_all(virtio.join("block/vda/queue")).expect("mkdir");
        fs::create_dir_all(r.join("bus/virtio/drivers/virtio_blk")).expect("mkdir");
        symlink(r.join("bus/virtio/drivers/virtio_blk"), virtio.join("driver")).expect("symlink");
        symlink(&virtio, virtio.join("block/vda/device")).expect("symlink");
        fs::write(virtio.join("block/vda/queue/io_poll"), "0\n").expect("write");
        fs::write(virtio.join("block/vda/queue/rq_affinity"), "1\n").expect("write");
        fs::write(virtio.join("block/vda/vda1/partition"), "1\n").expect("write");
        let pci = r.join("devices/pci0000:00/0000:00:04.0");
        let ctrl = pci.join("nvme/nvme0");
        fs::create_dir_all(ctrl.join("nvme0n1/queue")).expect("mkdir");
        fs::create_dir_all(r.join("bus/pci/drivers/nvme")).expect("mkdir");
        symlink(r.join("bus/pci/drivers/nvme"), pci.join("driver")).expect("symlink");
        symlink(&pci, ctrl.join("device")).expect("symlink");
        symlink(&ctrl, ctrl.join("nvme0n1/device")).expect("symlink");
        fs::write(ctrl.join("nvme0n1/queue/io_poll"), "1\n").expect("write");
        fs::write(ctrl.join("nvme0n1/queue/rq_affinity"), "2\n").expect("write");
        fs::create_dir_all(r.join("dev/block")).expect("mkdir");
        symlink(virtio.join("block/vda"), r.join("dev/block/254:0")).expect("symlink");
        symlink(virtio.join("block/vda/vda1"), r.join("dev/block/254:1")).expect("symlink");
        symlink(ctrl.join("nvme0n1"), r.join("dev/block/259:0")).expect("symlink");
        t
    }

    #[test]
    fn a_disk_without_poll_queues_is_named_with_its_driver_and_the_parameter() {
        let t = fixture();
        let blocks = t.path().join("sys/dev/block");
        let vda = data_disk(&blocks.join("254:0"));
        assert_eq!(
            vda,
            DataDisk {
                disk: "vda".into(),
                driver: Some("virtio_blk".into()),
                io_poll: Some(false),
                rq_affinity: Some(1),
            }
        );
        // A partition answers for its whole disk.
        assert_eq!(data_disk(&blocks.join("254:1")), vda);
        assert!(
            vda.describe()
                .starts_with("data disk vda (virtio_blk) has no poll queues"),
            "{}",
            vda.describe()
        );
        let fix = vda.proposal(2).expect("a proposal");
        assert!(
            fix.starts_with("virtio_blk.poll_queues=2 on the kernel command line"),
            "{fix}"
        );
        assert!(vda
            .proposal(0)
            .expect("a proposal")
            .starts_with("virtio_blk.poll_queues=1 "));
        assert_eq!(
            vda.describe_completions().as_deref(),
            Some("data disk vda completes requests on the interrupt's CPU when it shares a cache with the issuing one (rq_affinity 1)")
        );
        assert_eq!(
            vda.rq_affinity_proposal(false).as_deref(),
            Some("echo 2 > /sys/block/vda/queue/rq_affinity")
        );
        // Interrupts moved to CPUs without a shard: those CPUs do the completion work.
        assert_eq!(vda.rq_affinity_proposal(true), None);
    }

    #[test]
    fn a_disk_with_poll_queues_needs_nothing_and_an_unknown_driver_gets_no_proposal() {
        let t = fixture();
        let nvme = data_disk(&t.path().join("sys/dev/block/259:0"));
        assert_eq!(nvme.disk, "nvme0n1");
        assert_eq!(nvme.driver.as_deref(), Some("nvme"));
        assert_eq!(nvme.io_poll, Some(true));
        assert!(nvme.describe().contains("has poll queues (io_poll 1)"));
        assert_eq!(nvme.proposal(4), None);
        assert_eq!(nvme.rq_affinity, Some(2));
        assert_eq!(nvme.rq_affinity_proposal(false), None);
        assert!(nvme
            .describe_completions()
            .expect("a description")
            .contains("on the CPU that issued the request (rq_affinity 2)"));
        let other = DataDisk {
            disk: "sda".into(),
            driver: Some("sd".into()),
            io_poll: Some(false),
            rq_affinity: Some(0),
        };
        assert_eq!(other.proposal(4), None);
        assert_eq!(
            other.rq_affinity_proposal(false).as_deref(),
            Some("echo 2 > /sys/block/sda/queue/rq_affinity")
        );
        let unknown = DataDisk {
            disk: "md0".into(),
            driver: None,
            io_poll: None,
            rq_affinity: None,
        };
        assert!(unknown.describe().contains("does not say"));
        assert_eq!(unknown.proposal(4), None);
        assert_eq!(unknown.describe_completions(), None);
        assert_eq!(unknown.rq_affinity_proposal(false), None);
    }
}
