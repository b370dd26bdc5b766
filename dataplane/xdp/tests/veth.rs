//! AF_XDP between two network namespaces joined by a veth pair: real
//! sockets, real XDP programs, as root. Each test makes and removes its own
//! namespaces (`testnet::VethPair`, removed in `Drop`, also on panic) and is
//! bounded in time.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrolog_xdp::testnet::{Side, VethPair};
use ferrolog_xdp::{
    AttachMode, BindMode, Counters, Frame, PeerConfig, PeerId, ProgramConfig, SocketConfig, XdpError,
    XdpProgram, XskSocket,
};

const PORT: u16 = 7531;
const STREAM_A: u32 = 1;
const STREAM_B: u32 = 2;
/// No test may run longer than this.
const TEST_DEADLINE: Duration = Duration::from_secs(60);
/// Resend a frame whose echo has not come back after this long (the transport is not reliable;
/// the replication protocol resends the same way).
const RESEND_AFTER: Duration = Duration::from_millis(300);

fn frame(i: usize, ext_len: usize, payload_len: usize) -> Frame {
    let byte = |j: usize, salt: usize| ((j.wrapping_mul(2_654_435_761) >> 7) ^ i ^ salt) as u8;
    Frame {
        kind: (i % 251) as u8,
        shard: (i * 7 % 65_536) as u16,
        ext: (0..ext_len).map(|j| byte(j, 0x55)).collect::<Vec<u8>>().into(),
        payload: (0..payload_len)
            .map(|j| byte(j, 0xaa))
            .collect::<Vec<u8>>()
            .into(),
    }
}

/// (extension bytes, payload bytes): 1 byte to over 1 MiB, around the fragment boundaries
/// (1432 data bytes per datagram at MTU 1500, of which the first 18 are the frame header).
fn sizes() -> Vec<(usize, usize)> {
    let mut v = vec![(0, 0), (0, 1), (3, 2), (0, 100), (256, 1000)];
    for p in [
        1413,
        1414,
        1415,
        2845,
        2846,
        2847,
        4096,
        65_535,
        65_536,
        300_001,
        1 << 20,
        (1 << 20) + 12_345,
    ] {
        v.push((1, p));
    }
    v.push((256, 1 << 20));
    v
}

fn socket_config(ip: Ipv4Addr, stream: u32) -> SocketConfig {
    let mut c = SocketConfig::new(0, ip, stream);
    // 2048 receive chunks: a whole 1 MiB frame (733 datagrams) fits the rx ring even when the
    // receiving thread is not scheduled for a while on a busy machine.
    c.rx_ring = 2048;
    c
}

struct Endpoint {
    // Field order: the socket goes before the program it uses.
    socket: XskSocket,
    peer: PeerId,
    _program: Arc<XdpProgram>,
}

fn endpoint(me: &Side, stream: u32, peer: &Side, peer_stream: u32, mode: AttachMode) -> Endpoint {
    let program = XdpProgram::attach(&ProgramConfig::new(&me.ifname, PORT, mode)).expect("attach");
    let mut socket = XskSocket::open(&program, socket_config(me.ip, stream)).expect("open socket");
    let peer = socket
        .add_peer(PeerConfig {
            addr: SocketAddrV4::new(peer.ip, PORT),
            stream: peer_stream,
        })
        .expect("peer MAC");
    Endpoint {
        socket,
        peer,
        _program: program,
    }
}

/// Echoes every frame back to the peer until `stop`; returns the counters.
fn echo_server(
    me: Side,
    peer: Side,
    mode: AttachMode,
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Counters> {
    me.clone().spawn(move || {
        let mut e = endpoint(&me, STREAM_B, &peer, STREAM_A, mode);
        ready.store(true, Ordering::Release);
        let deadline = Instant::now() + TEST_DEADLINE;
        let mut echo = Vec::new();
        while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
            e.socket.poll_rx(|f| echo.push(f));
            for f in echo.drain(..) {
                // A full queue loses the echo; the client resends.
                let _ = e.socket.send(e.peer, f);
            }
            e.socket.poll_tx();
        }
        e.socket.counters()
    })
}

