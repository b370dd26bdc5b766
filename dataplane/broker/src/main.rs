//! `ferrolog`: the broker binary and its operator subcommands.
//!
//! `ferrolog cluster status|decommission` talk to a node's admin listener.
//! `ferrolog start` runs a node in the foreground (logs to stderr; SIGTERM or
//! SIGINT shut it down cleanly: in-flight appends finish, logs are flushed and
//! synced, exit 0). `ferrolog tune` measures the machine and writes a hardware
//! profile for it. `ferrolog log dump|verify DIR` inspect a data directory
//! offline.

mod clustercmd;
mod logcmd;
mod node;
mod start;
mod tune;

use clap::{Parser, Subcommand};
use ferrolog_kafka::alloc_guard::GuardedAlloc;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "ferrolog",
    version,
    about = "A Kafka-API-compatible streaming log broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a broker node in the foreground.
    Start(Box<start::StartArgs>),
    /// Measure this machine and its data disk, and write a hardware profile for it.
    Tune(tune::TuneArgs),
    /// The control plane: status, decommission (through a node's admin listener).
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Inspect log directories offline.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Term, leader, voters, members with their state and liveness, as JSON.
    Status {
        /// Any node's admin listener, HOST:PORT.
        #[arg(long, value_parser = parse_addr)]
        admin_addr: SocketAddr,
    },
    /// Drain a node of its partitions, then remove it from the cluster.
    Decommission {
        node_id: i32,
        /// Any node's admin listener, HOST:PORT.
        #[arg(long, value_parser = parse_addr)]
        admin_addr: SocketAddr,
    },
}

#[derive(Subcommand, Debug)]
enum LogCommand {
    /// List segments and batches (offsets, timestamps, sizes, CRC).
    Dump {
        /// A data directory, or one partition's log directory.
        dir: PathBuf,
        /// Also list every record of every batch (decoded with the batch's
        /// codec): offset, key, value length and the value's CRC-32C.
        #[arg(long)]
        records: bool,
    },
    /// Check every batch and index; exit 1 on corruption, naming file and position.
    Verify {
        /// A data directory, or one partition's log directory.
        dir: PathBuf,
    },
}

/// Hostile array counts in Kafka requests must not abort the process
/// (see ferrolog_kafka::alloc_guard).
#[global_allocator]
static ALLOC: GuardedAlloc = GuardedAlloc;

/// Parses HOST:PORT, resolving a host name if needed.
fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    s.to_socket_addrs()
        .map_err(|e| format!("{s}: {e}"))?
        .next()
        .ok_or_else(|| format!("{s}: no address"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Start(args) => start::run(*args),
        Command::Tune(args) => tune::run(args),
        Command::Cluster { command } => match command {
            ClusterCommand::Status { admin_addr } => clustercmd::status(admin_addr),
            ClusterCommand::Decommission { node_id, admin_addr } => {
                clustercmd::decommission(admin_addr, node_id)
            }
        },
        Command::Log { command } => match command {
            LogCommand::Dump { dir, records } => logcmd::dump(&dir, records),
            LogCommand::Verify { dir } => logcmd::verify(&dir),
        },
    }
}
