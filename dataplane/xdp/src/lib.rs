//! ferrolog's AF_XDP datagram transport for node-to-node replication frames
//! (issue 15): the same [`Frame`] as the TCP `Link` of `ferrolog_transport`
//! (kind, shard, extension up to 256 bytes, payload up to 16 MiB), carried
//! in UDP datagrams that an XDP program hands straight to a per-queue
//! AF_XDP socket, bypassing the kernel's network stack.
//!
//! # What it owns, where it lives
//!
//! - [`XdpProgram`] (one per interface, `Arc`-shared, `Send + Sync`): the
//!   hand-assembled XDP program (`src/bpf.rs`) and its XSKMAP. Attached on
//!   creation, detached when the last socket and handle are gone. Clears a
//!   leftover of a crashed process at start.
//! - [`XskSocket`] (one per shard and NIC queue, `!Send`: it lives on the
//!   thread that opened it): the UMEM, the four rings, the send queue and the
//!   reassembler. Driven by polling: [`XskSocket::poll_rx`],
//!   [`XskSocket::send`], [`XskSocket::poll_tx`]; nothing blocks, nothing
//!   spawns.
//! - [`wire`] and [`reassembly`]: the pure codec (Ethernet/IPv4/UDP, the
//!   datagram header, checksums) and the bounded reassembler.
//!
//! # Delivery
//!
//! Per sender, in order with gaps, exact bytes or nothing: a fragment lost,
//! corrupted, duplicated or reordered costs at most the message it belongs
//! to (counted, see [`Counters`]); it never yields a wrong frame. The
//! replication protocol resends from the follower's acknowledged offset, as
//! over TCP.
//!
//! # Fallback
//!
//! Every setup failure is an [`XdpError`] naming the reason (permission,
//! interface, queue, memlock, driver, library call with errno), for the
//! caller to log in one line and use TCP.
//!
//! All `unsafe` code is in `src/sys.rs` (FFI to libxdp/libbpf, ring access).

mod bpf;
mod error;
mod neigh;
mod program;
pub mod reassembly;
mod socket;
mod sys;
pub mod testnet;
pub mod wire;

pub use error::XdpError;
pub use ferrolog_transport::Frame;
pub use program::{AttachMode, ProgramConfig, XdpProgram, PROGRAM_NAME};
pub use socket::{
    BindMode, Counters, InvalidCounters, PeerConfig, PeerId, SendError, SocketConfig, XskSocket,
};
pub use sys::{enter_netns, memlock_limit, XdpStatistics};
pub use wire::DropReason;

/// The IPv4 address of `ifname` in the calling thread's network namespace: the source address
/// of a node's datagrams, which its peers send to.
pub fn interface_ipv4(ifname: &str) -> Result<std::net::Ipv4Addr, XdpError> {
    let name = sys::cstring(ifname).ok_or_else(|| XdpError::NoSuchInterface {
        name: ifname.to_owned(),
    })?;
    if sys::ifindex(&name).is_none() {
        return Err(XdpError::NoSuchInterface {
            name: ifname.to_owned(),
        });
    }
    sys::if_ipv4(&name).map_err(|e| match e.raw_os_error() {
        Some(libc::EADDRNOTAVAIL) => XdpError::NoAddress {
            ifname: ifname.to_owned(),
        },
        Some(libc::ENODEV) => XdpError::NoSuchInterface {
            name: ifname.to_owned(),
        },
        errno => XdpError::from_call("SIOCGIFADDR", errno.unwrap_or(libc::EIO)),
    })
}

/// The largest frame payload: raw record batches of one replication message.
pub const PAYLOAD_BYTES_MAX: usize = 16 << 20;
/// The largest message: transport frame header, largest extension and payload.
pub const MESSAGE_BYTES_MAX: usize =
    ferrolog_transport::HEADER_BYTES + ferrolog_transport::EXT_BYTES_MAX + PAYLOAD_BYTES_MAX;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_ipv4_reads_the_address_or_names_the_reason() {
        assert_eq!(interface_ipv4("lo"), Ok(std::net::Ipv4Addr::LOCALHOST));
        assert_eq!(
            interface_ipv4("ferrolog-none0"),
            Err(XdpError::NoSuchInterface {
                name: "ferrolog-none0".into()
            })
        );
    }
}
