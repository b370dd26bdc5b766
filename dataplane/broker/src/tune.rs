//! `ferrolog tune`: measure this machine and write a hardware profile for it.
//!
//! Runs offline, before the broker, on the main thread with blocking std I/O: hwloc detection
//! (CPUs, cores, NUMA nodes, memory), RLIMIT_MEMLOCK, and three measurements of the data
//! directory's device through a scratch file written with O_DIRECT, the way the log writes:
//!
//! 1. sequential bandwidth: `--seq-bytes` in 1 MiB writes, then one fdatasync (included, so the
//!    number is what reaches stable storage);
//! 2. 4 KiB write latency: `--samples` O_DIRECT overwrites of blocks written in phase 1, so no
//!    write allocates (the log's pre-zeroing makes its small flushes overwrites too);
//! 3. 4 KiB write + fdatasync latency: the same, each followed by fdatasync: the cost of one
//!    acknowledged append with `durability = "fsync"` and no group commit.
//!
//! The profile picks its values from these (see [`plan_for`]), is validated against this machine
//! before it is written, and records the measurements in `[io.device]`. The scratch file is
//! removed on success and on error; only an interrupted run can leave `.ferrolog-tune-*` behind.

use ferrolog_hw_profiles::irq::{self, DeviceIrqs};
use ferrolog_hw_profiles::{blockpoll, cpuidle};
use ferrolog_hw_profiles::{
    check_direct_io, detect, format_bytes, format_cpuset, AlignedBuffer, Device, Machine, Profile,
    ProfileError, DIRECT_IO_ALIGN_BYTES, GROUP_COMMIT_WINDOW_US_MAX,
};
use hdrhistogram::Histogram;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// Size of one write of the sequential phase: the dev profile's write_chunk_bytes.
const SEQ_CHUNK_BYTES: usize = 1 << 20;
/// Size of one write of the latency phases: one page, the smallest O_DIRECT write.
const SMALL_WRITE_BYTES: usize = DIRECT_IO_ALIGN_BYTES;
/// The latency phases cycle over at most this much of the scratch file.
const SMALL_WRITE_SPAN_BYTES: u64 = 64 * MIB;
/// Writes of each latency phase done before measuring, so first-touch effects are not counted.
const WARMUP_WRITES: u64 = 16;
/// Bounds of `--samples`: enough for a p99, few enough to finish in minutes on a slow disk.
const SAMPLES_MIN: u64 = 10;
const SAMPLES_MAX: u64 = 1_000_000;
/// Bounds of `--seq-bytes`.
const SEQ_BYTES_MIN: u64 = MIB;
const SEQ_BYTES_MAX: u64 = 64 * GIB;
/// Free space left on the device beyond the scratch file.
const FREE_SPACE_MARGIN_BYTES: u64 = 64 * MIB;
/// Latencies are recorded in ns; anything slower than this is recorded as this.
const LATENCY_NS_MAX: u64 = 60_000_000_000;
/// How often a progress line is redrawn.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// Number of measurement phases, for the progress lines.
const PHASES: usize = 3;

/// Machines with at least this many cores give their first core to the control plane and the
/// OS; smaller ones need every core for shards.
const DEDICATED_CONTROL_CORES_MIN: usize = 4;
/// Share of the machine's memory given to shards (in percent); the rest is headroom for the
/// kernel's page cache of segment metadata, the control plane and the OS.
const SHARD_MEMORY_PERCENT: u64 = 60;
/// Most memory budgeted to one shard: beyond this a shard's batch cache and buffers stop paying.
const SHARD_MEMORY_BYTES_MAX: u64 = 16 * GIB;
/// io memory per shard when RLIMIT_MEMLOCK allows it: twice the dev size, for a fast device.
const IO_MEMORY_BYTES_TARGET: u64 = 2 * MIB;
/// The profile crate's lower bound on io_memory_bytes.
const IO_MEMORY_BYTES_MIN: u64 = ferrolog_hw_profiles::IO_MEMORY_BYTES_MIN as u64;
/// glommio registers each shard's io memory with three io_uring rings, and each registration
/// counts against RLIMIT_MEMLOCK.
const IO_RINGS_PER_SHARD: u64 = 3;
/// Share of RLIMIT_MEMLOCK (in percent) io memory may use: the rest is left to other locked
/// pages (older kernels count the rings themselves against the limit too).
const MEMLOCK_USABLE_PERCENT: u64 = 75;
/// The dev profile's batch cache per shard; smaller only when the shard budget is small.
const BATCH_CACHE_BYTES_TARGET: u64 = 64 * MIB;
/// A median fdatasync faster than this (NVMe with power-loss protection) gets no group-commit
/// window: waiting would cost more latency than the sync it shares.
const GROUP_COMMIT_SYNC_P50_MIN_US: u64 = 200;
/// The window is this fraction (1/N) of the median fdatasync.
const GROUP_COMMIT_SYNC_FRACTION: u64 = 4;
/// Spin before parking on dedicated shard cores: a request arriving within this window is
/// picked up without a wake-up.
const SPIN_BEFORE_PARK_US_DEDICATED: u64 = 100;

