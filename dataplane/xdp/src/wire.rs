//! Ethernet + IPv4 + UDP framing and the datagram header. Pure: no I/O.
//!
//! # Datagram header (version 1)
//!
//! After the UDP header, 40 bytes, all integers big-endian:
//!
//! | bytes  | field          | meaning                                                         |
//! |--------|----------------|-----------------------------------------------------------------|
//! | 0..2   | magic u16      | `0xFE58` ([`MAGIC`])                                            |
//! | 2      | version u8     | `1` ([`VERSION`])                                               |
//! | 3      | flags u8       | none defined: must be 0                                         |
//! | 4..8   | stream u32     | the sending socket's id; the receiver accepts only its peers'  |
//! | 8..12  | session u32    | random per sending socket: a restarted sender starts afresh     |
//! | 12..20 | msg_id u64     | increases by one per message of the sending socket              |
//! | 20..22 | frag_index u16 | this fragment's index                                           |
//! | 22..24 | frag_count u16 | fragments of the message                                        |
//! | 24..26 | frag_bytes u16 | data bytes of every fragment but the last                      |
//! | 26..28 | reserved u16   | 0                                                               |
//! | 28..32 | total_len u32  | bytes of the whole message                                      |
//! | 32..36 | data_crc u32   | CRC-32C of this fragment's data                                 |
//! | 36..40 | header_crc u32 | CRC-32C of bytes 0..36                                          |
//!
//! then the fragment's data: bytes `frag_index * frag_bytes ..` of the
//! message, `min(frag_bytes, total_len - frag_index * frag_bytes)` of them.
//! The message is a transport frame exactly as the TCP path writes it
//! (`ferrolog_transport` header, extension, payload), so the frame's own
//! header checksum is checked again after reassembly.
//!
//! # Why a CRC on every fragment's data
//!
//! The payload's record batches carry their own CRC-32C, but the frame
//! header, the extension and the boundaries between fragments do not, and
//! reassembly must yield the exact frame or nothing. The UDP checksum is no
//! help on the receiving side: a frame sent by the kernel over veth arrives
//! with only a partial (pseudo-header) checksum, since veth leaves the sum to
//! a NIC that is not there, and a one's-complement sum misses reordered
//! 16-bit words anyway. So every fragment carries a CRC-32C of its data
//! (hardware-accelerated, a few hundred nanoseconds for 1.4 KB) and the
//! receiver checks it and the header CRC, and does not check the UDP
//! checksum. Senders still write a full UDP checksum, so the datagrams are
//! valid to anything on the path (switches, captures, a kernel stack).
//! The IPv4 header checksum is checked: 20 bytes, and it guards the
//! addresses that decide whose datagram this is.

use std::net::Ipv4Addr;

/// The first two bytes of every datagram header.
pub const MAGIC: u16 = 0xFE58;
/// The only version this code reads and writes.
pub const VERSION: u8 = 1;
pub const ETH_BYTES: usize = 14;
pub const IPV4_BYTES: usize = 20;
pub const UDP_BYTES: usize = 8;
pub const DGRAM_HEADER_BYTES: usize = 40;
/// Every header before a fragment's data.
pub const HEADERS_BYTES: usize = ETH_BYTES + IPV4_BYTES + UDP_BYTES + DGRAM_HEADER_BYTES;
const ETHERTYPE_IPV4: u16 = 0x0800;
const IPPROTO_UDP: u8 = 17;
const TTL: u8 = 64;

/// Why a received datagram (or fragment) was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than its headers or its own length fields say.
    Short,
    /// Not untagged IPv4/UDP without options (only reaches the socket if the program is wrong).
    NotUdp,
    /// Addressed to another IP or port.
    WrongDestination,
    /// IPv4 header checksum, datagram header CRC or fragment data CRC mismatch.
    BadChecksum,
    /// Bad magic, unknown version or flags.
    UnknownVersion,
    /// From an address and stream that is not a registered peer.
    UnknownStream,
    /// A message longer than the configured limit.
    Oversized,
    /// Fields that contradict each other or the message's earlier fragments.
    Inconsistent,
    /// A fragment of a message that was already delivered, or overtaken by a later message.
    Stale,
    /// An incomplete message evicted to make room for a newer one.
    ReassemblyOverflow,
    /// An incomplete message that timed out.
    ReassemblyTimeout,
    /// The reassembled bytes are not a valid transport frame.
    BadFrame,
}

