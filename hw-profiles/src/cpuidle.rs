//! How this machine's idle CPUs wait, as it bears on a parked shard's wake-up.
//!
//! A shard that spins for `spin_before_park_us` and then parks sleeps in the kernel; a request
//! for it (a cross-shard call, a completion) wakes it through an eventfd, and when its CPU went
//! idle the wake-up first has to bring the CPU out of its idle state. In a KVM guest with the
//! `haltpoll` cpuidle driver that idle state is a HLT, which exits to the host: waking a halted
//! vCPU costs tens of microseconds. The guest can poll for a while before it halts
//! (`/sys/module/haltpoll/parameters/guest_halt_poll_ns`, 200 us by default in Linux), so a
//! wake-up that comes soon after the CPU went idle finds it still running. Some hosts boot their
//! guests with it at 0 (this project's development VM does): every wake-up then pays the halt.
//! Measured there (docs/benchmarks.md, "Parked shards and the guest's halt polling"): an
//! eventfd ping-pong between two pinned threads 44-46 us -> 23 us per round trip at p50, the
//! cross-shard call 62 -> 46 us, Kafka produce p50 -25%.
//!
//! Every function takes the sysfs root, so the tests run on fixture trees.

use std::fs;
use std::path::Path;

/// Linux's default `guest_halt_poll_ns`, what `ferrolog tune` proposes where it is 0.
pub const GUEST_HALT_POLL_NS_DEFAULT: u64 = 200_000;

/// The sysfs file of the haltpoll driver's polling time, under the sysfs root.
pub const GUEST_HALT_POLL_NS_FILE: &str = "module/haltpoll/parameters/guest_halt_poll_ns";

/// The cpuidle driver and governor, and the haltpoll driver's polling time where it is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuIdle {
    /// `cpuidle/current_driver` (e.g. `haltpoll`, `intel_idle`, `acpi_idle`); `None`: no
    /// cpuidle driver (the CPUs idle in the architecture's default loop).
    pub driver: Option<String>,
    pub governor: Option<String>,
    /// `guest_halt_poll_ns` of the haltpoll driver; `None` where it is not loaded.
    pub guest_halt_poll_ns: Option<u64>,
}

impl CpuIdle {
    /// Whether idle CPUs halt at once with no polling first: the haltpoll driver runs and its
    /// polling time is 0.
    pub fn halts_without_polling(&self) -> bool {
        self.driver.as_deref() == Some("haltpoll") && self.guest_halt_poll_ns == Some(0)
    }

    /// One line for `ferrolog tune` and the start log.
    pub fn describe(&self) -> String {
        let driver = self.driver.as_deref().unwrap_or("none");
        let governor = self.governor.as_deref().unwrap_or("none");
        match self.guest_halt_poll_ns {
            Some(ns) => format!("cpuidle driver {driver}, governor {governor}, guest_halt_poll_ns {ns}"),
            None => format!("cpuidle driver {driver}, governor {governor}"),
        }
    }

    /// The command that turns the guest's halt polling on, where it is off.
    pub fn proposal(&self) -> Option<String> {
        self.halts_without_polling()
            .then(|| format!("echo {GUEST_HALT_POLL_NS_DEFAULT} > /sys/{GUEST_HALT_POLL_NS_FILE}"))
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// Reads the cpuidle state under the sysfs root `sys` (`/sys` on a live machine).
pub fn survey(sys: &Path) -> CpuIdle {
    let idle = sys.join("devices/system/cpu/cpuidle");
    CpuIdle {
        driver: read_trimmed(&idle.join("current_driver")).filter(|d| d != "none"),
        governor: read_trimmed(&idle.join("current_governor"))
            .or_else(|| read_trimmed(&idle.join("current_governor_ro"))),
        guest_halt_poll_ns: read_trimmed(&sys.join(GUEST_HALT_POLL_NS_FILE)).and_then(|v| v.parse().ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (path, text) in files {
            let p = dir.path().join(path);
            fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            fs::write(p, text).expect("write");
        }
        dir
    }

    #[test]
    fn a_haltpoll_guest_that_never_polls_is_told_how_to_poll() {
        let sys = tree(&[
            ("devices/system/cpu/cpuidle/current_driver", "haltpoll\n"),
            ("devices/system/cpu/cpuidle/current_governor", "haltpoll\n"),
            (GUEST_HALT_POLL_NS_FILE, "0\n"),
        ]);
        let c = survey(sys.path());
        assert_eq!(c.driver.as_deref(), Some("haltpoll"));
        assert_eq!(c.governor.as_deref(), Some("haltpoll"));
        assert_eq!(c.guest_halt_poll_ns, Some(0));
        assert!(c.halts_without_polling());
        assert_eq!(
            c.proposal().as_deref(),
            Some("echo 200000 > /sys/module/haltpoll/parameters/guest_halt_poll_ns")
        );
        assert_eq!(
            c.describe(),
            "cpuidle driver haltpoll, governor haltpoll, guest_halt_poll_ns 0"
        );
    }

    #[test]
    fn polling_guests_and_bare_metal_get_no_proposal() {
        let polling = tree(&[
            ("devices/system/cpu/cpuidle/current_driver", "haltpoll\n"),
            ("devices/system/cpu/cpuidle/current_governor_ro", "haltpoll\n"),
            (GUEST_HALT_POLL_NS_FILE, "200000\n"),
        ]);
        let c = survey(polling.path());
        assert_eq!(c.governor.as_deref(), Some("haltpoll"), "read-only governor file");
        assert!(!c.halts_without_polling());
        assert_eq!(c.proposal(), None);
        let metal = tree(&[
            ("devices/system/cpu/cpuidle/current_driver", "intel_idle\n"),
            ("devices/system/cpu/cpuidle/current_governor", "menu\n"),
        ]);
        let c = survey(metal.path());
        assert_eq!(c.guest_halt_poll_ns, None);
        assert_eq!(c.proposal(), None);
        assert_eq!(c.describe(), "cpuidle driver intel_idle, governor menu");
        let empty = tree(&[]);
        let c = survey(empty.path());
        assert_eq!(
            c,
            CpuIdle {
                driver: None,
                governor: None,
                guest_halt_poll_ns: None
            }
        );
        assert_eq!(c.proposal(), None);
    }
}
