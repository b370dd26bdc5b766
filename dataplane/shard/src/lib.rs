//! The shard-per-core runtime.
//!
//! A node runs one glommio executor ("shard") per CPU of its cpuset, each
//! pinned to its CPU. State lives on exactly one shard and is only touched by
//! that shard's tasks; other shards reach it with [`Smp::submit_to`], which
//! ships a `Send` closure over a bounded single-producer channel to the owner,
//! runs the future it builds there, and sends the result back over the
//! channel of the opposite direction. This is Seastar's `submit_to` on
//! glommio's cross-executor channels. [`Smp::invoke_on_all`] runs one closure
//! on every data shard at once (all calls started before any is awaited) and
//! [`Smp::map_reduce`] folds their results, in shard order.
//!
//! The control executor: [`run_with_control`] starts one more executor, for
//! work that is not on the data path (the control plane, admin requests,
//! housekeeping). It joins the same mesh of channels with the [`ShardId`]
//! `nr_shards` (one past the last data shard), so it can call any data shard
//! and any data shard can call it. It is not a data shard: on every executor
//! [`Smp::nr_shards`], [`Smp::shards`] and [`Smp::invoke_on_all`] count only
//! data shards, and [`Smp::control_shard`] names the control executor. It is
//! pinned to its own CPU set (or unbound), takes little I/O memory and parks
//! as soon as it is idle instead of spinning. [`run`] is the same runtime
//! without a control executor.
//!
//! Blocking work: every executor has a pool of [`BLOCKING_THREADS`] threads
//! for the few system calls io_uring cannot do for us cheaply (removing a
//! directory tree, unlinking, fsync of a small file); [`blocking`] runs a
//! closure there and wakes the caller when it is done. The pools may run on
//! any CPU of the node (data shards' and control's), so a slow `rmdir -r`
//! never preempts the reactor of the shard that asked for it.
//!
//! Nothing here wakes a task of one executor from another thread: glommio's
//! shared channels notify through the peer's eventfd, and each reply is
//! handed to its caller by the caller's own shard. (An earlier version sent
//! replies over `futures` oneshots, i.e. cross-thread wakers; a broker under
//! load died once with a heap double free, and glommio 0.9's foreign-waker
//! drop path is the suspect. This design avoids that path entirely.)
//!
//! Start-up contract: calls from other executors are not run before the
//! executor's `main` future has been polled once, so state that `main`
//! installs before its first await is always there for them. This holds for
//! the control executor's `main` too.
//!
//! Shutdown contract: the runtime never stops an executor; each one ends when
//! its `main` returns, and [`run`] / [`run_with_control`] return when all have
//! ended. An executor that ends first closes its channels before its thread
//! goes away: calls to it that were queued or in flight, and later calls,
//! fail with [`ShardError::Gone`], and no executor waits on another one's end.
//! So the control executor may end before or after the data shards.
//!
//! Concurrency contract: an [`Smp`] handle is per executor (`Rc`, not `Send`).
//! Closures and results cross threads and must be `Send`; the futures they
//! build run on the owner executor only and need not be. Calls from one
//! executor to another are started in the order they are made (one FIFO
//! channel per ordered pair), which the Kafka layer relies on to keep a
//! connection's appends to one partition in order. Calls of one
//! [`Smp::invoke_on_all`] to different shards are unordered between them.

pub mod memory;
pub mod metrics;

use ferrolog_model::ShardId;
use futures_lite::StreamExt;
use glommio::channels::shared_channel::{self, ConnectedSender, SharedReceiver, SharedSender};
use glommio::{CpuSet, ExecutorJoinHandle, LocalExecutorBuilder, Placement, PoolPlacement};
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::time::Duration;
use tracing::warn;

/// Threads in each executor's blocking pool. One is enough: the pool serves
/// rare, short system calls (unlink, rmdir, fsync of a small file), not
/// compute; more threads would only cost memory and scheduler noise.
pub const BLOCKING_THREADS: usize = 1;

