//! Two network namespaces joined by a veth pair, for tests and the
//! benchmark. Needs root and `ip` (iproute2). Everything made is removed in
//! `Drop` (deleting a namespace deletes its end of the veth and any XDP
//! program on it), also when a test panics.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One end of the pair.
#[derive(Clone, Debug)]
pub struct Side {
    pub netns: String,
    pub ifname: String,
    pub ip: Ipv4Addr,
}

impl Side {
    /// Runs `f` on a new thread inside this side's namespace.
    pub fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.netns);
        std::thread::spawn(move || {
            crate::sys::enter_netns(&path).unwrap_or_else(|e| panic!("enter {path}: {e}"));
            f()
        })
    }

    /// Runs a command in this side's namespace (`ip netns exec`); returns whether it succeeded.
    pub fn exec(&self, args: &[&str]) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

/// Namespaces `a` and `b`, with `xa` 10.77.0.1/24 in `a` and `xb` 10.77.0.2/24 in `b`.
pub struct VethPair {
    pub a: Side,
    pub b: Side,
}

impl VethPair {
    /// Makes the pair, each end with `queues` rx and tx queues.
    pub fn new(tag: &str, queues: u32) -> std::io::Result<VethPair> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = format!("fxdp-{tag}-{}-{n}", std::process::id());
        let pair = VethPair {
            a: Side {
                netns: format!("{base}-a"),
                ifname: "xa".into(),
                ip: Ipv4Addr::new(10, 77, 0, 1),
            },
            b: Side {
                netns: format!("{base}-b"),
                ifname: "xb".into(),
                ip: Ipv4Addr::new(10, 77, 0, 2),
            },
        };
        let (a, b) = (&pair.a.netns, &pair.b.netns);
        let q = queues.to_string();
        ip(&["netns", "add", a])?;
        ip(&["netns", "add", b])?;
        ip(&[
            "-n",
            a,
            "link",
            "add",
            "xa",
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            "xb",
            "netns",
            b,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
        ])?;
        for side in [&pair.a, &pair.b] {
            let addr = format!("{}/24", side.ip);
            ip(&["-n", &side.netns, "addr", "add", &addr, "dev", &side.ifname])?;
            ip(&["-n", &side.netns, "link", "set", "lo", "up"])?;
            ip(&["-n", &side.netns, "link", "set", &side.ifname, "up"])?;
        }
        Ok(pair)
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        for side in [&self.a, &self.b] {
            if let Err(e) = ip(&["netns", "del", &side.netns]) {
                eprintln!("testnet: could not delete netns {}: {e}", side.netns);
            }
        }
    }
}

fn ip(args: &[&str]) -> std::io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
