//! Mutual TLS on the data transport, over loopback on a real glommio
//! executor, with certificates the test makes with `openssl` (tools/setup.sh
//! installs it): frames round trip byte for byte over TLS; a plain-text link,
//! a node whose certificate another CA signed, a node whose certificate does
//! not name the address dialled, a listener whose certificate does not name
//! it, and garbage instead of a handshake deliver nothing, while a good link
//! on the same listener keeps working.

use bytes::Bytes;
use ferrolog_transport::{listen_with_tls, Frame, Handler, Link, NodeTls, NodeTlsFiles};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TEST_DEADLINE: Duration = Duration::from_secs(60);
const MAX_PAYLOAD: usize = 8 << 20;

fn run<F: Future<Output = ()>>(f: impl FnOnce() -> F) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .make()
        .expect("executor")
        .run(async move {
            let deadline = async {
                glommio::timer::sleep(TEST_DEADLINE).await;
                panic!("test did not finish within {TEST_DEADLINE:?}");
            };
            futures_lite::future::or(f(), deadline).await
        });
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl (tools/setup.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA named `ca` (ca.pem, ca.key) in `dir`.
fn make_ca(dir: &Path, ca: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={ca}"),
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
        ],
    );
}

/// A node certificate `name` (name.pem, name.key) signed by `ca`, naming
/// `san` (e.g. "IP:127.0.0.1"), for both TLS client and server use.
fn make_node(dir: &Path, ca: &str, name: &str, san: &str) -> NodeTlsFiles {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    let ext = format!("{name}.cnf");
    std::fs::write(
        dir.join(&ext),
        format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n"),
    )
    .expect("extension file");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &format!("{name}.pem"),
        ],
    );
    NodeTlsFiles {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
        ca: dir.join(format!("{ca}.pem")),
    }
}

struct Identities {
    _dir: tempfile::TempDir,
    good: Arc<NodeTls>,
    other: Arc<NodeTls>,
    /// The cluster's CA signed it, but it names another address.
    misnamed: Arc<NodeTls>,
    /// Signed by another CA.
    foreign: Arc<NodeTls>,
}

fn identities() -> Identities {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    make_ca(d, "ca");
    make_ca(d, "rogue-ca");
    let load = |f: NodeTlsFiles| Arc::new(NodeTls::from_files(&f).expect("node TLS"));
    Identities {
        good: load(make_node(d, "ca", "node1", "IP:127.0.0.1")),
        other: load(make_node(d, "ca", "node2", "IP:127.0.0.1,DNS:localhost")),
        misnamed: load(make_node(d, "ca", "node3", "IP:10.255.255.1")),
        foreign: load(make_node(d, "rogue-ca", "rogue", "IP:127.0.0.1")),
        _dir: dir,
    }
}

type Received = Rc<RefCell<Vec<Frame>>>;

fn recorder() -> (Handler, Received) {
    let got: Received = Rc::default();
    let sink = got.clone();
    let handler: Handler = Rc::new(move |_peer, frame| sink.borrow_mut().push(frame));
    (handler, got)
}

fn frame(i: usize, payload_len: usize) -> Frame {
    let payload: Vec<u8> = (0..payload_len).map(|j| (i * 31 + j * 7) as u8).collect();
    Frame {
        kind: (i % 7) as u8,
        shard: 0,
        ext: Bytes::from(format!("ext-{i}").into_bytes()),
        payload: Bytes::from(payload),
    }
}

async fn wait_until(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        glommio::timer::sleep(Duration::from_millis(2)).await;
    }
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