/// The decoded datagram header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatagramHeader {
    pub stream: u32,
    pub session: u32,
    pub msg_id: u64,
    pub frag_index: u16,
    pub frag_count: u16,
    pub frag_bytes: u16,
    pub total_len: u32,
    pub data_crc: u32,
}

impl DatagramHeader {
    pub fn encode(&self, out: &mut [u8]) {
        let out = &mut out[..DGRAM_HEADER_BYTES];
        out[0..2].copy_from_slice(&MAGIC.to_be_bytes());
        out[2] = VERSION;
        out[3] = 0;
        out[4..8].copy_from_slice(&self.stream.to_be_bytes());
        out[8..12].copy_from_slice(&self.session.to_be_bytes());
        out[12..20].copy_from_slice(&self.msg_id.to_be_bytes());
        out[20..22].copy_from_slice(&self.frag_index.to_be_bytes());
        out[22..24].copy_from_slice(&self.frag_count.to_be_bytes());
        out[24..26].copy_from_slice(&self.frag_bytes.to_be_bytes());
        out[26..28].copy_from_slice(&0u16.to_be_bytes());
        out[28..32].copy_from_slice(&self.total_len.to_be_bytes());
        out[32..36].copy_from_slice(&self.data_crc.to_be_bytes());
        let crc = crc32c::crc32c(&out[..36]);
        out[36..40].copy_from_slice(&crc.to_be_bytes());
    }

    /// Decodes and checks magic, version, flags and the header CRC. Field consistency is the
    /// reassembler's to check.
    pub fn decode(b: &[u8]) -> Result<DatagramHeader, DropReason> {
        if b.len() < DGRAM_HEADER_BYTES {
            return Err(DropReason::Short);
        }
        let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        if u16_at(0) != MAGIC || b[2] != VERSION {
            return Err(DropReason::UnknownVersion);
        }
        if u32_at(36) != crc32c::crc32c(&b[..36]) {
            return Err(DropReason::BadChecksum);
        }
        if b[3] != 0 || u16_at(26) != 0 {
            return Err(DropReason::UnknownVersion);
        }
        Ok(DatagramHeader {
            stream: u32_at(4),
            session: u32_at(8),
            msg_id: u64::from(u32_at(12)) << 32 | u64::from(u32_at(16)),
            frag_index: u16_at(20),
            frag_count: u16_at(22),
            frag_bytes: u16_at(24),
            total_len: u32_at(28),
            data_crc: u32_at(32),
        })
    }
}

/// Addresses of one direction of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoints {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
}

