use super::{str_bytes, Ctx};
use crate::registry::Versions;
use crate::sasl::scram::{self, ScramExchange};
use crate::sasl::{self, invalid_credentials, plain, Mechanism, SaslError, SaslState};
use crate::session::Session;
use crate::shard::Shard;
use bytes::Bytes;
use ferrolog_controlplane::credentials::ScramMechanism;
use kafka_protocol::messages::{SaslAuthenticateRequest, SaslAuthenticateResponse};
use std::rc::Rc;
use tracing::info;

pub const VERSIONS: Versions = Versions::new(0, 2);

/// One step of the exchange the handshake chose. A failed step is answered
/// with its error and message, then the connection is closed.
pub async fn handle(ctx: &Ctx, req: SaslAuthenticateRequest) -> SaslAuthenticateResponse {
    match step(&ctx.shard, &ctx.session, &req.auth_bytes).await {
        Ok(reply) => SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(reply)),
        Err(e) => {
            *ctx.session.sasl.borrow_mut() = SaslState::Failed;
            ctx.session
                .close_after_reply(format!("SASL authentication failed: {e}"));
            SaslAuthenticateResponse::default()
                .with_error_code(crate::errors::sasl(&e).code())
                .with_error_message(Some(str_bytes(e.to_string())))
        }
    }
}

fn authenticated(session: &Session, user: &str, m: Mechanism) {
    *session.sasl.borrow_mut() = SaslState::Authenticated;
    session.set_principal(format!("User:{user}"));
    info!(peer = %session.peer, user, mechanism = m.name(), "SASL authenticated");
}

/// One SASL token of the connection whose state is `session`: the reply
/// token, or why the exchange failed (the connection must then be closed).
/// SaslAuthenticate carries the tokens; after a SaslHandshake v0 they come
/// unframed and the server loop calls this directly.
pub async fn step(shard: &Rc<Shard>, session: &Session, token: &[u8]) -> Result<Vec<u8>, SaslError> {
    // Take the state out: no RefCell borrow is held across the awaits below.
    let state = std::mem::replace(&mut *session.sasl.borrow_mut(), SaslState::Failed);
    match state {
        SaslState::Handshaken(Mechanism::Plain) => {
            let p = plain::parse(token)?;
            // SCRAM-SHA-512 first, the stronger; either proves the password.
            for m in [ScramMechanism::Sha512, ScramMechanism::Sha256] {
                if let Some(c) = sasl::lookup(shard, &p.user, m).await {
                    if plain::verify(m, &c, &p.password) {
                        authenticated(session, &p.user, Mechanism::Plain);
                        return Ok(Vec::new());
                    }
                    break;
                }
            }
            Err(SaslError::Failed(invalid_credentials("PLAIN")))
        }
        SaslState::Handshaken(Mechanism::Scram(m)) => {
            let first = scram::parse_client_first(token)?;
            let Some(cred) = sasl::lookup(shard, &first.user, m).await else {
                return Err(SaslError::Failed(invalid_credentials(m.name())));
            };
            let nonce = sasl::random_nonce()
                .map_err(|e| SaslError::Failed(format!("no randomness for a nonce: {e}")))?;
            let (ex, server_first) = ScramExchange::start(m, first, cred, &nonce);
            *session.sasl.borrow_mut() = SaslState::ScramFirstSent(Box::new(ex));
            Ok(server_first)
        }
        SaslState::ScramFirstSent(ex) => {
            let server_final = ex.finish(token)?;
            authenticated(session, ex.user(), Mechanism::Scram(ex.mechanism()));
            Ok(server_final)
        }
        SaslState::Start => Err(SaslError::IllegalState(
            "SaslAuthenticate before SaslHandshake".into(),
        )),
        SaslState::Authenticated => {
            *session.sasl.borrow_mut() = SaslState::Authenticated;
            Err(SaslError::IllegalState(
                "SaslAuthenticate after authentication completed (re-authentication is not supported)".into(),
            ))
        }
        SaslState::Failed => Err(SaslError::IllegalState(
            "SASL authentication already failed".into(),
        )),
    }
}
