//! SASL authentication of Kafka connections: PLAIN and SCRAM-SHA-256/512.
//!
//! A connection's SASL state lives in its [`crate::session::Session`] (one
//! data shard, one connection). The exchange itself is sans-IO
//! ([`scram`], [`plain`]); the handlers (`sasl_handshake`,
//! `sasl_authenticate`) drive it and fetch credentials with [`lookup`]:
//! first the cluster metadata (created with AlterUserScramCredentials,
//! replicated by the controller), then the node's users file (the
//! bootstrap users, `--sasl-users-file`).
//!
//! PLAIN is checked against the same SCRAM credentials: the password is
//! salted with the stored salt and iterations and the result compared in
//! constant time, so no password is ever stored.

pub mod plain;
pub mod scram;
pub mod store;

use crate::shard::Shard;
use ferrolog_controlplane::controller as control;
use ferrolog_controlplane::credentials::{
    validate_user, CredentialError, ScramCredential, ScramMechanism, ITERATIONS_MIN,
};
use scram::ScramExchange;
use std::collections::BTreeMap;
use std::path::Path;

/// Why an authentication step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// Wrong credentials, an unknown user, or a refused option.
    #[error("{0}")]
    Failed(String),
    /// A message that does not parse.
    #[error("{0}")]
    Malformed(String),
    /// A request that does not fit the exchange's state.
    #[error("{0}")]
    IllegalState(String),
    #[error("{0}")]
    UnsupportedMechanism(String),
}

/// The one text for a wrong password and an unknown user, so the answer
/// does not tell which users exist.
pub fn invalid_credentials(mechanism: &str) -> String {
    format!("Authentication failed during authentication due to invalid credentials with SASL mechanism {mechanism}")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Scram(ScramMechanism),
}

impl Mechanism {
    pub const ALL: [Mechanism; 3] = [
        Mechanism::Plain,
        Mechanism::Scram(ScramMechanism::Sha256),
        Mechanism::Scram(ScramMechanism::Sha512),
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Scram(m) => m.name(),
        }
    }

    pub fn from_name(name: &str) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// Where a connection is in its SASL exchange.
#[derive(Debug, Default)]
pub enum SaslState {
    /// No handshake yet.
    #[default]
    Start,
    /// SaslHandshake chose this mechanism; SaslAuthenticate comes next.
    Handshaken(Mechanism),
    /// SCRAM: the server's first message was sent.
    ScramFirstSent(Box<ScramExchange>),
    Authenticated,
    /// A step failed; the connection is being closed.
    Failed,
}

/// Iterations of the credentials made from the users file.
pub const USERS_FILE_ITERATIONS: i32 = ITERATIONS_MIN;
/// Users a users file may name.
pub const USERS_FILE_MAX: usize = 1000;

/// The users of the node's users file, with SCRAM-SHA-256 and -512
/// credentials made at load time (random salt); the passwords are not kept.
#[derive(Clone, Default)]
pub struct FileUsers {
    users: BTreeMap<String, BTreeMap<ScramMechanism, ScramCredential>>,
}

impl std::fmt::Debug for FileUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileUsers")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl FileUsers {
    /// Reads `NAME:PASSWORD` lines (blank lines and lines starting with
    /// '#' are skipped; the password is everything after the first ':').
    pub fn load(path: &Path) -> Result<FileUsers, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        FileUsers::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<FileUsers, String> {
        let mut users = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let (user, password) = line
                .split_once(':')
                .ok_or_else(|| format!("line {}: expected NAME:PASSWORD", n + 1))?;
            validate_user(user).map_err(|e: CredentialError| format!("line {}: {e}", n + 1))?;
            if password.is_empty() {
                return Err(format!("line {}: empty password for {user}", n + 1));
            }
            if users.contains_key(user) {
                return Err(format!("line {}: user {user} is listed twice", n + 1));
            }
            if users.len() == USERS_FILE_MAX {
                return Err(format!("more than {USERS_FILE_MAX} users"));
            }
            let mut creds = BTreeMap::new();
            for m in ScramMechanism::ALL {
                let salt = random_bytes::<16>().map_err(|e| format!("no randomness for a salt: {e}"))?;
                creds.insert(
                    m,
                    scram::credential(m, password.as_bytes(), salt.to_vec(), USERS_FILE_ITERATIONS),
                );
            }
            users.insert(user.to_string(), creds);
        }
        Ok(FileUsers { users })
    }

    pub fn get(&self, user: &str, m: ScramMechanism) -> Option<ScramCredential> {
        self.users.get(user)?.get(&m).cloned()
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// A server nonce of 24 letters and digits (~143 bits). Like Kafka's, it
/// avoids '+', '/' and '=': librdkafka 2.0 mangles a server nonce holding
/// them (seen with kcat 1.7.1).
pub fn random_nonce() -> Result<String, getrandom::Error> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    Ok(random_bytes::<24>()?
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect())
}

pub fn random_bytes<const N: usize>() -> Result<[u8; N], getrandom::Error> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b)?;
    Ok(b)
}

/// The credential of `user` for `m`: the cluster metadata's (as applied on
/// this node), else the users file's.
pub async fn lookup(shard: &Shard, user: &str, m: ScramMechanism) -> Option<ScramCredential> {
    if let Some(control) = shard.smp.control_shard() {
        let u = user.to_string();
        let found = shard
            .smp
            .submit_to(control, move || async move { control::local().credential(&u, m) })
            .await
            .ok()
            .flatten();
        if found.is_some() {
            return found;
        }
    }
    shard.config.security.users.get(user, m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_file_makes_both_scram_credentials_and_keeps_no_password() {
        let users = FileUsers::parse("# comment\n\nadmin:pa:ss\r\nbob:x\n").expect("parse");
        assert_eq!(users.len(), 2);
        for m in ScramMechanism::ALL {
            let c = users.get("admin", m).expect("credential");
            assert_eq!(c.iterations, USERS_FILE_ITERATIONS);
            assert!(plain::verify(m, &c, b"pa:ss"));
            assert!(!plain::verify(m, &c, b"pa"));
        }
        assert!(users.get("carol", ScramMechanism::Sha256).is_none());
        assert!(!format!("{users:?}").contains("pa:ss"));
    }

    #[test]
    fn users_file_errors_name_the_line() {
        for (text, needle) in [
            ("admin\n", "line 1: expected NAME:PASSWORD"),
            ("a:1\n:pw\n", "line 2"),
            ("a:\n", "empty password"),
            ("a:1\na:2\n", "listed twice"),
        ] {
            let e = FileUsers::parse(text).expect_err(text);
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn nonces_are_letters_and_digits() {
        let n = random_nonce().expect("nonce");
        assert_eq!(n.len(), 24);
        assert!(n.bytes().all(|b| b.is_ascii_alphanumeric()), "{n}");
        assert_ne!(n, random_nonce().expect("nonce"));
    }
}