#[derive(clap::Args, Debug)]
pub struct TuneArgs {
    /// Directory on the device the broker's data will live on (created if missing). Only a
    /// scratch file is written there, and removed.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Where to write the generated profile (TOML).
    #[arg(long)]
    pub out: PathBuf,
    /// Bytes written by the sequential-bandwidth phase: a number with an optional B, KiB, MiB or
    /// GiB suffix; rounded up to whole MiB.
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub seq_bytes: u64,
    /// Samples of each latency phase (4 KiB write, 4 KiB write + fdatasync).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(SAMPLES_MIN..=SAMPLES_MAX))]
    pub samples: u64,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
}

/// What the device measurements found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measurements {
    pub seq_write_bytes_per_s: u64,
    pub write_4k: Percentiles,
    pub fdatasync_4k: Percentiles,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percentiles {
    pub p50_us: u64,
    pub p99_us: u64,
}

/// The values a generated profile gets, and why where it is not obvious.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub shard_cpus: Vec<usize>,
    pub control_cpus: Option<Vec<usize>>,
    pub memory_bytes: u64,
    pub io_memory_bytes: u64,
    pub batch_cache_bytes: u64,
    pub group_commit_window_us: u64,
    pub spin_before_park_us: u64,
}

pub fn run(args: TuneArgs) -> ExitCode {
    match tune(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(TuneError::Usage(message)) => {
            eprintln!("ferrolog tune: {message}");
            ExitCode::from(2)
        }
        Err(TuneError::Failed(message)) => {
            eprintln!("ferrolog tune: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `Usage`: the arguments or the data directory are unusable (exit 2, as for a bad profile).
/// `Failed`: the machine or a measurement failed (exit 1).
enum TuneError {
    Usage(String),
    Failed(String),
}

fn tune(args: &TuneArgs) -> Result<(), TuneError> {
    if args.out.exists() && !args.force {
        return Err(TuneError::Usage(format!(
            "--out {}: the file exists (use --force to replace it)",
            args.out.display()
        )));
    }
    if let Err(e) = check_direct_io(&args.data_dir) {
        let message = format!("invalid --data-dir: {e}");
        return Err(match e {
            ProfileError::NoDirectIo { .. } => TuneError::Usage(message),
            _ => TuneError::Failed(message),
        });
    }
    let seq_bytes = args.seq_bytes.div_ceil(MIB) * MIB;
    let free = free_bytes(&args.data_dir).map_err(|e| {
        TuneError::Failed(format!(
            "cannot read free space of {}: {e}",
            args.data_dir.display()
        ))
    })?;
    if seq_bytes + FREE_SPACE_MARGIN_BYTES > free {
        return Err(TuneError::Usage(format!(
            "--seq-bytes {seq_bytes}: only {} free in {} (keeping {} spare)",
            format_bytes(free),
            args.data_dir.display(),
            format_bytes(FREE_SPACE_MARGIN_BYTES)
        )));
    }
    let machine = detect().map_err(|e| TuneError::Failed(format!("cannot detect the machine: {e}")))?;
    let memlock =
        memlock_limit_bytes().map_err(|e| TuneError::Failed(format!("cannot read RLIMIT_MEMLOCK: {e}")))?;
    eprintln!("machine: {}", machine.summary());

    let measured = {
        let scratch = Scratch::create(&args.data_dir).map_err(|e| {
            TuneError::Failed(format!(
                "cannot create a scratch file in {}: {e}",
                args.data_dir.display()
            ))
        })?;
        measure(&scratch.file, seq_bytes, args.samples)
            .map_err(|e| TuneError::Failed(format!("measuring {} failed: {e}", scratch.path.display())))?
        // The scratch file is removed here, also on error.
    };
    let plan = plan_for(&machine, memlock, &measured).map_err(TuneError::Failed)?;
    let irqs = irq::survey(Path::new("/sys"), Path::new("/proc"), &args.data_dir);
    let text = render(&RenderInput {
        machine: &machine,
        plan: &plan,
        measured: &measured,
        memlock,
        data_dir: &std::fs::canonicalize(&args.data_dir).unwrap_or_else(|_| args.data_dir.clone()),
        host: &host_name(),
        generated_at: SystemTime::now(),
        irqs: &irqs,
    });
    // A profile tune writes must start the broker on this machine; anything else is a bug here.
    let profile = Profile::from_toml_str(&text)
        .and_then(|profile| profile.validate_on_host(&machine).map(|()| profile))
        .map_err(|e| TuneError::Failed(format!("bug: the generated profile does not validate: {e}")))?;
    debug_assert_eq!(profile.shards.memory_bytes, plan.memory_bytes);
    write_atomically(&args.out, &text)
        .map_err(|e| TuneError::Failed(format!("cannot write {}: {e}", args.out.display())))?;

    println!("machine: {}", machine.summary());
    println!(
        "sequential write: {}/s ({} in 1 MiB O_DIRECT writes + fdatasync)",
        format_bytes(measured.seq_write_bytes_per_s),
        format_bytes(seq_bytes)
    );
    println!(
        "4 KiB O_DIRECT write: p50 {} us, p99 {} us ({} samples)",
        measured.write_4k.p50_us, measured.write_4k.p99_us, args.samples
    );
    println!(
        "4 KiB write + fdatasync: p50 {} us, p99 {} us ({} samples)",
        measured.fdatasync_4k.p50_us, measured.fdatasync_4k.p99_us, args.samples
    );
    println!(
        "profile: shards on CPUs {}, control CPUs {}, {} x {} per shard, io memory {}, \
         group commit window {} us",
        format_cpuset(&plan.shard_cpus),
        plan.control_cpus
            .as_deref()
            .map_or_else(|| "none".to_owned(), format_cpuset),
        plan.shard_cpus.len(),
        format_bytes(plan.memory_bytes),
        format_bytes(plan.io_memory_bytes),
        plan.group_commit_window_us
    );
    let idle = cpuidle::survey(Path::new("/sys"));
    println!("idle CPUs: {}", idle.describe());
    if let Some(fix) = idle.proposal() {
        println!(
            "  they halt without polling first, so every wake-up of a parked shard pays a halted \
             vCPU's wake-up; to let the guest poll first (not in the profile: a system setting, \
             lost at reboot): {fix}"
        );
    }
    if let Some(disk) = blockpoll::survey(Path::new("/sys"), &args.data_dir) {
        println!("{}", disk.describe());
        if let Some(fix) = disk.proposal(plan.shard_cpus.len()) {
            println!("  poll queues (not in the profile): {fix}");
        }
        if let Some(line) = disk.describe_completions() {
            println!("{line}");
        }
        // The profile's irq_cpuset is the control core's CPUs, where there is one.
        if let Some(fix) = disk.rq_affinity_proposal(plan.control_cpus.is_some()) {
            println!(
                "  to complete each write, and run the file system's worker that finishes it, on \
                 the shard's own CPU instead of the interrupt's, as no CPU is kept free of shards \
                 for the interrupts (not in the profile: a system setting, lost at reboot): {fix}"
            );
        }
    }
    if irqs.is_empty() {
        println!("interrupts: none found for the data disk or a NIC");
    }
    for d in &irqs {
        println!("interrupts of the {}: CPUs {}", d.what, format_cpuset(&d.cpus()));
        for l in d.describe() {
            println!("  {l}");
        }
    }
    for (what, cpus) in irq::shared_with_shards(&irqs, &plan.shard_cpus) {
        let kept = if plan.control_cpus.is_some() {
            "the profile moves them to irq_cpuset at start"
        } else {
            "every CPU runs a shard here, so they cannot be kept off"
        };
        println!(
            "the {what}'s interrupts land on shard CPUs {}: {kept}",
            format_cpuset(&cpus)
        );
    }
    println!("wrote {}", args.out.display());
    Ok(())
}

/// The scratch file of the measurements, removed when dropped.
struct Scratch {
    path: PathBuf,
    file: File,
}

impl Scratch {
    fn create(dir: &Path) -> io::Result<Scratch> {
        let path = dir.join(format!(".ferrolog-tune-{}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)?;
        Ok(Scratch { path, file })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            eprintln!("ferrolog tune: cannot remove {}: {e}", self.path.display());
        }
    }
}

/// Runs the three phases on `file` (opened with O_DIRECT).
fn measure(file: &File, seq_bytes: u64, samples: u64) -> io::Result<Measurements> {
    // A non-zero pattern, so no layer below can skip or compress zero blocks.
    let mut chunk = AlignedBuffer::new(SEQ_CHUNK_BYTES);
    for (i, byte) in chunk.as_mut_slice().iter_mut().enumerate() {
        *byte = (i % 251) as u8 + 1;
    }
    let chunk_bytes = SEQ_CHUNK_BYTES as u64;
    let chunks = seq_bytes / chunk_bytes;
    let mut progress = Progress::new(1, "sequential 1 MiB O_DIRECT writes");
    let start = Instant::now();
    for i in 0..chunks {
        file.write_all_at(chunk.as_slice(), i * chunk_bytes)?;
        progress.update(|| format!("{}/{} MiB", i + 1, chunks));
    }
    file.sync_data()?;
    let elapsed = start.elapsed().as_secs_f64().max(f64::MIN_POSITIVE);
    let seq_write_bytes_per_s = (seq_bytes as f64 / elapsed) as u64;
    progress.finish(&format!(
        "{chunks}/{chunks} MiB  {}/s",
        format_bytes(seq_write_bytes_per_s)
    ));

    let mut block = AlignedBuffer::new(SMALL_WRITE_BYTES);
    block
        .as_mut_slice()
        .copy_from_slice(&chunk.as_slice()[..SMALL_WRITE_BYTES]);
    let blocks = seq_bytes.min(SMALL_WRITE_SPAN_BYTES) / SMALL_WRITE_BYTES as u64;
    let offset = |i: u64| (i % blocks) * SMALL_WRITE_BYTES as u64;
    let write_4k = latency_phase(2, "4 KiB O_DIRECT write", samples, |i| {
        file.write_all_at(block.as_slice(), offset(i))
    })?;
    let fdatasync_4k = latency_phase(3, "4 KiB O_DIRECT write+fdatasync", samples, |i| {
        file.write_all_at(block.as_slice(), offset(i))?;
        file.sync_data()
    })?;
    Ok(Measurements {
        seq_write_bytes_per_s,
        write_4k,
        fdatasync_4k,
    })
}

/// Times `samples` calls of `op` (after [`WARMUP_WRITES`] untimed ones) and returns p50/p99.
fn latency_phase(
    phase: usize,
    name: &str,
    samples: u64,
    mut op: impl FnMut(u64) -> io::Result<()>,
) -> io::Result<Percentiles> {
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("constant histogram bounds are valid");
    for i in 0..WARMUP_WRITES {
        op(i)?;
    }
    let mut progress = Progress::new(phase, name);
    for i in 0..samples {
        let start = Instant::now();
        op(WARMUP_WRITES + i)?;
        histogram.saturating_record(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX));
        progress.update(|| format!("{}/{samples}", i + 1));
    }
    // Rounded to the nearest µs, but never 0: no device completes a write in under 1 µs.
    let us = |quantile: f64| ((histogram.value_at_quantile(quantile) + 500) / 1000).max(1);
    let percentiles = Percentiles {
        p50_us: us(0.50),
        p99_us: us(0.99),
    };
    progress.finish(&format!(
        "{samples}/{samples}  p50 {} us  p99 {} us",
        percentiles.p50_us, percentiles.p99_us
    ));
    Ok(percentiles)
}

/// One updating progress line on stderr: "\r[2/3] 4 KiB O_DIRECT write  812/2000".
struct Progress {
    prefix: String,
    drawn: Option<Instant>,
}

impl Progress {
    fn new(phase: usize, name: &str) -> Progress {
        Progress {
            prefix: format!("[{phase}/{PHASES}] {name}"),
            drawn: None,
        }
    }

    /// Redraws the line with `status()` at most every [`PROGRESS_INTERVAL`].
    fn update(&mut self, status: impl FnOnce() -> String) {
        if self.drawn.is_some_and(|at| at.elapsed() < PROGRESS_INTERVAL) {
            return;
        }
        self.drawn = Some(Instant::now());
        eprint!("\r{}  {}", self.prefix, status());
    }

    fn finish(self, status: &str) {
        eprintln!("\r{}  {status}", self.prefix);
    }
}

/// Chooses the profile's values for `machine` with RLIMIT_MEMLOCK `memlock` (`None`: unlimited).
pub fn plan_for(machine: &Machine, memlock: Option<u64>, measured: &Measurements) -> Result<Plan, String> {
    let (shard_cpus, control_cpus) = match machine.cores.split_first() {
        Some((first, _)) if machine.cores.len() >= DEDICATED_CONTROL_CORES_MIN => {
            let shards: Vec<usize> = machine
                .cpus
                .iter()
                .copied()
                .filter(|cpu| !first.cpus.contains(cpu))
                .collect();
            (shards, Some(first.cpus.clone()))
        }
        _ => (machine.cpus.clone(), None),
    };
    assert!(!shard_cpus.is_empty(), "a detected machine has CPUs: {machine:?}");
    let shards = shard_cpus.len() as u64;

    let io_memory_bytes = match memlock {
        None => IO_MEMORY_BYTES_TARGET,
        Some(limit) => {
            let usable = percent_of(limit, MEMLOCK_USABLE_PERCENT) / (IO_RINGS_PER_SHARD * shards);
            let fitting = if usable == 0 { 0 } else { 1 << usable.ilog2() };
            if fitting < IO_MEMORY_BYTES_MIN {
                return Err(format!(
                    "RLIMIT_MEMLOCK is {limit} ({}): {shards} shards need a limit of at least {} \
                     ({IO_RINGS_PER_SHARD} rings x {} of io memory per shard in \
                     {MEMLOCK_USABLE_PERCENT}% of the limit); raise it (ulimit -l, or LimitMEMLOCK= \
                     in a systemd unit)",
                    format_bytes(limit),
                    format_bytes(
                        IO_RINGS_PER_SHARD * shards * IO_MEMORY_BYTES_MIN * 100 / MEMLOCK_USABLE_PERCENT
                    ),
                    format_bytes(IO_MEMORY_BYTES_MIN)
                ));
            }
            fitting.min(IO_MEMORY_BYTES_TARGET)
        }
    };

    let share = percent_of(machine.memory_bytes, SHARD_MEMORY_PERCENT) / shards;
    let memory_bytes = (share.min(SHARD_MEMORY_BYTES_MAX) / MIB) * MIB;
    // The batch cache takes at most half of a small budget, so the budget covers its consumers.
    let batch_cache_bytes =
        BATCH_CACHE_BYTES_TARGET.min(memory_bytes.saturating_sub(io_memory_bytes) / 2 / MIB * MIB);
    if batch_cache_bytes == 0 {
        return Err(format!(
            "{} of memory is too little for {shards} shards",
            format_bytes(machine.memory_bytes)
        ));
    }

    let sync_p50_us = measured.fdatasync_4k.p50_us;
    let group_commit_window_us = if sync_p50_us < GROUP_COMMIT_SYNC_P50_MIN_US {
        0
    } else {
        (sync_p50_us / GROUP_COMMIT_SYNC_FRACTION / 10 * 10).min(GROUP_COMMIT_WINDOW_US_MAX)
    };
    let spin_before_park_us = if control_cpus.is_some() {
        SPIN_BEFORE_PARK_US_DEDICATED
    } else {
        0
    };
    Ok(Plan {
        shard_cpus,
        control_cpus,
        memory_bytes,
        io_memory_bytes,
        batch_cache_bytes,
        group_commit_window_us,
        spin_before_park_us,
    })
}

/// `percent`% of `value`, rounded down, without overflow.
fn percent_of(value: u64, percent: u64) -> u64 {
    u64::try_from(u128::from(value) * u128::from(percent) / 100).unwrap_or(u64::MAX)
}

/// Everything the generated file says.
pub struct RenderInput<'a> {
    pub machine: &'a Machine,
    pub plan: &'a Plan,
    pub measured: &'a Measurements,
    pub memlock: Option<u64>,
    pub data_dir: &'a Path,
    pub host: &'a str,
    pub generated_at: SystemTime,
    /// Where the data disk's and the NICs' interrupts landed when tune ran.
    pub irqs: &'a [DeviceIrqs],
}

/// The profile as commented TOML.
pub fn render(input: &RenderInput<'_>) -> String {
    let RenderInput {
        machine,
        plan,
        measured,
        memlock,
        ..
    } = *input;
    let shards = plan.shard_cpus.len() as u64;
    let memlock_text = memlock.map_or_else(|| "unlimited".to_owned(), format_bytes);
    let device = Device {
        seq_write_bytes_per_s: Some(measured.seq_write_bytes_per_s),
        write_4k_p50_us: Some(measured.write_4k.p50_us),
        write_4k_p99_us: Some(measured.write_4k.p99_us),
        fdatasync_4k_p50_us: Some(measured.fdatasync_4k.p50_us),
        fdatasync_4k_p99_us: Some(measured.fdatasync_4k.p99_us),
    };
    let dev = Profile::default();
    let mut out = String::new();
    let mut line = |text: &str| {
        out.push_str(text);
        out.push('\n');
    };

    line("# ferrolog hardware profile, generated by `ferrolog tune`.");
    line(&format!("# Generated: {}", utc_timestamp(input.generated_at)));
    line(&format!("# Host: {}", input.host));
    line(&format!("# Machine: {}", machine.summary()));
    line(&format!(
        "# Data directory measured: {}",
        input.data_dir.display()
    ));
    line(&format!("# Device: {device}"));
    line(&format!("# RLIMIT_MEMLOCK: {memlock_text}"));
    line("#");
    line("# It validates on the machine that produced it. docs/tuning.md explains every field;");
    line("# edit freely, or run `ferrolog tune` again after changing the hardware.");
    if input.irqs.is_empty() {
        line("# Interrupts: none found for the data disk or a NIC (no PCI device in /sys).");
    }
    for d in input.irqs {
        line(&format!(
            "# Interrupts of the {} (CPUs {}):",
            d.what,
            format_cpuset(&d.cpus())
        ));
        for l in d.describe() {
            line(&format!("#   {l}"));
        }
    }
    line("");
    line("[shards]");
    match &plan.control_cpus {
        Some(control) => {
            line(&format!(
                "# {} cores: the first core ({}) runs the control plane, the main thread and the",
                machine.cores.len(),
                format_cpuset(control)
            ));
            line("# OS's housekeeping; every other CPU runs one pinned shard.");
            line(&format!("cpuset = \"{}\"", format_cpuset(&plan.shard_cpus)));
            line(&format!("control_cpuset = \"{}\"", format_cpuset(control)));
            line("# The data disk's and the NICs' interrupts go to the control core as well, off the");
            line("# shards (applied at start when the broker may write /proc/irq, i.e. as root).");
            line(&format!("irq_cpuset = \"{}\"", format_cpuset(control)));
        }
        None => {
            line(&format!(
                "# Fewer than {DEDICATED_CONTROL_CORES_MIN} cores: every CPU runs a shard, and no CPU is \
                 set aside for the"
            ));
            line("# control plane (it would cost a quarter or more of the machine).");
            line(&format!("cpuset = \"{}\"", format_cpuset(&plan.shard_cpus)));
            line("# No irq_cpuset: with a shard on every CPU, the disk's and the NICs' interrupts");
            line("# cannot be kept off the shards (start warns which CPUs share them).");
        }
    }
    line(&format!(
        "# {SHARD_MEMORY_PERCENT}% of the machine's {} shared by {shards} shards (at most {} each), \
         rounded down to MiB;",
        format_bytes(machine.memory_bytes),
        format_bytes(SHARD_MEMORY_BYTES_MAX)
    ));
    line("# the rest is headroom for the page cache, the control plane and the OS.");
    line(&format!("memory_bytes = {}", plan.memory_bytes));
    line("# Shards preempt a busy process of normal priority on their CPU when they wake.");
    line(&format!("nice = {}", dev.shards.nice));
    line("# Heap each shard faults in at start: what its batch cache grows to, so that growth");
    line("# takes no page faults in requests.");
    line(&format!("prefault_bytes = {}", plan.batch_cache_bytes));
    line("");
    line("[io]");
    line(&format!(
        "# {}: glommio registers it with {IO_RINGS_PER_SHARD} io_uring rings per shard, so \
         {IO_RINGS_PER_SHARD} x {shards} shards x {} must fit",
        format_bytes(plan.io_memory_bytes),
        format_bytes(plan.io_memory_bytes)
    ));
    line(&format!(
        "# in {MEMLOCK_USABLE_PERCENT}% of RLIMIT_MEMLOCK ({memlock_text}); the largest power of two that \
         fits, at most {}.",
        format_bytes(IO_MEMORY_BYTES_TARGET)
    ));
    line(&format!("io_memory_bytes = {}", plan.io_memory_bytes));
    line(&format!("ring_depth = {}", dev.io.ring_depth));
    line(&format!("write_chunk_bytes = {}", dev.io.write_chunk_bytes));
    line(&format!("write_depth = {}", dev.io.write_depth));
    line(&format!("read_chunk_bytes = {}", dev.io.read_chunk_bytes));
    line("");
    line("# Measured by `ferrolog tune` on the data directory (informational; logged at start).");
    line("[io.device]");
    line(&format!(
        "seq_write_bytes_per_s = {}",
        measured.seq_write_bytes_per_s
    ));
    line(&format!("write_4k_p50_us = {}", measured.write_4k.p50_us));
    line(&format!("write_4k_p99_us = {}", measured.write_4k.p99_us));
    line(&format!("fdatasync_4k_p50_us = {}", measured.fdatasync_4k.p50_us));
    line(&format!("fdatasync_4k_p99_us = {}", measured.fdatasync_4k.p99_us));
    line("");
    line("[network]");
    if plan.control_cpus.is_some() {
        line(&format!(
            "# Shard cores are dedicated (the control plane has its own), so an idle shard spins {} us",
            plan.spin_before_park_us
        ));
        line("# before parking; set 0 if other work shares these cores.");
    } else {
        line("# Shards share their cores with everything else here: park at once, never spin.");
    }
    line(&format!("spin_before_park_us = {}", plan.spin_before_park_us));
    line("# SO_BUSY_POLL helps only on a NIC with busy-poll support (and net.core.busy_read);");
    line("# tune cannot tell, so it stays off.");
    line("busy_poll_us = 0");
    line(&format!("listen_backlog = {}", dev.network.listen_backlog));
    line("# Requests of one connection handled at once, answered in order.");
    line(&format!("pipeline_depth = {}", dev.network.pipeline_depth));
    line("# A connection whose requests name only another shard's partitions moves there.");
    line(&format!("move_connections = {}", dev.network.move_connections));
    line("");
    line("[storage]");
    line(&format!("segment_bytes = {}", dev.storage.segment_bytes));
    line(&format!("segment_ms = {}", dev.storage.segment_ms));
    line(&format!(
        "index_interval_bytes = {}",
        dev.storage.index_interval_bytes
    ));
    line("# Acknowledge appends once on stable storage.");
    line("durability = \"fsync\"");
    line(&format!("batch_cache_bytes = {}", plan.batch_cache_bytes));
    line("retention_bytes = -1");
    line(&format!(
        "retention_ms = {}",
        dev.storage
            .retention_ms
            .map_or(-1, |ms| i64::try_from(ms).unwrap_or(i64::MAX))
    ));
    line(&format!(
        "# Group commit: the median 4 KiB write+fdatasync took {} us. A flush that waits W us lets",
        measured.fdatasync_4k.p50_us
    ));
    line("# appends arriving meanwhile share its sync, at up to W us of extra latency each, so W");
    line(&format!(
        "# is 1/{GROUP_COMMIT_SYNC_FRACTION} of the median sync (in 10 us steps), and 0 when the sync takes \
         under {GROUP_COMMIT_SYNC_P50_MIN_US} us"
    ));
    line("# (waiting would cost more than the sync it saves).");
    line(&format!(
        "group_commit_window_us = {}",
        plan.group_commit_window_us
    ));
    line("# \"direct\" durability only: fdatasync the active segment in the background every this");
    line("# many bytes written, so no single sync stalls the device for long; 0 = only at rolls.");
    line(&format!("direct_sync_bytes = {}", dev.storage.direct_sync_bytes));
    out
}

/// "2026-11-22T05:53:05Z" for `time` (UTC, no time-zone database needed).
fn utc_timestamp(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rest = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's days_from_civil, inverted).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown host".to_owned())
}

/// RLIMIT_MEMLOCK's soft limit in bytes, or `None` when unlimited.
fn memlock_limit_bytes() -> io::Result<Option<u64>> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: limit is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur))
}

