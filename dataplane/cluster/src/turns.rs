//! Turns of a partition's client appends: the order in which produce
//! entries reach the log is the order in which their turns were taken.
//!
//! A connection that runs several produce requests at once (pipelining)
//! takes, for each request, a turn on every partition it writes before the
//! next request starts; each append then waits for its turn, and passes it
//! on as soon as the batch has its offsets (not when it is durable), so the
//! appends of one connection keep their order and still share a flush. An
//! idempotent producer's batches therefore arrive in sequence order however
//! the tasks that carry them are scheduled.
//!
//! Taking a turn is synchronous; an uncontended turn is ready at once, with
//! no allocation beyond the turn itself. A turn dropped before it was
//! released (an error, a cancelled request) passes the turn on; one dropped
//! while still waiting is skipped.

use futures_channel::oneshot;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

/// One partition's queue of turns.
#[derive(Default)]
pub struct TurnQueue {
    inner: Rc<RefCell<Queue>>,
}

#[derive(Default)]
struct Queue {
    /// A turn is held (ready and not yet released).
    held: bool,
    /// Turns waiting, oldest first.
    waiting: VecDeque<oneshot::Sender<()>>,
}

impl TurnQueue {
    /// Takes the next turn: ready at once if no turn is held or waiting.
    pub fn take(&self) -> Turn {
        let mut q = self.inner.borrow_mut();
        let state = if !q.held && q.waiting.is_empty() {
            q.held = true;
            State::Held
        } else {
            let (tx, rx) = oneshot::channel();
            q.waiting.push_back(tx);
            State::Waiting(rx)
        };
        Turn {
            queue: self.inner.clone(),
            state: RefCell::new(state),
        }
    }

    /// Turns waiting behind the held one.
    pub fn waiting(&self) -> usize {
        self.inner.borrow().waiting.len()
    }
}

enum State {
    Waiting(oneshot::Receiver<()>),
    Held,
    Released,
}

/// A place in a partition's order of appends (see the module doc).
pub struct Turn {
    queue: Rc<RefCell<Queue>>,
    state: RefCell<State>,
}

impl Turn {
    /// Waits until every turn taken before this one was released.
    pub async fn ready(&self) {
        std::future::poll_fn(|cx| {
            let mut state = self.state.borrow_mut();
            match &mut *state {
                State::Waiting(rx) => match Pin::new(rx).poll(cx) {
                    // The queue sends before it drops a sender, and lives as
                    // long as this turn: an error cannot happen, and either
                    // way the turn is this one's now.
                    Poll::Ready(_) => {
                        *state = State::Held;
                        Poll::Ready(())
                    }
                    Poll::Pending => Poll::Pending,
                },
                State::Held | State::Released => Poll::Ready(()),
            }
        })
        .await
    }

    /// Passes the turn on: the next waiting turn becomes ready. Releasing a
    /// turn that is still waiting gives up its place (or, if the turn came
    /// to it meanwhile, passes it on). Idempotent.
    pub fn release(&self) {
        let was = std::mem::replace(&mut *self.state.borrow_mut(), State::Released);
        match was {
            State::Held => pass_on(&mut self.queue.borrow_mut()),
            State::Waiting(mut rx) => {
                if let Ok(Some(())) = rx.try_recv() {
                    pass_on(&mut self.queue.borrow_mut());
                }
                // Else its sender stays queued and `pass_on` skips it.
            }
            State::Released => {}
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.release();
    }
}

/// The held turn was released: the oldest waiting turn whose holder still
/// waits gets it; with none, no turn is held.
fn pass_on(q: &mut Queue) {
    while let Some(next) = q.waiting.pop_front() {
        if next.send(()).is_ok() {
            return;
        }
    }
    q.held = false;
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    fn is_ready(t: &Turn) -> bool {
        t.ready().now_or_never().is_some()
    }

    #[test]
    fn turns_become_ready_in_the_order_taken() {
        let q = TurnQueue::default();
        let a = q.take();
        let b = q.take();
        let c = q.take();
        assert!(is_ready(&a));
        assert!(!is_ready(&b));
        assert!(!is_ready(&c));
        a.release();
        assert!(!is_ready(&c), "c waits for b");
        assert!(is_ready(&b));
        b.release();
        assert!(is_ready(&c));
        c.release();
        assert!(is_ready(&q.take()), "an empty queue gives a ready turn");
    }

    #[test]
    fn a_dropped_turn_passes_on_or_gives_up_its_place() {
        let q = TurnQueue::default();
        let a = q.take();
        let b = q.take();
        let c = q.take();
        drop(b); // gave up its place while waiting
        assert_eq!(q.waiting(), 2, "its entry stays until skipped");
        drop(a); // held: passes on, skipping b
        assert!(is_ready(&c));
        assert_eq!(q.waiting(), 0);
        drop(c);
        let d = q.take();
        assert!(is_ready(&d));
    }

    #[test]
    fn release_is_idempotent_and_a_released_turn_is_ready() {
        let q = TurnQueue::default();
        let a = q.take();
        let b = q.take();
        a.release();
        a.release();
        assert!(is_ready(&a));
        let c = q.take();
        assert!(is_ready(&b));
        assert!(!is_ready(&c), "the second release of a did not pass b's turn on");
    }

    #[test]
    fn a_waiting_turn_polled_then_released_frees_no_one_twice() {
        let q = TurnQueue::default();
        let a = q.take();
        let b = q.take();
        assert!(!is_ready(&b));
        b.release();
        let c = q.take();
        a.release();
        assert!(is_ready(&c));
        let d = q.take();
        assert!(!is_ready(&d), "c holds the turn");
    }

    #[test]
    fn a_turn_granted_but_never_polled_passes_on_when_dropped() {
        let q = TurnQueue::default();
        let a = q.take();
        let b = q.take();
        let c = q.take();
        a.release(); // grants b, which never looks
        drop(b);
        assert!(is_ready(&c));
    }
}