/// The control executor's DMA buffer memory. glommio registers every
/// executor's I/O memory with io_uring, which counts it against
/// RLIMIT_MEMLOCK (8 MiB by default) together with the data shards'. The
/// control executor does little I/O, so it takes glommio's floor (64 KiB),
/// never more than a data shard's [`RuntimeConfig::io_memory_bytes`].
pub const CONTROL_IO_MEMORY_BYTES_MAX: usize = 64 << 10;

/// How often every executor's park guard wakes it (see [`park_guard`]):
/// the longest an executor can sleep with runnable tasks.
pub const PARK_GUARD_INTERVAL: Duration = Duration::from_millis(20);

/// A call's result on its way back, type-erased.
type Value = Box<dyn Any + Send>;
/// Work shipped to another shard: builds the future that runs there.
type Work = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Value>>> + Send>;

/// What travels from one shard to another.
enum Msg {
    Call { id: u64, work: Work },
    Reply { id: u64, value: Value },
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum ShardError {
    #[error("shard {0} is gone (shutting down)")]
    Gone(ShardId),
    #[error("shard {0} does not exist (this node has {1})")]
    NoSuchShard(ShardId, usize),
    #[error("cannot start shard {shard} on CPU {cpu}: {reason}")]
    Start {
        shard: ShardId,
        cpu: usize,
        reason: String,
    },
    /// `cpus` is [`ControlConfig::cpus`].
    #[error("cannot start the control executor on CPUs {cpus:?}: {reason}")]
    StartControl {
        cpus: Option<Vec<usize>>,
        reason: String,
    },
}

/// How the shards are built.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// One shard per entry, pinned to that CPU.
    pub cpus: Vec<usize>,
    /// DMA buffer memory per shard (counts against RLIMIT_MEMLOCK).
    pub io_memory_bytes: usize,
    /// io_uring submission queue depth per ring.
    pub ring_depth: usize,
    /// How long an idle shard spins before parking in the kernel.
    pub spin_before_park: Duration,
    /// Calls queued from one shard to another before `submit_to` waits.
    pub channel_capacity: usize,
}

/// How the control executor of [`run_with_control`] is built. Its ring depth
/// and channel capacity are the data shards'; its I/O memory is at most
/// [`CONTROL_IO_MEMORY_BYTES_MAX`]; it never spins before parking.
#[derive(Clone, Debug, Default)]
pub struct ControlConfig {
    /// The CPUs the control executor may run on (it is fenced to the set, not
    /// pinned to one of them); `None`: unbound, wherever the kernel puts it.
    pub cpus: Option<Vec<usize>>,
}

/// What [`run_with_control`] returns once every executor has ended.
#[derive(Debug)]
pub struct RunOutcome {
    /// Each data shard's result, in shard order.
    pub shards: Vec<Result<(), String>>,
    /// The control executor's result.
    pub control: Result<(), String>,
}

/// One executor's handle on the runtime.
pub struct Smp {
    id: ShardId,
    /// Data shards; they have the ids `0..nr_shards`.
    nr_shards: usize,
    /// `Some(ShardId(nr_shards))` when a control executor runs.
    control: Option<ShardId>,
    /// This handle, so that `&self` methods can spawn tasks that own it.
    this: Weak<Smp>,
    /// Indexed by target executor; `None` for this executor, and for all once
    /// this executor is stopping. Filled once at start.
    peers: RefCell<Vec<Option<Rc<ConnectedSender<Msg>>>>>,
    next_call: Cell<u64>,
    /// Calls this executor made and awaits, by id, with the executor they went
    /// to. The sender ends are local: a reply is handed over on this thread.
    pending: RefCell<HashMap<u64, (ShardId, futures_channel::oneshot::Sender<Value>)>>,
    /// Calls sent to other executors (cross-shard hops), since start.
    calls_sent: Cell<u64>,
    /// Calls from other executors run here, since start.
    calls_served: Cell<u64>,
}

