//! Per-connection state that outlives one request: who the client is and
//! what it has proven (SASL), seen by every handler through `Ctx::session`.

use crate::sasl::SaslState;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// Kafka's principal of a client that has not authenticated.
pub const ANONYMOUS: &str = "User:ANONYMOUS";

pub struct Session {
    /// The client's address as Kafka prints it (`/ip`).
    pub peer: Rc<str>,
    /// The principal requests run as, `User:NAME` once authenticated,
    /// [`ANONYMOUS`] until then.
    principal: RefCell<Rc<str>>,
    /// Where the connection is in its SASL exchange.
    pub sasl: RefCell<SaslState>,
    /// After a SaslHandshake v0: the next frames are bare SASL tokens until
    /// the exchange ends.
    pub raw_sasl: Cell<bool>,
    /// Set by a handler whose response must be the connection's last (a
    /// failed authentication): the server sends it, then closes with this
    /// reason.
    close_after_reply: RefCell<Option<String>>,
}

impl Session {
    pub fn new(peer: Rc<str>) -> Rc<Self> {
        Rc::new(Session {
            peer,
            principal: RefCell::new(ANONYMOUS.into()),
            sasl: RefCell::new(SaslState::Start),
            raw_sasl: Cell::new(false),
            close_after_reply: RefCell::new(None),
        })
    }

    pub fn principal(&self) -> Rc<str> {
        self.principal.borrow().clone()
    }

    pub fn set_principal(&self, p: impl Into<Rc<str>>) {
        *self.principal.borrow_mut() = p.into();
    }

    /// Whether SASL authentication completed on this connection.
    pub fn authenticated(&self) -> bool {
        matches!(*self.sasl.borrow(), SaslState::Authenticated)
    }

    pub fn close_after_reply(&self, reason: String) {
        *self.close_after_reply.borrow_mut() = Some(reason);
    }

    pub fn take_close_reason(&self) -> Option<String> {
        self.close_after_reply.borrow_mut().take()
    }
}
