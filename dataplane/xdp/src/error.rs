//! Why an AF_XDP socket could not be set up: one variant per reason a caller
//! would act on, so it can log one line and use TCP instead.

use std::net::Ipv4Addr;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum XdpError {
    #[error("no permission for {what} (errno {errno}): AF_XDP needs root, or CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF")]
    NoPermission { what: &'static str, errno: i32 },
    #[error("no interface named {name:?} in this network namespace")]
    NoSuchInterface { name: String },
    #[error("interface {ifname:?} has no IPv4 address")]
    NoAddress { ifname: String },
    #[error("queue {queue} out of range: {ifname} takes queues 0..{queues}")]
    QueueOutOfRange { ifname: String, queue: u32, queues: u32 },
    #[error("UMEM of {bytes} bytes is over the locked-memory limit (RLIMIT_MEMLOCK {limit} bytes)")]
    Memlock { bytes: u64, limit: u64 },
    #[error("the driver of {ifname} refused {what} (errno {errno}: {})", errno_text(*errno))]
    DriverRefused {
        ifname: String,
        what: &'static str,
        errno: i32,
    },
    #[error("another XDP program ({name:?}, id {id}) is attached to {ifname}; not replacing it")]
    ProgramPresent { ifname: String, name: String, id: u32 },
    #[error("no neighbour entry for {ip} after {waited_ms} ms")]
    NoNeighbour { ip: Ipv4Addr, waited_ms: u64 },
    #[error("{call} failed (errno {errno}: {})", errno_text(*errno))]
    Library { call: &'static str, errno: i32 },
    #[error("the kernel refused the XDP program (errno {errno}); verifier log: {log}")]
    Verifier { errno: i32, log: String },
    #[error("invalid configuration: {0}")]
    Config(String),
}

fn errno_text(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}

impl XdpError {
    /// The error for a failed library call: permission errors are named as such, the rest keep
    /// the call and errno.
    pub(crate) fn from_call(call: &'static str, errno: i32) -> XdpError {
        match errno {
            libc::EPERM | libc::EACCES => XdpError::NoPermission { what: call, errno },
            _ => XdpError::Library { call, errno },
        }
    }
}
