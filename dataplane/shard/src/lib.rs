//! The shard-per-core runtime.
//!
//! A node runs one glommio executor ("shard") per CPU of its cpuset, each
//! pinned to its CPU. State lives on exactly one shard and is only touched by
//! that shard's tasks; other shards reach it with [`Smp::submit_to`], which
//! ships a `Send` closure over a bounded single-producer channel to the owner,
//! runs the future it builds there, and sends the result back over the
//! channel of the opposite direction. This is Seastar's `submit_to` on
//! glommio's cross-executor channels.
//!
//! Nothing here wakes a task of one executor from another thread: glommio's
//! shared channels notify through the peer's eventfd, and each reply is
//! handed to its caller by the caller's own shard. (An earlier version sent
//! replies over `futures` oneshots, i.e. cross-thread wakers; a broker under
//! load died once with a heap double free, and glommio 0.9's foreign-waker
//! drop path is the suspect. This design avoids that path entirely.)
//!
//! Start-up contract: calls from other shards are not run before the shard's
//! `main` future has been polled once, so state that `main` installs before
//! its first await is always there for them.
//!
//! Concurrency contract: an [`Smp`] handle is per shard (`Rc`, not `Send`).
//! Closures and results cross threads and must be `Send`; the futures they
//! build run on the owner shard only and need not be. Calls from one shard to
//! another are started in the order they are made (one FIFO channel per pair
//! of shards), which the Kafka layer relies on to keep a connection's appends
//! to one partition in order.

use ferrolog_model::ShardId;
use futures_lite::StreamExt;
use glommio::channels::shared_channel::{self, ConnectedSender, SharedReceiver, SharedSender};
use glommio::{LocalExecutorBuilder, Placement};
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;
use tracing::warn;

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

/// One shard's handle on the runtime.
pub struct Smp {
    id: ShardId,
    nr_shards: usize,
    /// Indexed by target shard; `None` for this shard. Filled once at start.
    peers: RefCell<Vec<Option<Rc<ConnectedSender<Msg>>>>>,
    next_call: Cell<u64>,
    /// Calls this shard made and awaits, by id, with the shard they went to.
    /// The sender ends are local: a reply is handed over on this thread.
    pending: RefCell<HashMap<u64, (ShardId, futures_channel::oneshot::Sender<Value>)>>,
    /// Calls sent to other shards (cross-shard hops), since start.
    calls_sent: Cell<u64>,
    /// Calls from other shards run here, since start.
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
    pub fn shard_id(&self) -> ShardId {
        self.id
    }

    pub fn nr_shards(&self) -> usize {
        self.nr_shards
    }

    pub fn shards(&self) -> impl Iterator<Item = ShardId> {
        (0..self.nr_shards as u32).map(ShardId)
    }

    /// Cross-shard calls this shard has sent and served since it started.
    pub fn hop_counts(&self) -> HopCounts {
        HopCounts {
            sent: self.calls_sent.get(),
            served: self.calls_served.get(),
        }
    }

    /// Runs `f` on `shard` and returns what its future resolves to. On this
    /// shard the future runs inline, without a channel hop.
    pub async fn submit_to<R, F, Fut>(&self, shard: ShardId, f: F) -> Result<R, ShardError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
        R: Send + 'static,
    {
        if shard == self.id {
            return Ok(f().await);
        }
        let sender = match self.peers.borrow().get(shard.0 as usize) {
            Some(Some(s)) => s.clone(),
            _ => return Err(ShardError::NoSuchShard(shard, self.nr_shards)),
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

    /// `from` closed its channel: its answers will never come.
    fn fail_calls_to(&self, from: ShardId) {
        self.pending.borrow_mut().retain(|_, (to, _)| *to != from);
    }
}

/// Starts one pinned executor per CPU, connects every pair of shards, runs
/// `main(smp)` on each and waits for all of them. Returns each shard's result
/// in shard order.
pub fn run<F, Fut>(config: RuntimeConfig, main: F) -> Result<Vec<Result<(), String>>, ShardError>
where
    F: Fn(Rc<Smp>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<(), String>> + 'static,
{
    let n = config.cpus.len();
    assert!(n > 0, "a node needs at least one shard");
    // channels[from][to]: the sending end lives on `from`, the receiving end on `to`.
    let mut senders: Vec<Vec<Option<SharedSender<Msg>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut receivers: Vec<Vec<Option<SharedReceiver<Msg>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    for from in 0..n {
        for to in 0..n {
            if from != to {
                let (tx, rx) = shared_channel::new_bounded(config.channel_capacity);
                senders[from][to] = Some(tx);
                receivers[to][from] = Some(rx);
            }
        }
    }

    let mut handles = Vec::with_capacity(n);
    for (shard, (&cpu, (tx_row, rx_row))) in config
        .cpus
        .iter()
        .zip(senders.into_iter().zip(receivers))
        .enumerate()
    {
        let main = main.clone();
        let id = ShardId(shard as u32);
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("shard-{shard}"))
            .io_memory(config.io_memory_bytes)
            .ring_depth(config.ring_depth)
            .spin_before_park(config.spin_before_park)
            .spawn(move || async move {
                // Each end of a channel waits for the other to connect: start
                // the receiving loops first (as tasks), then connect senders,
                // so no pair of shards waits on each other. The loops run no
                // work until `main` has been polled once, so `main` can set up
                // shard-local state before any other shard's call touches it.
                let smp = Rc::new(Smp {
                    id,
                    nr_shards: n,
                    peers: RefCell::new(Vec::new()),
                    next_call: Cell::new(0),
                    pending: RefCell::new(HashMap::new()),
                    calls_sent: Cell::new(0),
                    calls_served: Cell::new(0),
                });
                let mut gates = Vec::new();
                for (from, rx) in rx_row.into_iter().enumerate() {
                    if let Some(rx) = rx {
                        let (open, gate) = futures_channel::oneshot::channel::<()>();
                        gates.push(open);
                        let smp = smp.clone();
                        glommio::spawn_local(async move {
                            let mut rx = rx.connect().await;
                            if gate.await.is_err() {
                                return;
                            }
                            while let Some(msg) = rx.next().await {
                                match msg {
                                    Msg::Call { id, work } => smp.serve_call(from, id, work),
                                    Msg::Reply { id, value } => smp.deliver_reply(id, value),
                                }
                            }
                            tracing::debug!(from, "peer channel closed");
                            smp.fail_calls_to(ShardId(from as u32));
                        })
                        .detach();
                    }
                }
                let mut peers = Vec::with_capacity(n);
                for tx in tx_row {
                    peers.push(match tx {
                        Some(tx) => Some(Rc::new(tx.connect().await)),
                        None => None,
                    });
                }
                *smp.peers.borrow_mut() = peers;
                let mut main = std::pin::pin!(main(smp));
                // Poll `main` once before any queued call from another shard
                // can run: its synchronous prologue comes first.
                let first = futures_lite::future::poll_once(main.as_mut()).await;
                for open in gates {
                    let _ = open.send(());
                }
                match first {
                    Some(r) => r,
                    None => main.await,
                }
            });
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
    let mut results = Vec::with_capacity(n);
    for (shard, h) in handles.into_iter().enumerate() {
        results.push(match h.join() {
            Ok(r) => r,
            Err(e) => {
                warn!(shard, "shard executor failed: {e}");
                Err(format!("shard {shard} executor failed: {e}"))
            }
        });
    }
    Ok(results)
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
            let results = run(config(4), |smp: Rc<Smp>| async move {
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
                // Stay up until the others are done calling us.
                glommio::timer::sleep(Duration::from_millis(50)).await;
                Ok(())
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