/// Bytes available to an unprivileged user on the file system of `dir`.
fn free_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: statvfs is plain data, for which all zeroes is a valid value.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: path is NUL-terminated and stat is a valid, writable statvfs.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::useless_conversion)] // The field types differ between targets.
    Ok(u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize)))
}

/// Writes `text` to a temporary file beside `path`, syncs it and renames it over `path`, so a
/// crash never leaves half a profile.
fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut file = File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// "256MiB", "8 MiB", "64KiB", "1GiB", "4096", "4096B" (K/M/G accepted for KiB/MiB/GiB).
fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 256MiB)"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => KIB,
        "m" | "mib" => MIB,
        "g" | "gib" => GIB,
        other => return Err(format!("{other:?} is not a size unit (B, KiB, MiB, GiB)")),
    };
    let bytes = number
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))?;
    if !(SEQ_BYTES_MIN..=SEQ_BYTES_MAX).contains(&bytes) {
        return Err(format!(
            "{text:?} must be between {} and {}",
            format_bytes(SEQ_BYTES_MIN),
            format_bytes(SEQ_BYTES_MAX)
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolog_hw_profiles::{Core, NumaNode};

    /// `cores` cores of `threads` hardware threads each (Linux numbering: sibling threads are
    /// `core` and `core + cores`), one NUMA node.
    fn machine(cores: usize, threads: usize, memory_bytes: u64) -> Machine {
        let cpus: Vec<usize> = (0..cores * threads).collect();
        Machine {
            cores: (0..cores)
                .map(|core| Core {
                    cpus: (0..threads).map(|t| core + t * cores).collect(),
                })
                .collect(),
            numa_nodes: vec![NumaNode {
                os_index: 0,
                cpus: cpus.clone(),
                memory_bytes,
            }],
            caches: Vec::new(),
            cpus,
            memory_bytes,
        }
    }

    fn measured(sync_p50_us: u64) -> Measurements {
        Measurements {
            seq_write_bytes_per_s: 500 * MIB,
            write_4k: Percentiles {
                p50_us: 30,
                p99_us: 90,
            },
            fdatasync_4k: Percentiles {
                p50_us: sync_p50_us,
                p99_us: sync_p50_us * 3,
            },
        }
    }

    const EIGHT_MIB: Option<u64> = Some(8 * MIB);

    #[test]
    fn small_machines_run_shards_on_every_cpu() {
        let vm = machine(2, 1, 24 * GIB);
        let plan = plan_for(&vm, EIGHT_MIB, &measured(1000)).expect("plan");
        assert_eq!(plan.shard_cpus, vec![0, 1]);
        assert_eq!(plan.control_cpus, None);
        assert_eq!(plan.spin_before_park_us, 0);
        // 8 MiB x 75% / (3 rings x 2 shards) = 1 MiB.
        assert_eq!(plan.io_memory_bytes, MIB);
        // 24 GiB x 60% / 2 shards, in whole MiB.
        assert_eq!(plan.memory_bytes, 24 * GIB * 60 / 100 / 2 / MIB * MIB);
        assert_eq!(plan.batch_cache_bytes, 64 * MIB);
        // 1000 us / 4 = 250 us.
        assert_eq!(plan.group_commit_window_us, 250);
    }

    #[test]
    fn four_or_more_cores_give_the_first_core_to_the_control_plane() {
        let smt = machine(4, 2, 64 * GIB);
        let plan = plan_for(&smt, None, &measured(50)).expect("plan");
        assert_eq!(plan.control_cpus, Some(vec![0, 4]));
        assert_eq!(plan.shard_cpus, vec![1, 2, 3, 5, 6, 7]);
        assert_eq!(plan.spin_before_park_us, SPIN_BEFORE_PARK_US_DEDICATED);
        assert_eq!(plan.io_memory_bytes, IO_MEMORY_BYTES_TARGET, "unlimited memlock");
        assert_eq!(plan.group_commit_window_us, 0, "a 50 us sync gets no window");

        let big = machine(8, 1, 1024 * GIB);
        let plan = plan_for(&big, None, &measured(1_000_000)).expect("plan");
        assert_eq!(plan.memory_bytes, SHARD_MEMORY_BYTES_MAX, "capped");
        assert_eq!(plan.group_commit_window_us, GROUP_COMMIT_WINDOW_US_MAX, "capped");
    }

    #[test]
    fn io_memory_fits_rlimit_memlock_or_tune_says_to_raise_it() {
        let eight = machine(8, 1, 64 * GIB);
        // 7 shards: 8 MiB x 75% / 21 = 292 KiB -> 256 KiB.
        let plan_8 = plan_for(&eight, EIGHT_MIB, &measured(100)).expect("plan");
        assert_eq!(plan_8.io_memory_bytes, 256 * KIB);
        assert!(IO_RINGS_PER_SHARD * 7 * plan_8.io_memory_bytes <= 8 * MIB);

        let err = plan_for(&eight, Some(MIB), &measured(100)).expect_err("1 MiB memlock");
        assert!(err.starts_with("RLIMIT_MEMLOCK is 1048576 (1 MiB)"), "{err}");
        assert!(err.contains("ulimit -l"), "{err}");
    }

    #[test]
    fn a_small_memory_budget_shrinks_the_batch_cache() {
        let tiny = machine(2, 1, 256 * MIB);
        let plan = plan_for(&tiny, EIGHT_MIB, &measured(100)).expect("plan");
        assert_eq!(plan.memory_bytes, 76 * MIB);
        assert_eq!(plan.batch_cache_bytes, 37 * MIB);
        assert!(plan.batch_cache_bytes + plan.io_memory_bytes <= plan.memory_bytes);
    }

    #[test]
    fn rendered_profiles_parse_and_validate_on_their_machine() {
        for (m, memlock, sync) in [
            (machine(2, 1, 24 * GIB), EIGHT_MIB, 1500),
            (machine(4, 2, 64 * GIB), None, 30),
            (machine(8, 1, 256 * MIB * 8), EIGHT_MIB, 200),
            // 48 MiB per shard: less than the default shards.prefault_bytes.
            (machine(2, 1, 160 * MIB), EIGHT_MIB, 200),
        ] {
            let measured = measured(sync);
            let plan = plan_for(&m, memlock, &measured).expect("plan");
            let text = render(&RenderInput {
                machine: &m,
                plan: &plan,
                measured: &measured,
                memlock,
                data_dir: Path::new("/var/lib/ferrolog"),
                host: "node-1",
                generated_at: UNIX_EPOCH + Duration::from_secs(1_795_000_000),
                irqs: &[],
            });
            let profile = Profile::from_toml_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            profile.validate_for(&m).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert!(text.starts_with("# ferrolog hardware profile, generated by `ferrolog tune`."));
            assert!(text.contains("# Generated: 2026-11-18T11:06:40Z"), "{text}");
            assert!(text.contains("# Host: node-1"), "{text}");
            let device = profile.io.device.expect("[io.device]");
            assert_eq!(device.fdatasync_4k_p50_us, Some(sync));
            assert_eq!(device.seq_write_bytes_per_s, Some(500 * MIB));
            assert_eq!(profile.shards.memory_bytes, plan.memory_bytes);
            assert_eq!(profile.shards.prefault_bytes, Some(plan.batch_cache_bytes));
            assert_eq!(
                profile.storage.group_commit_window_us,
                plan.group_commit_window_us
            );
            assert_eq!(
                profile.shards.control_cpuset,
                plan.control_cpus.as_deref().map(format_cpuset)
            );
            assert_eq!(
                profile.shards.irq_cpuset,
                plan.control_cpus.as_deref().map(format_cpuset)
            );
        }
    }

    #[test]
    fn timestamps_are_utc_civil_dates() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let at = |secs| utc_timestamp(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(at(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("256MiB"), Ok(256 * MIB));
        assert_eq!(parse_size("8 MiB"), Ok(8 * MIB));
        assert_eq!(parse_size("1g"), Ok(GIB));
        assert_eq!(parse_size("2048KiB"), Ok(2 * MIB));
        assert_eq!(parse_size("1048576"), Ok(MIB));
        for bad in ["", "MiB", "12 parsecs", "1KiB", "100GiB", "99999999999999999999G"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }
}
