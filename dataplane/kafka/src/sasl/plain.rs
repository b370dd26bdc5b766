//! SASL PLAIN (RFC 4616): `authzid NUL authcid NUL passwd`, checked against
//! a SCRAM credential by salting the password the same way.

use super::{scram, SaslError};
use ferrolog_controlplane::credentials::{ScramCredential, ScramMechanism};
use subtle::ConstantTimeEq;

/// Longest PLAIN message accepted (RFC 4616: 255 bytes per field).
pub const MESSAGE_MAX_BYTES: usize = 3 * 255 + 2;

#[derive(Debug, PartialEq, Eq)]
pub struct PlainAuth {
    pub user: String,
    pub password: Vec<u8>,
}

pub fn parse(msg: &[u8]) -> Result<PlainAuth, SaslError> {
    let bad = |what: &str| SaslError::Malformed(format!("invalid SASL/PLAIN message: {what}"));
    if msg.len() > MESSAGE_MAX_BYTES {
        return Err(bad("too long"));
    }
    let mut parts = msg.split(|b| *b == 0);
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("expected authzid NUL user NUL password"));
    };
    let user = std::str::from_utf8(user).map_err(|_| bad("user name is not UTF-8"))?;
    if user.is_empty() {
        return Err(bad("empty user name"));
    }
    if password.is_empty() {
        return Err(bad("empty password"));
    }
    if !authzid.is_empty() && authzid != user.as_bytes() {
        return Err(SaslError::Failed(
            "authorization id differs from the user name".into(),
        ));
    }
    Ok(PlainAuth {
        user: user.to_string(),
        password: password.to_vec(),
    })
}

/// Whether `password` is the one `credential` was made from.
pub fn verify(m: ScramMechanism, credential: &ScramCredential, password: &[u8]) -> bool {
    let Ok(iterations) = u32::try_from(credential.iterations) else {
        return false;
    };
    let salted = scram::salted_password(m, password, &credential.salt, iterations);
    bool::from(salted.ct_eq(&credential.salted_password))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_verifies() {
        let p = parse(b"\0alice\0secret").expect("parse");
        assert_eq!(p.user, "alice");
        assert_eq!(p.password, b"secret");
        assert!(parse(b"alice\0alice\0secret").is_ok());
        let c = scram::credential(ScramMechanism::Sha512, b"secret", vec![9; 16], 4096);
        assert!(verify(ScramMechanism::Sha512, &c, b"secret"));
        assert!(!verify(ScramMechanism::Sha512, &c, b"secreT"));
    }

    #[test]
    fn refuses_malformed_messages() {
        for msg in [
            &b""[..],
            b"alice",
            b"\0alice",
            b"\0\0secret",
            b"\0alice\0",
            b"\0alice\0secret\0more",
            b"\0\xff\0secret",
        ] {
            assert!(matches!(parse(msg), Err(SaslError::Malformed(_))), "{msg:?}");
        }
        assert!(matches!(parse(b"bob\0alice\0secret"), Err(SaslError::Failed(_))));
        assert!(matches!(parse(&vec![b'a'; 2000]), Err(SaslError::Malformed(_))));
    }
}
