//! Per-connection state that outlives one request: who the client is and
//! what it has proven (SASL), seen by every handler through `Ctx::session`.

use std::cell::RefCell;
use std::rc::Rc;

/// Kafka's principal of a client that has not authenticated.
pub const ANONYMOUS: &str = "User:ANONYMOUS";

pub struct Session {
    /// The client's address as Kafka prints it (`/ip`).
    pub peer: Rc<str>,
    /// The principal requests run as, `User:NAME` once authenticated,
    /// [`ANONYMOUS`] until then.
    principal: RefCell<Rc<str>>,
}

impl Session {
    pub fn new(peer: Rc<str>) -> Rc<Self> {
        Rc::new(Session {
            peer,
            principal: RefCell::new(ANONYMOUS.into()),
        })
    }

    pub fn principal(&self) -> Rc<str> {
        self.principal.borrow().clone()
    }

    pub fn set_principal(&self, p: impl Into<Rc<str>>) {
        *self.principal.borrow_mut() = p.into();
    }
}
