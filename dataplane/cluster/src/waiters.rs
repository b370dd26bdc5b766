//! Long-poll fetch waiters.
//!
//! A fetch that found too little data registers one waiter on its
//! connection's shard ([`Waiters::register`]) and a [`WaiterRef`] to it on
//! each partition it reads, on their owner shards (inside the owner's read,
//! see `ops::read_local`). The next append to any of them wakes it: on the
//! same shard directly, on another through one cross-shard call.

use crate::manager;
use ferrolog_model::ShardId;
use futures_channel::mpsc;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Instant;

/// A long-poll fetch waiting for data, on the shard of its connection.
#[derive(Clone, Copy, Debug)]
pub struct WaiterRef {
    pub shard: ShardId,
    pub id: u64,
    /// After this the fetch has answered anyway; the entry is stale.
    pub deadline: Instant,
}

impl WaiterRef {
    /// Wakes the fetch, on its own shard (a cross-shard call if elsewhere).
    pub fn wake(self) {
        let m = manager::local();
        if self.shard == m.id() {
            m.waiters.wake(self.id);
        } else {
            let smp = m.smp.clone();
            glommio::spawn_local(async move {
                let id = self.id;
                // The waiting shard is gone if this fails: nobody waits.
                let _ = smp
                    .submit_to(
                        self.shard,
                        move || async move { manager::local().waiters.wake(id) },
                    )
                    .await;
            })
            .detach();
        }
    }
}

/// The long-poll fetches of one shard's connections, by id.
#[derive(Default)]
pub struct Waiters {
    by_id: RefCell<HashMap<u64, mpsc::Sender<()>>>,
    next: Cell<u64>,
}

impl Waiters {
    /// Registers a fetch of this shard; the receiver yields once per wake.
    /// `forget` when done.
    pub fn register(&self) -> (u64, mpsc::Receiver<()>) {
        let id = self.next.get();
        self.next.set(id + 1);
        let (tx, rx) = mpsc::channel(1);
        self.by_id.borrow_mut().insert(id, tx);
        (id, rx)
    }

    pub fn forget(&self, id: u64) {
        self.by_id.borrow_mut().remove(&id);
    }

    pub fn wake(&self, id: u64) {
        if let Some(tx) = self.by_id.borrow_mut().get_mut(&id) {
            // Full means already woken.
            let _ = tx.try_send(());
        }
    }
}
