//! The control executor, `invoke_on_all` / `map_reduce`, shutdown and the
//! blocking pool, on real executors. Every executor is on CPU 0 unless a test
//! says otherwise, so the tests run on a one-CPU machine.

use ferrolog_model::ShardId;
use ferrolog_shard::{
    blocking, run, run_with_control, ControlConfig, HopCounts, RuntimeConfig, ShardError, Smp,
};
use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a test waits for something that should take milliseconds.
const WAIT_MAX: Duration = Duration::from_secs(10);

fn config(shards: usize) -> RuntimeConfig {
    RuntimeConfig {
        cpus: vec![0; shards],
        io_memory_bytes: 64 << 10,
        ring_depth: 16,
        spin_before_park: Duration::ZERO,
        channel_capacity: 8,
    }
}

thread_local! {
    /// Set by a data shard's `main` before its first await.
    static MY_SHARD: Cell<Option<u32>> = const { Cell::new(None) };
    /// Set by the control executor's `main` before its first await.
    static CONTROL_READY: Cell<bool> = const { Cell::new(false) };
    /// Calls the data shards made to the control executor.
    static CHECKED: Cell<usize> = const { Cell::new(0) };
    /// Tells a data shard's `main` to return.
    static STOP: Cell<bool> = const { Cell::new(false) };
}