/// Counters of one shard's cross-shard traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HopCounts {
    /// Calls this shard sent to another shard.
    pub sent: u64,
    /// Calls from other shards this shard ran.
    pub served: u64,
}

impl Smp {
    /// This executor's id: `0..nr_shards` for a data shard, `nr_shards` for
    /// the control executor.
    pub fn shard_id(&self) -> ShardId {
        self.id
    }

    /// The number of data shards (the control executor is not one).
    pub fn nr_shards(&self) -> usize {
        self.nr_shards
    }

    /// The data shards, in order (never the control executor).
    pub fn shards(&self) -> impl Iterator<Item = ShardId> {
        (0..self.nr_shards as u32).map(ShardId)
    }

    /// The control executor's id, when one runs.
    pub fn control_shard(&self) -> Option<ShardId> {
        self.control
    }

    /// Whether this handle is the control executor's.
    pub fn is_control(&self) -> bool {
        self.control == Some(self.id)
    }

    /// Executors in the mesh: the data shards and the control executor.
    fn nr_executors(&self) -> usize {
        self.nr_shards + usize::from(self.control.is_some())
    }

    /// Cross-shard calls this shard has sent and served since it started.
    pub fn hop_counts(&self) -> HopCounts {
        HopCounts {
            sent: self.calls_sent.get(),
            served: self.calls_served.get(),
        }
    }

    /// Runs `f` on `shard` (a data shard or the control executor) and returns
    /// what its future resolves to. On this executor the future runs inline,
    /// without a channel hop.
    pub async fn submit_to<R, F, Fut>(&self, shard: ShardId, f: F) -> Result<R, ShardError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
        R: Send + 'static,
    {
        if shard == self.id {
            return Ok(f().await);
        }
        if shard.0 as usize >= self.nr_executors() {
            return Err(ShardError::NoSuchShard(shard, self.nr_shards));
        }
        let sender = match self.peers.borrow().get(shard.0 as usize) {
            Some(Some(s)) => s.clone(),
            // The target stopped, or this executor is stopping.
            _ => return Err(ShardError::Gone(shard)),
        };
        let id = self.next_call.get();
        self.next_call.set(id + 1);
        self.calls_sent.set(self.calls_sent.get() + 1);
        let (tx, rx) = futures_channel::oneshot::channel();
        self.pending.borrow_mut().insert(id, (shard, tx));
        let work: Work = Box::new(move || Box::pin(async move { Box::new(f().await) as Value }));
        if sender.send(Msg::Call { id, work }).await.is_err() {
            self.pending.borrow_mut().remove(&id);
            return Err(ShardError::Gone(shard));
        }
        let value = rx.await.map_err(|_| ShardError::Gone(shard))?;
        Ok(*value
            .downcast::<R>()
            .expect("a reply carries the type its call returns"))
    }

    /// Runs `f` on every data shard (this one too, inline, if it is one; never
    /// on the control executor) and returns their results in shard order.
    /// Every call is started, each in its own task, before any is awaited, so
    /// the shards work in parallel and a full channel to one shard holds back
    /// no other. Dropping the returned future cancels the calls not yet sent.
    pub async fn invoke_on_all<R, F, Fut>(&self, f: F) -> Vec<Result<R, ShardError>>
    where
        F: Fn() -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = R> + 'static,
        R: Send + 'static,
    {
        let me = self
            .this
            .upgrade()
            .expect("an Smp is alive while one of its methods runs");
        let tasks: Vec<_> = self
            .shards()
            .map(|shard| {
                let smp = me.clone();
                let f = f.clone();
                glommio::spawn_local(async move { smp.submit_to(shard, f).await })
            })
            .collect();
        let mut results = Vec::with_capacity(tasks.len());
        for task in tasks {
            results.push(task.await);
        }
        results
    }