#[test]
fn frames_round_trip_byte_for_byte_over_mutual_tls() {
    let ids = identities();
    run(|| async move {
        let (handler, got) = recorder();
        let (server, addr) =
            listen_with_tls(localhost(), MAX_PAYLOAD, handler, Some(ids.good.clone())).expect("listen");
        let link = Link::with_tls(
            addr,
            MAX_PAYLOAD,
            64,
            32 << 20,
            Some((ids.other.clone(), "127.0.0.1".into())),
        );
        let sizes = [0, 1, 4095, 16_384, 16_385, 65_537, 1 << 20, 4 << 20];
        let n = 120;
        let mut sent = Vec::new();
        for i in 0..n {
            let f = frame(i, sizes[i % sizes.len()]);
            while link.send(f.clone()).is_err() {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            sent.push(f);
        }
        wait_until(Duration::from_secs(30), "every frame", || got.borrow().len() == n).await;
        assert_eq!(*got.borrow(), sent);
        assert_eq!((link.sent(), link.dropped()), (n as u64, 0));
        server.cancel();
    });
}

#[test]
fn peers_without_the_clusters_certificate_deliver_nothing_and_harm_no_one() {
    let ids = identities();
    run(|| async move {
        let (handler, got) = recorder();
        let (server, addr) =
            listen_with_tls(localhost(), MAX_PAYLOAD, handler, Some(ids.good.clone())).expect("listen");
        let good = Link::with_tls(
            addr,
            MAX_PAYLOAD,
            64,
            1 << 24,
            Some((ids.other.clone(), "127.0.0.1".into())),
        );
        good.send(frame(0, 100)).expect("queued");
        wait_until(Duration::from_secs(10), "the good link's first frame", || {
            got.borrow().len() == 1
        })
        .await;

        // A plain-text link (the listener's handshake fails on its frames)
        // and a link with a certificate of another CA (it does not trust the
        // listener, nor the listener it).
        let plain = Link::new(addr, MAX_PAYLOAD, 64, 1 << 24);
        let foreign = Link::with_tls(
            addr,
            MAX_PAYLOAD,
            64,
            1 << 24,
            Some((ids.foreign.clone(), "127.0.0.1".into())),
        );
        for i in 0..20 {
            let _ = plain.send(frame(100 + i, 10));
            let _ = foreign.send(frame(200 + i, 10));
        }
        // Garbage where a ClientHello belongs.
        let mut raw = TcpStream::connect(addr).await.expect("connect");
        raw.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3, 4, 5])
            .await
            .expect("write");
        let mut buf = [0u8; 64];
        let closed = futures_lite::future::or(
            async {
                loop {
                    match raw.read(&mut buf).await {
                        Ok(0) | Err(_) => return true,
                        Ok(_) => {} // a TLS alert, then the close
                    }
                }
            },
            async {
                glommio::timer::sleep(Duration::from_secs(10)).await;
                false
            },
        )
        .await;
        assert!(closed, "a garbage handshake must be closed by the listener");

        wait_until(
            Duration::from_secs(10),
            "the bad links to give up their frames",
            || plain.queued() == 0 && foreign.queued() == 0,
        )
        .await;
        // The good link still works, on the same listener.
        good.send(frame(1, 70_000)).expect("queued");
        wait_until(Duration::from_secs(10), "the good link's second frame", || {
            got.borrow().len() >= 2
        })
        .await;
        glommio::timer::sleep(Duration::from_millis(200)).await;
        let got = got.borrow();
        assert_eq!(
            *got,
            vec![frame(0, 100), frame(1, 70_000)],
            "only the good link's frames arrive"
        );
        assert_eq!(
            foreign.sent() + plain.sent() + foreign.dropped() + plain.dropped(),
            40
        );
        server.cancel();
    });
}

#[test]
fn a_listener_whose_certificate_names_another_address_is_not_trusted() {
    let ids = identities();
    run(|| async move {
        let (handler, got) = recorder();
        let (server, addr) =
            listen_with_tls(localhost(), MAX_PAYLOAD, handler, Some(ids.misnamed.clone())).expect("listen");
        let link = Link::with_tls(
            addr,
            MAX_PAYLOAD,
            64,
            1 << 24,
            Some((ids.good.clone(), "127.0.0.1".into())),
        );
        for i in 0..5 {
            let _ = link.send(frame(i, 10));
        }
        wait_until(Duration::from_secs(10), "the link to give up", || {
            link.dropped() == 5
        })
        .await;
        assert_eq!(link.sent(), 0);
        assert!(got.borrow().is_empty());
        server.cancel();
    });
}