/// One's-complement sum of `data` as big-endian 16-bit words (odd tail padded with 0), folded
/// into 16 bits, added to `initial`.
pub fn ones_complement_sum(initial: u32, data: &[u8]) -> u16 {
    let mut sum = u64::from(initial);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        // Four big-endian words at once: the carries are folded at the end.
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        sum += (w >> 48) + ((w >> 32) & 0xffff) + ((w >> 16) & 0xffff) + (w & 0xffff);
    }
    let mut rest = chunks.remainder().chunks_exact(2);
    for c in &mut rest {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = rest.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Writes Ethernet, IPv4 and UDP headers for `udp_payload_bytes` of payload at the start of
/// `buf`; the UDP checksum is left 0 for [`finish_udp_checksum`] once the payload is in.
pub fn write_headers(buf: &mut [u8], ep: &Endpoints, ip_id: u16, udp_payload_bytes: usize) {
    let ip_total =
        u16::try_from(IPV4_BYTES + UDP_BYTES + udp_payload_bytes).expect("datagram fits an IP packet");
    let udp_len = ip_total - IPV4_BYTES as u16;
    buf[0..6].copy_from_slice(&ep.dst_mac);
    buf[6..12].copy_from_slice(&ep.src_mac);
    buf[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let ip = &mut buf[ETH_BYTES..ETH_BYTES + IPV4_BYTES];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&ip_total.to_be_bytes());
    ip[4..6].copy_from_slice(&ip_id.to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF: never fragmented on the way
    ip[8] = TTL;
    ip[9] = IPPROTO_UDP;
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[12..16].copy_from_slice(&ep.src_ip.octets());
    ip[16..20].copy_from_slice(&ep.dst_ip.octets());
    let csum = !ones_complement_sum(0, ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    let udp = &mut buf[ETH_BYTES + IPV4_BYTES..ETH_BYTES + IPV4_BYTES + UDP_BYTES];
    udp[0..2].copy_from_slice(&ep.src_port.to_be_bytes());
    udp[2..4].copy_from_slice(&ep.dst_port.to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
}

/// Computes and stores the UDP checksum of the packet `buf` (headers from [`write_headers`],
/// payload filled in; `buf` exactly the frame).
pub fn finish_udp_checksum(buf: &mut [u8]) {
    let udp_start = ETH_BYTES + IPV4_BYTES;
    let udp_len = buf.len() - udp_start;
    let ip = &buf[ETH_BYTES..udp_start];
    let pseudo = ones_complement_sum(0, &ip[12..20]) as u32 + u32::from(IPPROTO_UDP) + udp_len as u32;
    let sum = ones_complement_sum(pseudo, &buf[udp_start..]);
    let mut csum = !sum;
    if csum == 0 {
        // 0 means "no checksum" in UDP over IPv4; an all-ones sum is sent as 0xffff.
        csum = 0xffff;
    }
    buf[udp_start + 6..udp_start + 8].copy_from_slice(&csum.to_be_bytes());
}

/// The parts of a received frame this transport looks at.
#[derive(Debug, PartialEq, Eq)]
pub struct Received<'a> {
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub udp_payload: &'a [u8],
}

/// Parses Ethernet/IPv4/UDP and checks the IPv4 header checksum and the lengths. The UDP
/// checksum is not checked (see the module doc). Trailing Ethernet padding is ignored.
pub fn parse_frame(frame: &[u8]) -> Result<Received<'_>, DropReason> {
    if frame.len() < ETH_BYTES + IPV4_BYTES + UDP_BYTES {
        return Err(DropReason::Short);
    }
    if u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_IPV4 {
        return Err(DropReason::NotUdp);
    }
    let ip = &frame[ETH_BYTES..ETH_BYTES + IPV4_BYTES];
    if ip[0] != 0x45 || ip[9] != IPPROTO_UDP || u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return Err(DropReason::NotUdp);
    }
    if ones_complement_sum(0, ip) != 0xffff {
        return Err(DropReason::BadChecksum);
    }
    let ip_total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip_total < IPV4_BYTES + UDP_BYTES || ETH_BYTES + ip_total > frame.len() {
        return Err(DropReason::Short);
    }
    let udp = &frame[ETH_BYTES + IPV4_BYTES..ETH_BYTES + ip_total];
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if udp_len < UDP_BYTES || udp_len > udp.len() {
        return Err(DropReason::Short);
    }
    Ok(Received {
        src_ip: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst_ip: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        src_port: u16::from_be_bytes([udp[0], udp[1]]),
        dst_port: u16::from_be_bytes([udp[2], udp[3]]),
        udp_payload: &udp[UDP_BYTES..udp_len],
    })
}

/// Data bytes per fragment for a link MTU (IP packet bytes): what is left after the IPv4, UDP
/// and datagram headers.
pub fn frag_bytes_for_mtu(mtu: usize) -> usize {
    mtu.saturating_sub(IPV4_BYTES + UDP_BYTES + DGRAM_HEADER_BYTES)
        .min(usize::from(u16::MAX))
}

/// Fragments of a message of `total_len` bytes with `frag_bytes` per fragment.
pub fn frag_count(total_len: usize, frag_bytes: usize) -> usize {
    total_len.div_ceil(frag_bytes).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints() -> Endpoints {
        Endpoints {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_ip: Ipv4Addr::new(10, 1, 2, 1),
            dst_ip: Ipv4Addr::new(10, 1, 2, 2),
            src_port: 40000,
            dst_port: 7531,
        }
    }

    fn packet(payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; ETH_BYTES + IPV4_BYTES + UDP_BYTES + payload.len()];
        write_headers(&mut buf, &endpoints(), 7, payload.len());
        buf[ETH_BYTES + IPV4_BYTES + UDP_BYTES..].copy_from_slice(payload);
        finish_udp_checksum(&mut buf);
        buf
    }

    /// Reference checksum: the RFC 1071 loop, one word at a time.
    fn rfc1071(data: &[u8]) -> u16 {
        let mut sum = 0u32;
        for c in data.chunks(2) {
            sum += u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    #[test]
    fn checksum_matches_the_reference_for_all_lengths() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7919 % 251) as u8 ^ 0xa5).collect();
        for len in 0..data.len() {
            assert_eq!(
                ones_complement_sum(0, &data[..len]),
                rfc1071(&data[..len]),
                "len {len}"
            );
        }
    }

    #[test]
    fn headers_round_trip_with_valid_checksums() {
        let buf = packet(b"hello, datagram");
        let r = parse_frame(&buf).expect("parses");
        assert_eq!(r.src_ip, Ipv4Addr::new(10, 1, 2, 1));
        assert_eq!(r.dst_port, 7531);
        assert_eq!(r.udp_payload, b"hello, datagram");
        // UDP checksum over pseudo-header + UDP segment verifies to all ones.
        let udp = &buf[ETH_BYTES + IPV4_BYTES..];
        let pseudo = ones_complement_sum(0, &buf[26..34]) as u32 + 17 + udp.len() as u32;
        assert_eq!(ones_complement_sum(pseudo, udp), 0xffff);
    }

    #[test]
    fn parse_refuses_damaged_headers() {
        let good = packet(&[1, 2, 3]);
        let mut bad_ip = good.clone();
        bad_ip[ETH_BYTES + 8] ^= 1; // TTL
        assert_eq!(parse_frame(&bad_ip), Err(DropReason::BadChecksum));
        assert_eq!(parse_frame(&good[..40]), Err(DropReason::Short));
        let mut truncated = good.clone();
        truncated.truncate(good.len() - 1);
        assert_eq!(parse_frame(&truncated), Err(DropReason::Short));
        let mut arp = good.clone();
        arp[12] = 0x08;
        arp[13] = 0x06;
        assert_eq!(parse_frame(&arp), Err(DropReason::NotUdp));
        let mut padded = good.clone();
        padded.extend_from_slice(&[0; 10]);
        assert_eq!(
            parse_frame(&padded).expect("padding ignored").udp_payload,
            &[1, 2, 3]
        );
    }

    #[test]
    fn datagram_header_round_trip_and_crc() {
        let h = DatagramHeader {
            stream: 7,
            session: 0xdead_beef,
            msg_id: 1 << 40 | 5,
            frag_index: 3,
            frag_count: 9,
            frag_bytes: 1432,
            total_len: 12_000,
            data_crc: 0x1234_5678,
        };
        let mut b = [0u8; DGRAM_HEADER_BYTES];
        h.encode(&mut b);
        assert_eq!(DatagramHeader::decode(&b), Ok(h));
        for bit in 0..DGRAM_HEADER_BYTES * 8 {
            let mut flipped = b;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(
                DatagramHeader::decode(&flipped).is_err(),
                "bit {bit} flip accepted"
            );
        }
        assert_eq!(DatagramHeader::decode(&b[..39]), Err(DropReason::Short));
    }

    #[test]
    fn fragment_arithmetic() {
        assert_eq!(frag_bytes_for_mtu(1500), 1432);
        assert_eq!(frag_count(0, 1432), 1);
        assert_eq!(frag_count(1432, 1432), 1);
        assert_eq!(frag_count(1433, 1432), 2);
        assert!(frag_count(18 + 256 + (16 << 20), 1432) <= usize::from(u16::MAX));
    }
}