    /// Runs `f` on every data shard like [`Smp::invoke_on_all`] and folds the
    /// results into `init` with `reduce`, in shard order. Error rule: the
    /// first failed call in shard order is returned and nothing else is; the
    /// other shards' calls still ran to completion, since all were started
    /// before any was awaited.
    pub async fn map_reduce<R, A, F, Fut>(
        &self,
        f: F,
        init: A,
        mut reduce: impl FnMut(A, R) -> A,
    ) -> Result<A, ShardError>
    where
        F: Fn() -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = R> + 'static,
        R: Send + 'static,
    {
        let mut acc = init;
        for result in self.invoke_on_all(f).await {
            acc = reduce(acc, result?);
        }
        Ok(acc)
    }

    /// Runs a call from `from` and sends its result back.
    fn serve_call(self: &Rc<Self>, from: usize, id: u64, work: Work) {
        self.calls_served.set(self.calls_served.get() + 1);
        let smp = self.clone();
        glommio::spawn_local(async move {
            let value = work().await;
            let sender = smp.peers.borrow().get(from).cloned().flatten();
            if let Some(sender) = sender {
                // The caller's shard is gone if this fails: nobody waits.
                let _ = sender.send(Msg::Reply { id, value }).await;
            }
        })
        .detach();
    }

    fn deliver_reply(&self, id: u64, value: Value) {
        if let Some((_, tx)) = self.pending.borrow_mut().remove(&id) {
            // The caller may have given up (its connection closed).
            let _ = tx.send(value);
        }
    }

    /// `from` closed its channel to here, which it does only when it stops:
    /// its answers will never come, and later calls to it fail at once. (A
    /// call sent after this point could otherwise still slip into `from`'s
    /// receiving channel, which it closes a little later, and wait forever.)
    /// There is no await between a call's check of `peers` and its entry in
    /// `pending`, so every call is either refused here or failed here.
    fn peer_gone(&self, from: ShardId) {
        if let Some(sender) = self
            .peers
            .borrow_mut()
            .get_mut(from.0 as usize)
            .and_then(Option::take)
        {
            sender.close();
        }
        self.pending.borrow_mut().retain(|_, (to, _)| *to != from);
    }

    /// Closes every channel this executor sends on, so that the peers see it
    /// gone now rather than when (or if) its tasks are dropped; later calls
    /// from here fail with [`ShardError::Gone`].
    fn close_peers(&self) {
        for peer in self.peers.borrow_mut().iter_mut() {
            if let Some(sender) = peer.take() {
                sender.close();
            }
        }
    }
}

/// The lowest CPU this thread may run on (its affinity mask), or 0 if the
/// mask cannot be read: where a one-shard node for tests and tools goes.
pub fn first_allowed_cpu() -> usize {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most
    // size_of::<cpu_set_t>() bytes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return 0;
        }
        (0..libc::CPU_SETSIZE as usize)
            .find(|&cpu| libc::CPU_ISSET(cpu, &set))
            .unwrap_or(0)
    }
}