fn wait_for(flag: &AtomicBool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !flag.load(Ordering::Acquire) {
        assert!(Instant::now() < deadline, "server did not come up");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends each frame and waits for its echo (resending when it is late); returns the counters and
/// the number of resends. Every echo must be byte-for-byte the frame sent.
fn echo_client(e: &mut Endpoint, frames: &[Frame]) -> (Counters, usize) {
    let deadline = Instant::now() + TEST_DEADLINE;
    let mut resends = 0;
    for (i, sent) in frames.iter().enumerate() {
        e.socket.send(e.peer, sent.clone()).expect("queue");
        let mut last_send = Instant::now();
        let mut got = None;
        while got.is_none() {
            assert!(
                Instant::now() < deadline,
                "frame {i} ({} bytes) never echoed",
                sent.payload.len()
            );
            let mut wrong = None;
            e.socket.poll_rx(|f| {
                if f == *sent {
                    got = Some(());
                } else if f.kind != sent.kind || f.shard != sent.shard {
                    // The echo of an earlier frame sent twice: ignore it.
                } else {
                    wrong = Some(f);
                }
            });
            assert!(wrong.is_none(), "frame {i}: echo differs from what was sent");
            e.socket.poll_tx();
            if got.is_none() && last_send.elapsed() > RESEND_AFTER && e.socket.tx_idle() {
                e.socket.send(e.peer, sent.clone()).expect("queue");
                last_send = Instant::now();
                resends += 1;
            }
        }
    }
    (e.socket.counters(), resends)
}

fn transfer(mode: AttachMode, tag: &str) {
    let net = VethPair::new(tag, 1).expect("veth pair");
    let (ready, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let server = echo_server(net.b.clone(), net.a.clone(), mode, ready.clone(), stop.clone());
    wait_for(&ready);
    let (a, b) = (net.a.clone(), net.b.clone());
    let client = a.clone().spawn(move || {
        let mut e = endpoint(&a, STREAM_A, &b, STREAM_B, mode);
        let frames: Vec<Frame> = sizes()
            .into_iter()
            .enumerate()
            .map(|(i, (x, p))| frame(i, x, p))
            .collect();
        echo_client(&mut e, &frames)
    });
    let client = client.join();
    stop.store(true, Ordering::Release);
    let server = server.join().expect("server thread");
    let (client, resends) = client.expect("client thread");
    eprintln!("{mode:?}: {resends} resends\nclient {client:?}\nserver {server:?}");
    let n = sizes().len() as u64;
    assert!(client.tx_frames >= n && client.rx_frames >= n);
    assert!(server.rx_frames >= n && server.tx_frames >= n);
    for c in [&client, &server] {
        let i = &c.invalid;
        assert_eq!(
            (
                i.bad_checksum,
                i.unknown_version,
                i.unknown_stream,
                i.bad_frame,
                i.inconsistent
            ),
            (0, 0, 0, 0, 0),
            "nothing on a clean veth is invalid"
        );
    }
}

/// (a) Frames of 1 byte to over 1 MiB, byte for byte, A -> B and back, program in generic mode.
#[test]
fn transfer_generic_mode() {
    transfer(AttachMode::Generic, "gen");
}

/// (a) The same in native (driver) mode on veth. Both ends have a program attached here, as in
/// production; see the README for what native veth needs.
#[test]
fn transfer_native_mode() {
    transfer(AttachMode::Native, "drv");
}

/// (b) While the program is attached and the socket receives: ping, kernel UDP to another port
/// and TCP still reach the kernel; kernel UDP to the XDP port goes to the socket (and, not being
/// a valid datagram, is counted as invalid) instead of the kernel socket on that port.
#[test]
fn other_traffic_still_reaches_the_kernel() {
    let net = VethPair::new("other", 1).expect("veth pair");
    let (ready, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let server = echo_server(
        net.b.clone(),
        net.a.clone(),
        AttachMode::Generic,
        ready.clone(),
        stop.clone(),
    );
    wait_for(&ready);
    let b_ip = net.b.ip;

    assert!(
        net.a
            .exec(&["ping", "-c", "2", "-i", "0.2", "-W", "2", &b_ip.to_string()]),
        "ping A -> B"
    );

    // Kernel sockets in B: UDP on another port, UDP on the XDP port, a TCP listener.
    let kernel_b = net.b.spawn(move || {
        let other = UdpSocket::bind((b_ip, 7600)).expect("bind udp 7600");
        let on_xdp_port = UdpSocket::bind((b_ip, PORT)).expect("bind udp on the XDP port");
        let tcp = TcpListener::bind((b_ip, 7601)).expect("bind tcp");
        (other, on_xdp_port, tcp)
    });
    let (other, on_xdp_port, tcp) = kernel_b.join().expect("kernel sockets");
    let a_side = net.a.spawn(move || {
        let udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
        udp.send_to(b"to the kernel", (b_ip, 7600)).expect("send 7600");
        udp.send_to(b"to the socket", (b_ip, PORT))
            .expect("send XDP port");
        let mut s = TcpStream::connect_timeout(&SocketAddrV4::new(b_ip, 7601).into(), Duration::from_secs(5))
            .expect("tcp connect");
        std::io::Write::write_all(&mut s, b"tcp bytes").expect("tcp write");
    });
    a_side.join().expect("A side");

    let mut buf = [0u8; 64];
    other
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let (n, _) = other
        .recv_from(&mut buf)
        .expect("kernel UDP on another port arrives");
    assert_eq!(&buf[..n], b"to the kernel");
    let (mut conn, _) = tcp.accept().expect("tcp accept");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut conn, &mut got).expect("tcp read");
    assert_eq!(got, b"tcp bytes");
    on_xdp_port
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    assert!(
        on_xdp_port.recv_from(&mut buf).is_err(),
        "the XDP port's datagram reached the kernel socket"
    );

    // And frames still flow both ways over AF_XDP.
    let (a, b) = (net.a.clone(), net.b.clone());
    let client = a.clone().spawn(move || {
        let mut e = endpoint(&a, STREAM_A, &b, STREAM_B, AttachMode::Generic);
        echo_client(&mut e, &[frame(1, 8, 5000), frame(2, 0, 10)])
    });
    let client = client.join();
    stop.store(true, Ordering::Release);
    let server = server.join().expect("server");
    client.expect("client");
    assert_eq!(
        server.invalid.short, 1,
        "the kernel datagram went to the socket: {server:?}"
    );
    assert!(server.rx_frames >= 2);
}

/// (d) Setup failures name their reason, for the caller's fallback to TCP.
#[test]
fn fallback_errors_name_the_reason() {
    let err = XdpProgram::attach(&ProgramConfig::new("fxdp-nope0", PORT, AttachMode::Generic))
        .expect_err("no such interface");
    assert_eq!(
        err,
        XdpError::NoSuchInterface {
            name: "fxdp-nope0".into()
        }
    );

    let net = VethPair::new("fallback", 1).expect("veth pair");
    let a = net.a.clone();
    let result = net
        .a
        .spawn(move || {
            let program = XdpProgram::attach(&ProgramConfig::new(&a.ifname, PORT, AttachMode::Generic))?;
            let mut config = socket_config(a.ip, STREAM_A);
            config.queue = 5;
            XskSocket::open(&program, config).map(|_| ())
        })
        .join()
        .expect("thread");
    assert_eq!(
        result,
        Err(XdpError::QueueOutOfRange {
            ifname: "xa".into(),
            queue: 5,
            queues: 1
        })
    );
}

/// (e) A program left attached by a process that died without detaching (simulated by leaking
/// the handle) is detached by the next start; a program of another name is not touched.
#[test]
fn a_leftover_program_is_replaced_and_a_foreign_one_is_kept() {
    let net = VethPair::new("leftover", 1).expect("veth pair");
    let a = net.a.clone();
    net.a
        .spawn(move || {
            let ifindex_query = || {
                let out = std::process::Command::new("ip")
                    .args(["-d", "link", "show", &a.ifname])
                    .output();
                String::from_utf8_lossy(&out.expect("ip link").stdout).into_owned()
            };
            let config = ProgramConfig::new(&a.ifname, PORT, AttachMode::Generic);
            let crashed = XdpProgram::attach(&config).expect("first attach");
            let crashed_id = crashed.prog_id();
            std::mem::forget(crashed);
            assert!(
                ifindex_query().contains(&format!("id {crashed_id}")),
                "leaked program attached"
            );

            let next = XdpProgram::attach(&config).expect("second attach replaces the leftover");
            assert_ne!(next.prog_id(), crashed_id);
            let shown = ifindex_query();
            assert!(
                shown.contains(&format!("id {}", next.prog_id())),
                "new program attached: {shown}"
            );
            assert!(
                !shown.contains(&format!("id {crashed_id} ")),
                "leftover detached: {shown}"
            );
            drop(next);
            assert!(!ifindex_query().contains("xdpgeneric"), "detached on drop");

            // A program of another name (someone else's) is reported, not replaced.
            let foreign = ProgramConfig {
                name: "someone_else".into(),
                ..config.clone()
            };
            let theirs = XdpProgram::attach(&foreign).expect("foreign attach");
            let err = XdpProgram::attach(&config).expect_err("must not replace a foreign program");
            assert_eq!(
                err,
                XdpError::ProgramPresent {
                    ifname: a.ifname.clone(),
                    name: "someone_else".into(),
                    id: theirs.prog_id()
                }
            );
            drop(theirs);
            let ours = XdpProgram::attach(&config).expect("attach once the foreign program is gone");
            drop(ours);
        })
        .join()
        .expect("leftover test thread");
}

/// Native mode on veth needs no program on the sending end for this path: a frame the peer's
/// kernel sends into its veth reaches our native-mode program and socket. (An XDP program on
/// the peer is needed only for frames redirected *into* a veth with `XDP_REDIRECT`/`XDP_TX`,
/// which this transport does not do: AF_XDP copy-mode sends go through the veth's normal
/// transmit path.)
#[test]
fn native_mode_receives_without_a_program_on_the_peer() {
    let net = VethPair::new("drvpeer", 1).expect("veth pair");
    let (ready, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let server = echo_server(
        net.b.clone(),
        net.a.clone(),
        AttachMode::Native,
        ready.clone(),
        stop.clone(),
    );
    wait_for(&ready);
    let b_ip = net.b.ip;
    net.a
        .spawn(move || {
            let udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
            for _ in 0..3 {
                udp.send_to(b"short", (b_ip, PORT)).expect("send");
            }
        })
        .join()
        .expect("A side");
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Release);
    let server = server.join().expect("server");
    assert_eq!(server.invalid.short, 3, "{server:?}");
}

/// Closing a socket and binding the same queue again at once works (the kernel may answer EBUSY
/// for a moment while the old socket is torn down; open retries for `bind_busy_wait`), and the
/// program is detached and attached again as cleanly.
#[test]
fn reopen_right_after_close() {
    let net = VethPair::new("reopen", 1).expect("veth pair");
    let a = net.a.clone();
    net.a
        .spawn(move || {
            for round in 0..5 {
                let program = XdpProgram::attach(&ProgramConfig::new(&a.ifname, PORT, AttachMode::Native))
                    .unwrap_or_else(|e| panic!("attach, round {round}: {e}"));
                let socket = XskSocket::open(&program, socket_config(a.ip, STREAM_A))
                    .unwrap_or_else(|e| panic!("open, round {round}: {e}"));
                assert!(!socket.zero_copy(), "veth has no zero-copy");
                drop(socket);
                drop(program);
            }
            let program =
                XdpProgram::attach(&ProgramConfig::new(&a.ifname, PORT, AttachMode::Native)).expect("attach");
            let mut config = socket_config(a.ip, STREAM_A);
            config.bind = BindMode::ZeroCopy;
            let err = XskSocket::open(&program, config).expect_err("veth refuses zero-copy");
            assert_eq!(
                err,
                XdpError::DriverRefused {
                    ifname: a.ifname.clone(),
                    what: "AF_XDP bind",
                    errno: libc::EOPNOTSUPP
                }
            );
        })
        .join()
        .expect("reopen thread");
}
