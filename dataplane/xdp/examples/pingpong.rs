//! Round trip of one frame at a time between two network namespaces: AF_XDP
//! (this crate) against kernel UDP, both busy-polled, in the same run.
//!
//! `cargo run --release -p ferrolog-xdp --example pingpong -- [--mode generic|native]
//!  [--iters N] [--sizes 64,4096]` (root; makes and removes its own namespaces).
//!
//! Each side is one thread spinning on its socket: the server echoes every
//! frame, the client sends the next one when the echo is back and records
//! the time in between. Every frame carries its sequence number, so a late
//! echo is never taken for the next one's. A frame not echoed within 1 s is
//! counted as resent and sent again (that round trip is not recorded): on a
//! loaded machine a spinning thread can be off its CPU for that long.

use std::net::{SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferrolog_xdp::testnet::{Side, VethPair};
use ferrolog_xdp::{
    AttachMode, Frame, PeerConfig, PeerId, ProgramConfig, SocketConfig, XdpProgram, XskSocket,
};
use hdrhistogram::Histogram;

const XDP_PORT: u16 = 7531;
const UDP_PORT: u16 = 7700;
const RESEND_AFTER: Duration = Duration::from_secs(1);
const WARMUP: usize = 1000;

struct Args {
    mode: AttachMode,
    iters: usize,
    sizes: Vec<usize>,
}

fn args() -> Args {
    let mut a = Args {
        mode: AttachMode::Generic,
        iters: 20_000,
        sizes: vec![64, 4096],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--mode" => {
                a.mode = match value.as_str() {
                    "generic" => AttachMode::Generic,
                    "native" => AttachMode::Native,
                    other => panic!("--mode generic|native, not {other}"),
                }
            }
            "--iters" => a.iters = value.parse().expect("--iters N"),
            "--sizes" => {
                a.sizes = value
                    .split(',')
                    .map(|s| s.parse().expect("--sizes 64,4096"))
                    .collect()
            }
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

struct Endpoint {
    socket: XskSocket,
    peer: PeerId,
    _program: Arc<XdpProgram>,
}

fn endpoint(me: &Side, peer: &Side, mode: AttachMode) -> Endpoint {
    let program = XdpProgram::attach(&ProgramConfig::new(&me.ifname, XDP_PORT, mode)).expect("attach");
    let mut socket = XskSocket::open(&program, SocketConfig::new(0, me.ip, 0)).expect("open");
    let peer = socket
        .add_peer(PeerConfig {
            addr: SocketAddrV4::new(peer.ip, XDP_PORT),
            stream: 0,
        })
        .expect("peer");
    Endpoint {
        socket,
        peer,
        _program: program,
    }
}

struct Result {
    hist: Histogram<u64>,
    resent: usize,
}

fn xdp_client(e: &mut Endpoint, size: usize, iters: usize) -> Result {
    let mut hist = Histogram::new(3).expect("histogram");
    let mut resent = 0;
    let payload = Bytes::from(vec![0x5a; size]);
    for i in 0..WARMUP + iters {
        let seq = Bytes::copy_from_slice(&(i as u64).to_be_bytes());
        let frame = Frame {
            kind: 1,
            shard: 0,
            ext: seq.clone(),
            payload: payload.clone(),
        };
        loop {
            let t0 = Instant::now();
            e.socket.send(e.peer, frame.clone()).expect("send");
            let mut back = false;
            while !back && t0.elapsed() < RESEND_AFTER {
                e.socket.poll_rx(|f| back |= f.ext == seq);
                e.socket.poll_tx();
            }
            if back {
                if i >= WARMUP {
                    hist.record(t0.elapsed().as_nanos() as u64).expect("record");
                }
                break;
            }
            resent += 1;
        }
    }
    Result { hist, resent }
}

fn udp_client(s: &UdpSocket, to: SocketAddrV4, size: usize, iters: usize) -> Result {
    let mut msg = vec![0x5a; size.max(8)];
    let mut buf = vec![0u8; 65_536];
    let mut hist = Histogram::new(3).expect("histogram");
    let mut resent = 0;
    for i in 0..WARMUP + iters {
        msg[..8].copy_from_slice(&(i as u64).to_be_bytes());
        loop {
            let t0 = Instant::now();
            s.send_to(&msg, to).expect("udp send");
            let mut back = false;
            while !back && t0.elapsed() < RESEND_AFTER {
                back = s
                    .recv_from(&mut buf)
                    .is_ok_and(|(n, _)| n >= 8 && buf[..8] == msg[..8]);
            }
            if back {
                if i >= WARMUP {
                    hist.record(t0.elapsed().as_nanos() as u64).expect("record");
                }
                break;
            }
            resent += 1;
        }
    }
    Result { hist, resent }
}

fn report(what: &str, size: usize, r: &Result) {
    let us = |q: f64| r.hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{what:<14} {size:>6} B   p50 {:>7.1} µs   p99 {:>7.1} µs   p999 {:>7.1} µs   max {:>8.1} µs   n {}   resent {}",
        us(0.5),
        us(0.99),
        us(0.999),
        r.hist.max() as f64 / 1000.0,
        r.hist.len(),
        r.resent
    );
}

fn main() {
    let args = args();
    let net = VethPair::new("bench", 1).expect("veth pair (needs root and ip)");
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(false));

    // Server side in B: one thread busy-polling the AF_XDP socket and the kernel UDP socket.
    let server = {
        let (me, peer, stop, ready, mode) = (
            net.b.clone(),
            net.a.clone(),
            stop.clone(),
            ready.clone(),
            args.mode,
        );
        net.b.spawn(move || {
            let mut e = endpoint(&me, &peer, mode);
            let udp = UdpSocket::bind((me.ip, UDP_PORT)).expect("udp bind");
            udp.set_nonblocking(true).expect("nonblocking");
            let mut buf = vec![0u8; 65_536];
            ready.store(true, Ordering::Release);
            let mut echo = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                e.socket.poll_rx(|f| echo.push(f));
                for f in echo.drain(..) {
                    let _ = e.socket.send(e.peer, f);
                }
                e.socket.poll_tx();
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&buf[..n], from);
                }
            }
            e.socket.counters()
        })
    };
    while !ready.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(5));
    }

    let client = {
        let (me, peer, mode, sizes, iters) = (
            net.a.clone(),
            net.b.clone(),
            args.mode,
            args.sizes.clone(),
            args.iters,
        );
        net.a.spawn(move || {
            let mut e = endpoint(&me, &peer, mode);
            let udp = UdpSocket::bind((me.ip, 0)).expect("udp bind");
            udp.set_nonblocking(true).expect("nonblocking");
            let to = SocketAddrV4::new(peer.ip, UDP_PORT);
            println!(
                "pingpong over veth, XDP {:?} mode, zero-copy {}, {iters} round trips per row after {WARMUP} warm-up",
                mode,
                e.socket.zero_copy()
            );
            for &size in &sizes {
                report("AF_XDP", size, &xdp_client(&mut e, size, iters));
                report("kernel UDP", size, &udp_client(&udp, to, size, iters));
            }
            e.socket.counters()
        })
    };
    let client_counters = client.join().expect("client");
    stop.store(true, Ordering::Relaxed);
    let server_counters = server.join().expect("server");
    println!("client kernel drops {:?}", client_counters.kernel);
    println!("server kernel drops {:?}", server_counters.kernel);
}
