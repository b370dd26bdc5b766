//! ferrolog's node-to-node data transport: frames between owner shards over
//! TCP on glommio, for replication (DESIGN.md "Replication": "a small fixed
//! header + the stored bytes, vectored, never re-encoded").
//!
//! The replication shard adapter (`ferrolog_cluster::replicated`) sends and
//! listens with it; an AF_XDP path (issue 15) is to sit beside it with TCP
//! as its fallback.
//!
//! It is generic: it carries frames, not replication messages. A caller puts
//! its message header (partition, epoch, offsets; fixed size, at most
//! [`EXT_BYTES_MAX`] bytes) in the header extension and the record batches,
//! exactly as stored, in the payload.
//!
//! # What it owns, where it lives
//!
//! - [`listen`]: a listener and its connection tasks on the current
//!   executor; each frame goes to the caller's handler on that executor.
//! - [`Link`]: the sending side to one address, on the executor that made
//!   it: a bounded queue and one writer task. [`Link::send`] never waits.
//!
//! Everything is `Rc` and `!Send`: one shard's links and listener live on
//! that shard. The transport does not route by the `shard` field; it hands
//! it to the handler (each shard is expected to listen on its own port, so
//! the field is a check that the frame reached the shard it was meant for).
//!
//! # Frame layout (version 1)
//!
//! All integers big-endian. The fixed header is 18 bytes:
//!
//! | bytes  | field         | meaning                                                         |
//! |--------|---------------|-----------------------------------------------------------------|
//! | 0..2   | magic u16     | `0xFE10` ([`MAGIC`])                                            |
//! | 2      | version u8    | `1` ([`VERSION`])                                               |
//! | 3      | kind u8       | the caller's message kind                                       |
//! | 4..6   | shard u16     | the destination shard on the receiving node                     |
//! | 6..8   | flags u16     | none defined in version 1: must be 0                            |
//! | 8..10  | ext_len u16   | bytes of the header extension, at most [`EXT_BYTES_MAX`] (256)  |
//! | 10..14 | payload_len u32 | bytes of the payload, at most the receiver's `max_payload`    |
//! | 14..18 | header_crc u32 | CRC-32C (Castagnoli) of bytes 0..14 followed by the extension  |
//!
//! then `ext_len` bytes of extension, then `payload_len` bytes of payload.
//!
//! **The payload is not checksummed by the transport.** It carries record
//! batches, which have their own CRC-32C, checked by the storage layer on
//! append; checksumming them twice would cost a pass over every byte for no
//! new protection. A caller whose payload has no checksum of its own must add
//! one (in the extension).
//!
//! The receiver checks magic, version and both lengths as soon as the 18
//! bytes are in, before it allocates anything for the frame, and the
//! checksum as soon as the extension is in, before it reads the payload. Any
//! failure (and unknown flags, a peer that closes or stalls mid-frame) closes
//! that connection with one `warn!` naming the peer and the reason: after a
//! bad header the stream has no trustworthy frame boundary. Other
//! connections are unaffected. CRC-32C catches every single-bit error in the
//! 14 header bytes, the CRC field and the extension; a flip in `ext_len` that
//! keeps it within bounds makes the check run over a different span, which
//! is caught with probability 1 - 2^-32.
//!
//! # Delivery
//!
//! In order per link, best effort, with gaps: a broken connection loses the
//! frames being written, and a failed connection attempt drops every queued
//! frame; both are counted ([`Link::dropped`]). The replication protocol
//! resends from each follower's acknowledged offset and checks (prev offset,
//! prev epoch) on every append, so a gap is noticed and repaired there.
//!
//! # TLS
//!
//! With a [`NodeTls`] ([`Link::with_tls`], [`listen_with_tls`]) every
//! connection is mutual TLS (see [`tls`]); frames are the same inside. The
//! plain path writes with `sendmsg` iovecs; the TLS path hands the same
//! slices to rustls, which encrypts them into its own records (one copy, the
//! price of encryption).
//!
//! # Copies
//!
//! Sending: the header is encoded into an 18-byte array; extension and
//! payload are written from the caller's `Bytes` with `sendmsg` iovecs, many
//! frames per call. Receiving: one read buffer per connection; a frame's
//! extension and payload are `Bytes` views split off that buffer (no copy).

mod codec;
mod link;
mod server;
pub mod tls;

pub use codec::{
    check_header_crc, decode_header, encode_header, split_frame, Frame, FrameError, Header, Split,
    EXT_BYTES_MAX, FLAGS_KNOWN, HEADER_BYTES, MAGIC, VERSION,
};
pub use link::{Link, PeerEvents, SendError, CONNECT_TIMEOUT, RECONNECT_BACKOFF_MAX, RECONNECT_BACKOFF_MIN};
pub use server::{bind, listen, listen_with_tls, Handler, CONNECTIONS_MAX, MID_FRAME_TIMEOUT};
pub use tls::{NodeStream, NodeTls, NodeTlsFiles};
