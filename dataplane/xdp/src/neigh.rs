//! The peer's MAC address, from the kernel's neighbour (ARP) table.
//!
//! AF_XDP frames bypass the kernel's neighbour resolution, so the sender
//! writes the destination MAC itself. It reads the table of the calling
//! thread's network namespace (`/proc/thread-self/net/arp`: `/proc/self`
//! would show the main thread's namespace). If the peer has no complete
//! entry, one kernel UDP datagram to the peer's discard port makes the
//! kernel resolve it (the peer's XDP program passes ARP to its kernel), and
//! the table is read again until a bounded wait ends.
//!
//! Only peers on the same link are supported: the entry looked up is the
//! peer's own address, not a gateway's.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

/// How often the table is read while waiting.
const POLL: Duration = Duration::from_millis(5);
/// How often the provoking datagram is sent again while waiting.
const RESEND: Duration = Duration::from_millis(200);
/// The UDP discard port: the datagram that provokes resolution goes there.
const DISCARD_PORT: u16 = 9;
const ARP_TABLE: &str = "/proc/thread-self/net/arp";
/// `ATF_COM`: the entry is complete.
const FLAG_COMPLETE: u32 = 0x2;

/// The complete entry for `ip` in the text of `/proc/net/arp`, if any.
pub fn parse_arp_table(table: &str, ip: Ipv4Addr) -> Option<[u8; 6]> {
    for line in table.lines().skip(1) {
        let mut cols = line.split_whitespace();
        let (Some(addr), Some(_hw_type), Some(flags), Some(mac)) =
            (cols.next(), cols.next(), cols.next(), cols.next())
        else {
            continue;
        };
        if addr.parse::<Ipv4Addr>().ok() != Some(ip) {
            continue;
        }
        let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).unwrap_or(0);
        if flags & FLAG_COMPLETE == 0 {
            continue;
        }
        let mut out = [0u8; 6];
        let mut parts = mac.split(':');
        for byte in &mut out {
            *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
        }
        if parts.next().is_none() && out != [0; 6] {
            return Some(out);
        }
    }
    None
}

/// The MAC of `ip`, provoking resolution and waiting at most `wait` if it is not known.
pub fn resolve(ip: Ipv4Addr, wait: Duration) -> Option<[u8; 6]> {
    let lookup = || {
        std::fs::read_to_string(ARP_TABLE)
            .ok()
            .and_then(|t| parse_arp_table(&t, ip))
    };
    if let Some(mac) = lookup() {
        return Some(mac);
    }
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    let deadline = Instant::now() + wait;
    let mut next_send = Instant::now();
    loop {
        let now = Instant::now();
        if now >= next_send {
            // An error (no route yet, unreachable) is not fatal: the table decides.
            let _ = socket.send_to(b"ferrolog neighbour probe", SocketAddrV4::new(ip, DISCARD_PORT));
            next_send = now + RESEND;
        }
        std::thread::sleep(POLL);
        if let Some(mac) = lookup() {
            return Some(mac);
        }
        if Instant::now() >= deadline {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "IP address       HW type     Flags       HW address            Mask     Device
10.9.0.2         0x1         0x2         0a:1b:2c:3d:4e:5f     *        xa
10.9.0.3         0x1         0x0         00:00:00:00:00:00     *        xa
10.9.0.4         0x1         0x6         02:00:00:00:00:04     *        xa
";

    #[test]
    fn finds_complete_entries_only() {
        assert_eq!(
            parse_arp_table(TABLE, Ipv4Addr::new(10, 9, 0, 2)),
            Some([0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f])
        );
        assert_eq!(parse_arp_table(TABLE, Ipv4Addr::new(10, 9, 0, 3)), None);
        assert_eq!(
            parse_arp_table(TABLE, Ipv4Addr::new(10, 9, 0, 4)),
            Some([2, 0, 0, 0, 0, 4])
        );
        assert_eq!(parse_arp_table(TABLE, Ipv4Addr::new(10, 9, 0, 5)), None);
        assert_eq!(parse_arp_table("", Ipv4Addr::new(10, 9, 0, 2)), None);
    }
}
