use super::{str_bytes, Ctx};
use crate::registry::Versions;
use crate::sasl::{Mechanism, SaslError, SaslState};
use kafka_protocol::messages::{SaslHandshakeRequest, SaslHandshakeResponse};

/// After v0 the SASL tokens come unframed (a size and the token, no request
/// header; the server loop handles them); after v1 in SaslAuthenticate.
pub const VERSIONS: Versions = Versions::new(0, 1);

/// Chooses the connection's SASL mechanism. An unsupported mechanism or a
/// second handshake is answered with its error, then the connection is
/// closed (as Kafka does).
pub fn handle(ctx: &Ctx, req: SaslHandshakeRequest) -> SaslHandshakeResponse {
    let sec = &ctx.shard.config.security;
    let offered: Vec<_> = sec.sasl_mechanisms.iter().map(|m| str_bytes(m.name())).collect();
    let resp = SaslHandshakeResponse::default().with_mechanisms(offered);
    let asked = req.mechanism.to_string();
    let error = {
        let mut state = ctx.session.sasl.borrow_mut();
        match (&*state, Mechanism::from_name(&asked)) {
            (SaslState::Start, Some(m)) if sec.sasl_mechanisms.contains(&m) => {
                *state = SaslState::Handshaken(m);
                ctx.session.raw_sasl.set(ctx.version == 0);
                return resp;
            }
            (SaslState::Start, _) => SaslError::UnsupportedMechanism(format!(
                "SASL mechanism {asked:?} is not enabled on this listener"
            )),
            _ => SaslError::IllegalState("SaslHandshake after the SASL handshake".into()),
        }
    };
    *ctx.session.sasl.borrow_mut() = SaslState::Failed;
    ctx.session.close_after_reply(error.to_string());
    resp.with_error_code(crate::errors::sasl(&error).code())
}