/// Runs `f` on this executor's blocking thread pool and returns its result;
/// the reactor keeps running other tasks meanwhile. For blocking system calls
/// that io_uring does not cover well (removing a directory tree, unlinking,
/// fsync of a small file), not for compute. A panic in `f` is resumed here,
/// on the caller's executor, and the pool thread survives it.
///
/// Must be called on an executor of this runtime (panics otherwise).
pub async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    // glommio's pool thread does not catch panics: one would kill the thread
    // and leave this and every later call waiting forever.
    let result = glommio::executor()
        .spawn_blocking(move || std::panic::catch_unwind(AssertUnwindSafe(f)))
        .await;
    match result {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Starts one pinned executor per CPU, connects every pair of shards, runs
/// `main(smp)` on each and waits for all of them. Returns each shard's result
/// in shard order. There is no control executor:
/// [`Smp::control_shard`] is `None`.
pub fn run<F, Fut>(config: RuntimeConfig, main: F) -> Result<Vec<Result<(), String>>, ShardError>
where
    F: Fn(Rc<Smp>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<(), String>> + 'static,
{
    let pool_cpus = node_cpus(&config, None)?;
    let wirings = wire(&config, false);
    let handles = spawn_shards(&config, &pool_cpus, wirings, main)?;
    Ok(join_shards(handles))
}

/// Like [`run`], plus a control executor that runs `control_main(smp)` with
/// the [`ShardId`] `nr_shards`, connected to every data shard in both
/// directions. Returns when every executor has ended (see the crate doc for
/// the shutdown contract).
pub fn run_with_control<F, Fut, C, CFut>(
    config: RuntimeConfig,
    control: ControlConfig,
    main: F,
    control_main: C,
) -> Result<RunOutcome, ShardError>
where
    F: Fn(Rc<Smp>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<(), String>> + 'static,
    C: FnOnce(Rc<Smp>) -> CFut + Send + 'static,
    CFut: Future<Output = Result<(), String>> + 'static,
{
    let pool_cpus = node_cpus(&config, Some(&control))?;
    let placement = match &control.cpus {
        None => Placement::Unbound,
        Some(cpus) => Placement::Fenced(pool_cpus.clone().filter(|l| cpus.contains(&l.cpu))),
    };
    let mut wirings = wire(&config, true);
    let control_wiring = wirings.pop().expect("the control executor is wired last");
    let shards = spawn_shards(&config, &pool_cpus, wirings, main)?;
    let control_handle = LocalExecutorBuilder::new(placement)
        .name("control")
        .io_memory(config.io_memory_bytes.min(CONTROL_IO_MEMORY_BYTES_MAX))
        .ring_depth(config.ring_depth)
        .blocking_thread_pool_placement(PoolPlacement::Fenced(BLOCKING_THREADS, pool_cpus))
        .spawn(move || serve(control_wiring, control_main))
        .map_err(|e| ShardError::StartControl {
            cpus: control.cpus.clone(),
            reason: e.to_string(),
        })?;
    let shards = join_shards(shards);
    let control = match control_handle.join() {
        Ok(r) => r,
        Err(e) => {
            warn!("control executor failed: {e}");
            Err(format!("control executor failed: {e}"))
        }
    };
    Ok(RunOutcome { shards, control })
}

/// The CPUs of the node (the data shards' and the control executor's): the
/// blocking pools may run on any of them, never outside them. Checks that
/// every CPU named is online.
fn node_cpus(config: &RuntimeConfig, control: Option<&ControlConfig>) -> Result<CpuSet, ShardError> {
    assert!(!config.cpus.is_empty(), "a node needs at least one shard");
    let online = CpuSet::online().map_err(|e| ShardError::Start {
        shard: ShardId(0),
        cpu: config.cpus[0],
        reason: format!("cannot read the CPU topology: {e}"),
    })?;
    let is_online = |cpu: usize| online.iter().any(|l| l.cpu == cpu);
    for (shard, &cpu) in config.cpus.iter().enumerate() {
        if !is_online(cpu) {
            return Err(ShardError::Start {
                shard: ShardId(shard as u32),
                cpu,
                reason: "the CPU is not online".into(),
            });
        }
    }
    let control_cpus = control.and_then(|c| c.cpus.clone()).unwrap_or_default();
    if let Some(cpus) = control.and_then(|c| c.cpus.as_ref()) {
        let reason = if cpus.is_empty() {
            Some("the CPU set is empty".to_string())
        } else {
            cpus.iter()
                .find(|&&cpu| !is_online(cpu))
                .map(|cpu| format!("CPU {cpu} is not online"))
        };
        if let Some(reason) = reason {
            return Err(ShardError::StartControl {
                cpus: Some(cpus.clone()),
                reason,
            });
        }
    }
    Ok(online.filter(|l| config.cpus.contains(&l.cpu) || control_cpus.contains(&l.cpu)))
}

/// One executor's ends of the mesh. Both rows are indexed by the peer
/// executor (data shards, then the control executor), `None` at this one's
/// own index.
struct Wiring {
    id: ShardId,
    nr_shards: usize,
    control: Option<ShardId>,
    /// `senders[to]`: the channel from this executor to `to`.
    senders: Vec<Option<SharedSender<Msg>>>,
    /// `receivers[from]`: the channel from `from` to this executor.
    receivers: Vec<Option<SharedReceiver<Msg>>>,
}

/// Builds a channel for every ordered pair of executors (the data shards
/// and, with `control`, one more) and returns each executor's ends, in
/// executor order.
fn wire(config: &RuntimeConfig, control: bool) -> Vec<Wiring> {
    let nr_shards = config.cpus.len();
    let m = nr_shards + usize::from(control);
    // channels[from][to]: the sending end lives on `from`, the receiving end on `to`.
    let mut senders: Vec<Vec<Option<SharedSender<Msg>>>> =
        (0..m).map(|_| (0..m).map(|_| None).collect()).collect();
    let mut receivers: Vec<Vec<Option<SharedReceiver<Msg>>>> =
        (0..m).map(|_| (0..m).map(|_| None).collect()).collect();
    for from in 0..m {
        for to in 0..m {
            if from != to {
                let (tx, rx) = shared_channel::new_bounded(config.channel_capacity);
                senders[from][to] = Some(tx);
                receivers[to][from] = Some(rx);
            }
        }
    }
    let control = control.then_some(ShardId(nr_shards as u32));
    senders
        .into_iter()
        .zip(receivers)
        .enumerate()
        .map(|(i, (senders, receivers))| Wiring {
            id: ShardId(i as u32),
            nr_shards,
            control,
            senders,
            receivers,
        })
        .collect()
}

/// Spawns the data shards, one pinned executor per wiring.
fn spawn_shards<F, Fut>(
    config: &RuntimeConfig,
    pool_cpus: &CpuSet,
    wirings: Vec<Wiring>,
    main: F,
) -> Result<Vec<ExecutorJoinHandle<Result<(), String>>>, ShardError>
where
    F: Fn(Rc<Smp>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<(), String>> + 'static,
{
    let mut handles = Vec::with_capacity(wirings.len());
    for (wiring, &cpu) in wirings.into_iter().zip(&config.cpus) {
        let main = main.clone();
        let id = wiring.id;
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("shard-{id}"))
            .io_memory(config.io_memory_bytes)
            .ring_depth(config.ring_depth)
            .spin_before_park(config.spin_before_park)
            .blocking_thread_pool_placement(PoolPlacement::Fenced(BLOCKING_THREADS, pool_cpus.clone()))
            .spawn(move || serve(wiring, main));
        match handle {
            Ok(h) => handles.push(h),
            Err(e) => {
                return Err(ShardError::Start {
                    shard: id,
                    cpu,
                    reason: e.to_string(),
                })
            }
        }
    }
    Ok(handles)
}

fn join_shards(handles: Vec<ExecutorJoinHandle<Result<(), String>>>) -> Vec<Result<(), String>> {
    let mut results = Vec::with_capacity(handles.len());
    for (shard, h) in handles.into_iter().enumerate() {
        results.push(match h.join() {
            Ok(r) => r,
            Err(e) => {
                warn!(shard, "shard executor failed: {e}");
                Err(format!("shard {shard} executor failed: {e}"))
            }
        });
    }
    results
}

/// An executor's whole life: joins the mesh, runs `main`, then leaves the
/// mesh before the executor ends.
/// Keeps a timer armed on the executor, so that it never sleeps for good
/// while tasks are runnable.
///
/// glommio 0.9's run loop (`run_task_queues`) gives up before running
/// anything when its preemption timer has already fired, and the executor
/// then parks; the timer's completion wakes no task, so nothing counts as
/// woken and the executor sleeps in `io_uring_enter` until some other event
/// comes, with its runnable tasks unrun. It happens when the thread is off
/// the CPU for longer than the preemption interval between installing that
/// timer and the first check, i.e. on a loaded machine; at start, before any
/// other timer exists, it hung whole nodes (every executor parked in
/// `link_rings_and_sleep`, seen with gdb under load). A parked executor
/// sleeps only until its next timer, so this bounds such a stall at
/// [`PARK_GUARD_INTERVAL`], for 50 wakeups a second.
async fn park_guard() {
    loop {
        glommio::timer::sleep(PARK_GUARD_INTERVAL).await;
    }
}

async fn serve<F, Fut>(wiring: Wiring, main: F) -> Result<(), String>
where
    F: FnOnce(Rc<Smp>) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let smp = Rc::new_cyclic(|this| Smp {
        id: wiring.id,
        nr_shards: wiring.nr_shards,
        control: wiring.control,
        this: this.clone(),
        peers: RefCell::new(Vec::new()),
        next_call: Cell::new(0),
        pending: RefCell::new(HashMap::new()),
        calls_sent: Cell::new(0),
        calls_served: Cell::new(0),
    });
    // Each end of a channel waits for the other to connect: start the
    // receiving loops first (as tasks), then connect senders, so no pair of
    // executors waits on each other. The loops run no work until `main` has
    // been polled once, so `main` can set up executor-local state before any
    // other executor's call touches it.
    glommio::spawn_local(park_guard()).detach();
    let mut gates = Vec::new();
    let mut stops = Vec::new();
    let mut loops = Vec::new();
    for (from, rx) in wiring.receivers.into_iter().enumerate() {
        if let Some(rx) = rx {
            let (open, gate) = futures_channel::oneshot::channel::<()>();
            let (stop, stopped) = futures_channel::oneshot::channel::<()>();
            gates.push(open);
            stops.push(stop);
            loops.push(glommio::spawn_local(receive(
                smp.clone(),
                from,
                rx,
                gate,
                stopped,
            )));
        }
    }
    let mut peers = Vec::with_capacity(wiring.senders.len());
    for tx in wiring.senders {
        peers.push(match tx {
            Some(tx) => Some(Rc::new(tx.connect().await)),
            None => None,
        });
    }
    *smp.peers.borrow_mut() = peers;
    let mut main = std::pin::pin!(main(smp.clone()));
    // Poll `main` once before any queued call from another executor can
    // run: its synchronous prologue comes first.
    let first = futures_lite::future::poll_once(main.as_mut()).await;
    for open in gates {
        let _ = open.send(());
    }
    let result = match first {
        Some(r) => r,
        None => main.await,
    };
    // Leave the mesh while the reactor still runs, so that every peer is
    // notified now: tasks still alive here (calls being served, tasks `main`
    // spawned) are dropped with the executor, perhaps never, and must not
    // keep a channel looking open. Senders first, so callers learn at once
    // that their calls here will not be answered; then the receiving loops,
    // which drop their channels when they end.
    smp.close_peers();
    for stop in stops {
        let _ = stop.send(());
    }
    for task in loops {
        task.await;
    }
    result
}

/// Runs the calls and delivers the replies that `from` sends here, until
/// `from` closes its channel or this executor stops.
async fn receive(
    smp: Rc<Smp>,
    from: usize,
    rx: SharedReceiver<Msg>,
    gate: futures_channel::oneshot::Receiver<()>,
    mut stop: futures_channel::oneshot::Receiver<()>,
) {
    // Connecting is never abandoned half way (glommio would leave the channel
    // looking connected to the peer): it ends as soon as `from` connects or
    // drops its end, which every executor does at its start.
    let mut rx = rx.connect().await;
    if gate.await.is_ok() {
        loop {
            // The stop signal comes first: calls still queued when this
            // executor stops are dropped, and their callers get `Gone`.
            let stopped = async {
                let _ = (&mut stop).await;
                None
            };
            match futures_lite::future::or(stopped, rx.next()).await {
                Some(Msg::Call { id, work }) => smp.serve_call(from, id, work),
                Some(Msg::Reply { id, value }) => smp.deliver_reply(id, value),
                None => break,
            }
        }
    }
    tracing::debug!(from, "peer channel closed");
    smp.peer_gone(ShardId(from as u32));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        static COUNTER: Cell<u64> = const { Cell::new(0) };
    }

    fn config(shards: usize) -> RuntimeConfig {
        RuntimeConfig {
            cpus: vec![0; shards],
            io_memory_bytes: 64 << 10,
            ring_depth: 16,
            spin_before_park: Duration::ZERO,
            channel_capacity: 8,
        }
    }

    #[test]
    fn submit_to_runs_on_the_target_shard_in_order() {
        let results = run(config(3), |smp: Rc<Smp>| async move {
            let me = smp.shard_id();
            // Every shard adds (1 + its id) on every shard, 50 times, in order.
            for target in smp.shards() {
                for i in 0..50u64 {
                    let seen = smp
                        .submit_to(target, move || async move {
                            COUNTER.with(|c| {
                                c.set(c.get() + 1 + u64::from(me.0));
                                c.get()
                            })
                        })
                        .await
                        .map_err(|e| e.to_string())?;
                    if seen < i + 1 {
                        return Err(format!("counter on {target} went backwards: {seen} at step {i}"));
                    }
                }
            }
            // Give the others time to finish their calls to us, then report.
            glommio::timer::sleep(Duration::from_millis(200)).await;
            let total = COUNTER.with(|c| c.get());
            // 50 * (1 + 2 + 3) from the three shards.
            if total != 300 {
                return Err(format!("shard {me} saw total {total}, expected 300"));
            }
            // Calls to itself run inline and are no hop.
            let hops = smp.hop_counts();
            if hops
                != (HopCounts {
                    sent: 100,
                    served: 100,
                })
            {
                return Err(format!(
                    "shard {me} counted {hops:?}, expected 100 sent and served"
                ));
            }
            Ok(())
        })
        .expect("runtime starts");
        assert_eq!(results.len(), 3);
        for r in results {
            r.expect("shard ok");
        }
    }

    thread_local! {
        static READY: Cell<bool> = const { Cell::new(false) };
    }

    /// Calls from other shards never run before the target's `main` started.
    #[test]
    fn calls_wait_for_the_targets_main() {
        for _ in 0..20 {
            // Shards done calling: each stays up until all are, so no call
            // finds its target gone (however slow a loaded machine is).
            let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let results = run(config(4), move |smp: Rc<Smp>| {
                let done = done.clone();
                async move {
                    READY.with(|r| r.set(true));
                    for target in smp.shards() {
                        let ready = smp
                            .submit_to(target, || async { READY.with(|r| r.get()) })
                            .await
                            .map_err(|e| e.to_string())?;
                        if !ready {
                            return Err(format!("a call ran on {target} before its main"));
                        }
                    }
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    while done.load(std::sync::atomic::Ordering::SeqCst) < smp.nr_shards() {
                        glommio::timer::sleep(Duration::from_millis(1)).await;
                    }
                    Ok(())
                }
            })
            .expect("runtime starts");
            results.into_iter().for_each(|r| r.expect("shard ok"));
        }
    }

    #[test]
    fn unknown_shard_is_an_error() {
        let results = run(config(1), |smp: Rc<Smp>| async move {
            match smp.submit_to(ShardId(5), || async {}).await {
                Err(ShardError::NoSuchShard(ShardId(5), 1)) => Ok(()),
                other => Err(format!("expected NoSuchShard, got {other:?}")),
            }
        })
        .expect("runtime starts");
        results.into_iter().for_each(|r| r.expect("shard ok"));
    }
}
