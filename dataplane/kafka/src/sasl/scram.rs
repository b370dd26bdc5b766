//! The server side of SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677)
//! as Kafka uses them: no channel binding, the `tokenauth` extension
//! refused. Sans-IO: the caller parses the client's first message, looks up
//! the user's credential wherever it lives, and feeds the final message.

use super::SaslError;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ferrolog_controlplane::credentials::{ScramCredential, ScramMechanism};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// Longest SCRAM message accepted (bytes); real ones are ~100-200.
pub const MESSAGE_MAX_BYTES: usize = 4096;
/// Shortest client nonce accepted (characters).
const CLIENT_NONCE_MIN: usize = 8;

pub fn hmac(m: ScramMechanism, key: &[u8], data: &[u8]) -> Vec<u8> {
    match m {
        ScramMechanism::Sha256 => {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        ScramMechanism::Sha512 => {
            let mut mac = Hmac::<Sha512>::new_from_slice(key).expect("HMAC takes keys of any length");
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
    }
}

pub fn hash(m: ScramMechanism, data: &[u8]) -> Vec<u8> {
    match m {
        ScramMechanism::Sha256 => Sha256::digest(data).to_vec(),
        ScramMechanism::Sha512 => Sha512::digest(data).to_vec(),
    }
}

/// Hi(password, salt, i) of RFC 5802: PBKDF2 with HMAC of the mechanism's hash.
pub fn salted_password(m: ScramMechanism, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut out = vec![0u8; m.hash_bytes()];
    match m {
        ScramMechanism::Sha256 => pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out),
        ScramMechanism::Sha512 => pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out),
    }
    out
}

/// A credential for `password` with the given salt and iterations.
pub fn credential(m: ScramMechanism, password: &[u8], salt: Vec<u8>, iterations: i32) -> ScramCredential {
    let it = u32::try_from(iterations).expect("callers pass validated, positive iterations");
    ScramCredential {
        salted_password: salted_password(m, password, &salt, it),
        salt,
        iterations,
    }
}

/// The client's first message, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst {
    pub user: String,
    gs2_header: String,
    bare: String,
    client_nonce: String,
}

fn malformed(what: &str) -> SaslError {
    SaslError::Malformed(format!("invalid SCRAM client message: {what}"))
}

fn utf8(msg: &[u8]) -> Result<&str, SaslError> {
    if msg.len() > MESSAGE_MAX_BYTES {
        return Err(malformed("too long"));
    }
    std::str::from_utf8(msg).map_err(|_| malformed("not UTF-8"))
}

/// `saslname` of RFC 5802: `=2C` is ',' and `=3D` is '='; any other '=' is
/// malformed.
fn decode_saslname(s: &str) -> Result<String, SaslError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(malformed("bad escape in the user name")),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `gs2-header client-first-message-bare`, e.g. `n,,n=alice,r=fyko+d2lbbFgONRv9qkxdawL`.
pub fn parse_client_first(msg: &[u8]) -> Result<ClientFirst, SaslError> {
    let s = utf8(msg)?;
    let mut parts = s.splitn(3, ',');
    let cb = parts.next().unwrap_or_default();
    let authzid = parts.next().ok_or_else(|| malformed("no GS2 header"))?;
    let bare = parts.next().ok_or_else(|| malformed("no GS2 header"))?;
    match cb {
        "n" | "y" => {}
        c if c.starts_with("p=") => {
            return Err(SaslError::Failed("SCRAM channel binding is not supported".into()))
        }
        _ => return Err(malformed("bad channel binding flag")),
    }
    let mut user = None;
    let mut nonce = None;
    for (i, attr) in bare.split(',').enumerate() {
        let (k, v) = attr
            .split_once('=')
            .ok_or_else(|| malformed("attribute without '='"))?;
        match (i, k) {
            (0, "m") => return Err(malformed("mandatory extension not supported")),
            (0, "n") => user = Some(decode_saslname(v)?),
            (1, "r") => nonce = Some(v.to_string()),
            (0 | 1, _) => return Err(malformed("expected n= then r=")),
            // Kafka's delegation tokens announce themselves as an extension.
            (_, "tokenauth") if v == "true" => {
                return Err(SaslError::Failed("delegation tokens are not supported".into()))
            }
            _ => {}
        }
    }
    let user = user.ok_or_else(|| malformed("no user name"))?;
    let client_nonce = nonce.ok_or_else(|| malformed("no nonce"))?;
    if user.is_empty() {
        return Err(malformed("empty user name"));
    }
    if client_nonce.len() < CLIENT_NONCE_MIN
        || !client_nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
    {
        return Err(malformed("bad nonce"));
    }
    if let Some(a) = authzid.strip_prefix("a=") {
        if decode_saslname(a)? != user {
            return Err(SaslError::Failed(
                "authorization id differs from the user name".into(),
            ));
        }
    } else if !authzid.is_empty() {
        return Err(malformed("bad authorization id"));
    }
    Ok(ClientFirst {
        user,
        gs2_header: format!("{cb},{authzid},"),
        bare: bare.to_string(),
        client_nonce,
    })
}

