//! Which UMEM sizes register under this process's RLIMIT_MEMLOCK and
//! capabilities, and what the kernel shows as locked or pinned afterwards.
//!
//! `cargo run -p ferrolog-xdp --example umem_probe -- 2 8 2048:1024` (MiB, or rx:tx chunks of 2 KiB; root). To see the
//! accounting without CAP_IPC_LOCK: `setpriv --bounding-set -ipc_lock --inh-caps -ipc_lock
//! target/debug/examples/umem_probe 2 4 8`.

use ferrolog_xdp::testnet::VethPair;
use ferrolog_xdp::{AttachMode, ProgramConfig, SocketConfig, XdpProgram, XskSocket};

fn status(keys: &[&str]) -> String {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .filter(|l| keys.iter().any(|k| l.starts_with(k)))
        .collect::<Vec<_>>()
        .join("  ")
}

fn main() {
    // "N" is N MiB split evenly between receive and send chunks; "RX:TX" gives the chunk counts.
    let sizes: Vec<(u32, u32)> = std::env::args()
        .skip(1)
        .map(|s| match s.split_once(':') {
            Some((rx, tx)) => (rx.parse().expect("RX"), tx.parse().expect("TX")),
            None => {
                let half = (s.parse::<u32>().expect("MiB") << 20) / 2048 / 2;
                (half, half)
            }
        })
        .collect();
    println!(
        "RLIMIT_MEMLOCK {} bytes; {}",
        ferrolog_xdp::memlock_limit(),
        status(&["CapEff"])
    );
    let net = VethPair::new("probe", 1).expect("veth pair");
    let a = net.a.clone();
    a.clone()
        .spawn(move || {
            let program = XdpProgram::attach(&ProgramConfig::new(&a.ifname, 7531, AttachMode::Generic))
                .expect("attach");
            for (rx, tx) in sizes {
                let mut c = SocketConfig::new(0, a.ip, 0);
                c.rx_ring = rx;
                c.tx_ring = tx;
                let kib = c.umem_bytes() >> 10;
                match XskSocket::open(&program, c) {
                    Ok(s) => {
                        println!(
                            "{kib:>6} KiB UMEM ({rx}+{tx} chunks): ok   {}",
                            status(&["VmLck", "VmPin"])
                        );
                        drop(s);
                    }
                    Err(e) => println!("{kib:>6} KiB UMEM ({rx}+{tx} chunks): refused: {e}"),
                }
            }
        })
        .join()
        .expect("probe thread");
}