/// Waits until `cond` holds, polling every millisecond, for at most WAIT_MAX.
async fn wait_until(what: &str, cond: impl Fn() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + WAIT_MAX;
    while !cond() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// `fut`'s output, or an error if it takes longer than WAIT_MAX (a hang).
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Result<T, String> {
    let timeout = async {
        glommio::timer::sleep(WAIT_MAX).await;
        None
    };
    futures_lite::future::or(async { Some(fut.await) }, timeout)
        .await
        .ok_or_else(|| format!("{what} hung"))
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

fn all_ok(outcome: ferrolog_shard::RunOutcome) {
    for (shard, r) in outcome.shards.into_iter().enumerate() {
        r.unwrap_or_else(|e| panic!("shard {shard}: {e}"));
    }
    outcome.control.expect("control ok");
}

#[test]
fn control_executor_joins_the_mesh() {
    let outcome = run_with_control(
        config(3),
        ControlConfig { cpus: Some(vec![0]) },
        |smp: Rc<Smp>| async move {
            MY_SHARD.with(|s| s.set(Some(smp.shard_id().0)));
            let control = smp.control_shard().ok_or("no control shard")?;
            check(control == ShardId(3), || format!("control is {control}"))?;
            check(!smp.is_control(), || "a data shard is control".into())?;
            check(smp.nr_shards() == 3 && smp.shards().count() == 3, || {
                "a data shard counts the control executor".into()
            })?;
            let ready = smp
                .submit_to(control, || async { CONTROL_READY.with(Cell::get) })
                .await
                .map_err(|e| e.to_string())?;
            check(ready, || "a call ran on control before its main".into())?;
            match smp.submit_to(ShardId(4), || async {}).await {
                Err(ShardError::NoSuchShard(ShardId(4), 3)) => {}
                other => return Err(format!("expected NoSuchShard(4, 3), got {other:?}")),
            }
            smp.submit_to(control, || async { CHECKED.with(|c| c.set(c.get() + 1)) })
                .await
                .map_err(|e| e.to_string())?;
            wait_until("the control's stop", || STOP.with(Cell::get)).await
        },
        |smp: Rc<Smp>| async move {
            CONTROL_READY.with(|r| r.set(true));
            check(smp.shard_id() == ShardId(3) && smp.is_control(), || {
                format!("control has id {}", smp.shard_id())
            })?;
            check(smp.control_shard() == Some(ShardId(3)), || "control_shard".into())?;
            let shards: Vec<ShardId> = smp.shards().collect();
            check(shards == [ShardId(0), ShardId(1), ShardId(2)], || {
                format!("control sees shards {shards:?}")
            })?;
            let seen = smp
                .invoke_on_all(|| async { MY_SHARD.with(Cell::get) })
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            // Also shows each call waited for its shard's main.
            check(seen == [Some(0), Some(1), Some(2)], || {
                format!("invoke_on_all saw {seen:?}")
            })?;
            let sum = smp
                .map_reduce(
                    || async { MY_SHARD.with(Cell::get).unwrap_or(100) },
                    0,
                    |acc, s| acc + s,
                )
                .await
                .map_err(|e| e.to_string())?;
            check(sum == 3, || format!("map_reduce summed {sum}"))?;
            wait_until("every data shard's calls", || CHECKED.with(Cell::get) == 3).await?;
            let hops = smp.hop_counts();
            check(hops == (HopCounts { sent: 6, served: 6 }), || {
                format!("control counted {hops:?}")
            })?;
            for r in smp.invoke_on_all(|| async { STOP.with(|s| s.set(true)) }).await {
                r.map_err(|e| e.to_string())?;
            }
            Ok(())
        },
    )
    .expect("runtime starts");
    all_ok(outcome);
}

#[test]
fn control_ending_first_fails_calls_to_it() {
    let outcome = run_with_control(
        config(2),
        ControlConfig { cpus: None },
        |smp: Rc<Smp>| async move {
            let control = smp.control_shard().ok_or("no control shard")?;
            let deadline = Instant::now() + WAIT_MAX;
            loop {
                // Calls made before the control executor ends may succeed;
                // from then on every call, in flight or new, fails.
                match within("a call to control", smp.submit_to(control, || async {})).await? {
                    Ok(()) => {}
                    Err(ShardError::Gone(s)) if s == control => return Ok(()),
                    Err(e) => return Err(format!("expected Gone, got {e}")),
                }
                check(Instant::now() < deadline, || "control never went".into())?;
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
        },
        |_smp: Rc<Smp>| async move { Ok(()) },
    )
    .expect("runtime starts");
    all_ok(outcome);
}

#[test]
fn data_shards_ending_first_fail_calls_from_control() {
    let outcome = run_with_control(
        config(3),
        ControlConfig { cpus: None },
        |_smp: Rc<Smp>| async move { Ok(()) },
        |smp: Rc<Smp>| async move {
            let deadline = Instant::now() + WAIT_MAX;
            loop {
                let results = within("invoke_on_all", smp.invoke_on_all(|| async {})).await?;
                if results.iter().all(Result::is_err) {
                    for (shard, r) in smp.shards().zip(results) {
                        match r {
                            Err(ShardError::Gone(s)) if s == shard => {}
                            other => return Err(format!("shard {shard}: expected Gone, got {other:?}")),
                        }
                    }
                    break;
                }
                check(Instant::now() < deadline, || "the data shards never went".into())?;
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            match smp.map_reduce(|| async { 1 }, 0, |a, b| a + b).await {
                Err(ShardError::Gone(ShardId(0))) => Ok(()),
                other => Err(format!("expected Gone(0), got {other:?}")),
            }
        },
    )
    .expect("runtime starts");
    all_ok(outcome);
}

/// Executors that end while their peers are still connecting to them must
/// neither hang nor panic anyone.
#[test]
fn mains_that_return_at_once_end_cleanly() {
    for _ in 0..20 {
        let outcome = run_with_control(
            config(3),
            ControlConfig::default(),
            |_smp: Rc<Smp>| async { Ok(()) },
            |_smp: Rc<Smp>| async { Ok(()) },
        )
        .expect("runtime starts");
        all_ok(outcome);
        let results = run(config(3), |_smp: Rc<Smp>| async { Ok(()) }).expect("runtime starts");
        results.into_iter().for_each(|r| r.expect("shard ok"));
    }
}

static ARRIVED: AtomicUsize = AtomicUsize::new(0);
static INVOKED: AtomicBool = AtomicBool::new(false);

#[test]
fn invoke_on_all_starts_every_call_before_awaiting_any() {
    let results = run(config(3), |smp: Rc<Smp>| async move {
        MY_SHARD.with(|s| s.set(Some(smp.shard_id().0)));
        check(smp.control_shard().is_none() && !smp.is_control(), || {
            "run started a control executor".into()
        })?;
        if smp.shard_id() != ShardId(0) {
            return wait_until("shard 0's invoke_on_all", || INVOKED.load(Ordering::SeqCst)).await;
        }
        // Each call waits until all three have arrived: run one after the
        // other, the first would time out.
        let results = smp
            .invoke_on_all(|| async {
                ARRIVED.fetch_add(1, Ordering::SeqCst);
                let met = wait_until("all calls", || ARRIVED.load(Ordering::SeqCst) == 3).await;
                (MY_SHARD.with(Cell::get), met.is_ok())
            })
            .await;
        let results = results
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        check(
            results == [(Some(0), true), (Some(1), true), (Some(2), true)],
            || format!("invoke_on_all answered {results:?}"),
        )?;
        let ids = smp
            .map_reduce(
                || async { MY_SHARD.with(Cell::get) },
                Vec::new(),
                |mut acc, s| {
                    acc.push(s);
                    acc
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        check(ids == [Some(0), Some(1), Some(2)], || {
            format!("map_reduce folded {ids:?}, not in shard order")
        })?;
        INVOKED.store(true, Ordering::SeqCst);
        Ok(())
    })
    .expect("runtime starts");
    results.into_iter().for_each(|r| r.expect("shard ok"));
}

#[test]
fn map_reduce_returns_the_first_error_in_shard_order() {
    let results = run(config(3), |smp: Rc<Smp>| async move {
        if smp.shard_id() != ShardId(0) {
            return Ok(());
        }
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            let r = within("invoke_on_all", smp.invoke_on_all(|| async {})).await?;
            if r[1].is_err() && r[2].is_err() {
                break;
            }
            check(Instant::now() < deadline, || "shards 1 and 2 never went".into())?;
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        let sum = smp.map_reduce(|| async { 1 }, 0, |a, b| a + b);
        match within("map_reduce", sum).await? {
            Err(ShardError::Gone(ShardId(1))) => Ok(()),
            other => Err(format!("expected Gone(1), got {other:?}")),
        }
    })
    .expect("runtime starts");
    results.into_iter().for_each(|r| r.expect("shard ok"));
}

/// Calls racing their target's end each finish, with an answer or `Gone`,
/// never hang: shard 1 stops while shard 0 keeps calling it from four tasks.
/// (The map_reduce test above caught a hang here once.)
#[test]
fn calls_racing_a_targets_end_all_finish() {
    for _ in 0..10 {
        let results = run(config(2), |smp: Rc<Smp>| async move {
            if smp.shard_id() == ShardId(1) {
                return wait_until("calls from shard 0", || smp.hop_counts().served >= 50).await;
            }
            let callers: Vec<_> = (0..4)
                .map(|_| {
                    let smp = smp.clone();
                    glommio::spawn_local(async move {
                        loop {
                            let call = smp.submit_to(ShardId(1), || async {});
                            match within("a call to a stopping shard", call).await? {
                                Ok(()) => {}
                                Err(ShardError::Gone(ShardId(1))) => break,
                                Err(e) => return Err(format!("expected Gone(1), got {e}")),
                            }
                        }
                        // Once a call saw it gone, later calls fail too, even
                        // if shard 1's receiving end is not yet closed.
                        let call = smp.submit_to(ShardId(1), || async {});
                        match within("a call to a stopped shard", call).await? {
                            Err(ShardError::Gone(ShardId(1))) => Ok(()),
                            other => Err(format!("expected Gone(1), got {other:?}")),
                        }
                    })
                })
                .collect();
            for caller in callers {
                caller.await?;
            }
            Ok(())
        })
        .expect("runtime starts");
        results.into_iter().for_each(|r| r.expect("shard ok"));
    }
}

#[test]
fn blocking_runs_off_the_reactor() {
    let results = run(config(1), |_smp: Rc<Smp>| async move {
        let reactor = std::thread::current().id();
        let ticks = Rc::new(Cell::new(0u32));
        let ticker = {
            let ticks = ticks.clone();
            glommio::spawn_local(async move {
                loop {
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                    ticks.set(ticks.get() + 1);
                }
            })
        };
        let (pool, sum) = blocking(|| {
            std::thread::sleep(Duration::from_millis(100));
            (std::thread::current().id(), 2 + 2)
        })
        .await;
        let ticked = ticks.get();
        drop(ticker);
        check(pool != reactor, || "blocking ran on the reactor thread".into())?;
        check(sum == 4, || format!("blocking returned {sum}"))?;
        // The reactor kept running timers while the pool slept.
        check(ticked >= 3, || {
            format!("the reactor ticked {ticked} times in 100 ms")
        })
    })
    .expect("runtime starts");
    results.into_iter().for_each(|r| r.expect("shard ok"));
}

#[test]
fn blocking_resumes_a_panic_and_the_pool_survives() {
    use futures_lite::FutureExt;
    use std::panic::AssertUnwindSafe;
    let results = run(config(1), |_smp: Rc<Smp>| async move {
        let panicked = AssertUnwindSafe(blocking(|| panic!("boom on the pool")))
            .catch_unwind()
            .await;
        let message = panicked
            .err()
            .and_then(|p| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .ok_or("the panic did not reach the caller")?;
        check(message == "boom on the pool", || format!("panic said {message}"))?;
        // The only pool thread still serves.
        let n = within("blocking after a panic", blocking(|| 7)).await?;
        check(n == 7, || format!("blocking returned {n}"))
    })
    .expect("runtime starts");
    results.into_iter().for_each(|r| r.expect("shard ok"));
}

/// The CPUs this thread may run on, from `/proc/thread-self/status`.
fn allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/thread-self/status").expect("proc status");
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().expect("cpu")..=b.parse().expect("cpu")),
            None => cpus.push(part.parse().expect("cpu")),
        }
    }
    cpus
}

/// Data shards on CPU 0, control on CPU 1: every blocking pool may use both,
/// while each reactor stays on its own CPUs.
#[test]
fn blocking_pools_span_the_node_cpus() {
    if !allowed_cpus().contains(&1) {
        eprintln!("skipped: needs CPU 1");
        return;
    }
    let outcome = run_with_control(
        config(1),
        ControlConfig { cpus: Some(vec![1]) },
        |_smp: Rc<Smp>| async move {
            check(allowed_cpus() == [0], || {
                format!("shard runs on {:?}", allowed_cpus())
            })?;
            let pool = blocking(allowed_cpus).await;
            check(pool == [0, 1], || format!("shard's pool runs on {pool:?}"))
        },
        |_smp: Rc<Smp>| async move {
            check(allowed_cpus() == [1], || {
                format!("control runs on {:?}", allowed_cpus())
            })?;
            let pool = blocking(allowed_cpus).await;
            check(pool == [0, 1], || format!("control's pool runs on {pool:?}"))
        },
    )
    .expect("runtime starts");
    all_ok(outcome);
}

#[test]
fn bad_control_cpus_are_a_start_error() {
    for cpus in [vec![], vec![100_000]] {
        let r = run_with_control(
            config(1),
            ControlConfig {
                cpus: Some(cpus.clone()),
            },
            |_smp: Rc<Smp>| async { Ok(()) },
            |_smp: Rc<Smp>| async { Ok(()) },
        );
        match r {
            Err(ShardError::StartControl { cpus: Some(c), .. }) if c == cpus => {}
            other => panic!("control on {cpus:?}: expected StartControl, got {other:?}"),
        }
    }
}