/// An exchange after the server's first message: what the client's final
/// message is checked against.
pub struct ScramExchange {
    mechanism: ScramMechanism,
    user: String,
    gs2_header: String,
    nonce: String,
    /// client-first-message-bare "," server-first-message
    auth_prefix: String,
    credential: ScramCredential,
}

impl std::fmt::Debug for ScramExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the salted password.
        f.debug_struct("ScramExchange")
            .field("mechanism", &self.mechanism)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl ScramExchange {
    /// The server's first message for `first`, with `server_nonce`
    /// (printable, no ','), against `credential`.
    pub fn start(
        mechanism: ScramMechanism,
        first: ClientFirst,
        credential: ScramCredential,
        server_nonce: &str,
    ) -> (ScramExchange, Vec<u8>) {
        let nonce = format!("{}{server_nonce}", first.client_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&credential.salt),
            credential.iterations
        );
        let auth_prefix = format!("{},{server_first}", first.bare);
        (
            ScramExchange {
                mechanism,
                user: first.user,
                gs2_header: first.gs2_header,
                nonce,
                auth_prefix,
                credential,
            },
            server_first.into_bytes(),
        )
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn mechanism(&self) -> ScramMechanism {
        self.mechanism
    }

    /// Checks the client's final message (`c=...,r=...,p=...`); on success
    /// the server's final message (`v=...`).
    pub fn finish(&self, msg: &[u8]) -> Result<Vec<u8>, SaslError> {
        let s = utf8(msg)?;
        let (without_proof, proof) = s.rsplit_once(",p=").ok_or_else(|| malformed("no proof"))?;
        let mut attrs = without_proof.split(',');
        let cb = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or_else(|| malformed("no channel binding"))?;
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or_else(|| malformed("no nonce"))?;
        if B64.decode(cb).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(malformed("channel binding differs from the GS2 header"));
        }
        // Kafka accepts a final nonce that ends with the combined one, and
        // librdkafka 2.0 (kcat 1.7.1) sends its own nonce in front of it
        // again; the proof covers the message as sent either way.
        if !nonce.ends_with(&self.nonce) {
            return Err(malformed("nonce differs from the server's"));
        }
        let proof = B64.decode(proof).map_err(|_| malformed("proof is not base64"))?;
        let m = self.mechanism;
        if proof.len() != m.hash_bytes() {
            return Err(self.failed());
        }
        let auth_message = format!("{},{without_proof}", self.auth_prefix);
        let client_key_expected = hmac(m, &self.credential.salted_password, b"Client Key");
        let stored_key = hash(m, &client_key_expected);
        let client_signature = hmac(m, &stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(&client_signature).map(|(a, b)| a ^ b).collect();
        if !bool::from(hash(m, &client_key).ct_eq(&stored_key)) {
            return Err(self.failed());
        }
        let server_key = hmac(m, &self.credential.salted_password, b"Server Key");
        let server_signature = hmac(m, &server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }

    fn failed(&self) -> SaslError {
        SaslError::Failed(super::invalid_credentials(self.mechanism.name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client side, as a test oracle: proof and expected server
    /// signature for a password.
    fn client_final(
        m: ScramMechanism,
        password: &str,
        client_first_bare: &str,
        server_first: &str,
        nonce_prefix: &str,
    ) -> (String, String) {
        let sf = server_first;
        let nonce = sf
            .split(',')
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .expect("r");
        let salt = B64
            .decode(
                sf.split(',')
                    .nth(1)
                    .and_then(|a| a.strip_prefix("s="))
                    .expect("s"),
            )
            .expect("b64");
        let it: u32 = sf
            .split(',')
            .nth(2)
            .and_then(|a| a.strip_prefix("i="))
            .expect("i")
            .parse()
            .expect("n");
        let salted = salted_password(m, password.as_bytes(), &salt, it);
        let without_proof = format!("c={},r={nonce_prefix}{nonce}", B64.encode("n,,"));
        let auth = format!("{client_first_bare},{sf},{without_proof}");
        let client_key = hmac(m, &salted, b"Client Key");
        let sig = hmac(m, &hash(m, &client_key), auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        let server_sig = hmac(m, &hmac(m, &salted, b"Server Key"), auth.as_bytes());
        (
            format!("{without_proof},p={}", B64.encode(proof)),
            format!("v={}", B64.encode(server_sig)),
        )
    }

    /// RFC 7677 section 3's example exchange for SCRAM-SHA-256.
    #[test]
    fn rfc7677_example() {
        let m = ScramMechanism::Sha256;
        let first = parse_client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").expect("first");
        assert_eq!(first.user, "user");
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt");
        let cred = credential(m, b"pencil", salt, 4096);
        let (ex, server_first) = ScramExchange::start(m, first, cred, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
        assert_eq!(
            server_first,
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let fin = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let server_final = ex.finish(fin).expect("proof accepted");
        assert_eq!(server_final, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    }

    #[test]
    fn sha512_round_trip_and_wrong_password() {
        let m = ScramMechanism::Sha512;
        let bare = "n=al=2Cice,r=abcdefghijkl";
        let first = parse_client_first(format!("n,,{bare}").as_bytes()).expect("first");
        assert_eq!(first.user, "al,ice");
        let cred = credential(m, b"secret", b"salt-salt".to_vec(), 4096);
        let (ex, sf) = ScramExchange::start(m, first, cred, "SERVERNONCE");
        let sf = String::from_utf8(sf).expect("utf8");
        let (good, expected_final) = client_final(m, "secret", bare, &sf, "");
        assert_eq!(
            ex.finish(good.as_bytes()).expect("accepted"),
            expected_final.as_bytes()
        );
        // librdkafka 2.0's form: its own nonce again in front of the combined one.
        let (old, expected_final) = client_final(m, "secret", bare, &sf, "abcdefghijkl");
        assert_eq!(
            ex.finish(old.as_bytes()).expect("accepted"),
            expected_final.as_bytes()
        );
        let (bad, _) = client_final(m, "Secret", bare, &sf, "");
        assert!(matches!(ex.finish(bad.as_bytes()), Err(SaslError::Failed(_))));
    }

    #[test]
    fn malformed_messages_are_refused() {
        for msg in [
            &b""[..],
            b"n",
            b"n,,",
            b"x,,n=a,r=abcdefghij",
            b"n,,r=abcdefghij",
            b"n,,n=a",
            b"n,,n=a,r=short",
            b"n,,n=a=,r=abcdefghij",
            b"n,,m=ext,n=a,r=abcdefghij",
            b"n,,n=,r=abcdefghij",
            b"n,,n=a,r=abc,defghij",
            b"\xff\xfe",
        ] {
            assert!(
                matches!(parse_client_first(msg), Err(SaslError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(msg)
            );
        }
        assert!(matches!(
            parse_client_first(b"p=tls-unique,,n=a,r=abcdefghij"),
            Err(SaslError::Failed(_))
        ));
        assert!(matches!(
            parse_client_first(b"n,a=b,n=a,r=abcdefghij"),
            Err(SaslError::Failed(_))
        ));
        assert!(parse_client_first(b"n,a=a,n=a,r=abcdefghij,tokenauth=false").is_ok());
        assert!(matches!(
            parse_client_first(b"n,,n=a,r=abcdefghij,tokenauth=true"),
            Err(SaslError::Failed(_))
        ));
        let m = ScramMechanism::Sha256;
        let first = parse_client_first(b"n,,n=a,r=abcdefghij").expect("first");
        let (ex, _) = ScramExchange::start(m, first, credential(m, b"pw", vec![1], 4096), "S");
        for fin in [
            &b""[..],
            b"c=biws,r=abcdefghijS",
            b"c=biws,r=abcdefghijX,p=AAAA",
            b"c=eSws,r=abcdefghijS,p=AAAA",
            b"c=biws,r=abcdefghijS,p=!!!",
        ] {
            assert!(
                matches!(ex.finish(fin), Err(SaslError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(fin)
            );
        }
        assert!(matches!(
            ex.finish(b"c=biws,r=abcdefghijS,p=AAAA"),
            Err(SaslError::Failed(_))
        ));
    }
}
