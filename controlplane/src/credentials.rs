//! SCRAM credentials of the cluster's users, as the replicated state holds
//! them: per user and mechanism the salt, the iteration count and the salted
//! password (PBKDF2 of the password), never the password itself. Kafka's
//! AlterUserScramCredentials carries exactly these, computed by the client.
//!
//! Pure data and checks; the SASL exchanges that use them live in the kafka
//! crate (`sasl`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Kafka's bounds on SCRAM iterations (ScramMechanism.minIterations and
/// the broker's upper bound): fewer is too weak, more costs the broker
/// too much CPU per authentication.
pub const ITERATIONS_MIN: i32 = 4096;
pub const ITERATIONS_MAX: i32 = 16384;
/// Longest user name accepted (bytes).
pub const USER_NAME_MAX_BYTES: usize = 256;
/// Salt length bounds (bytes).
pub const SALT_MAX_BYTES: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ScramMechanism {
    #[serde(rename = "SCRAM-SHA-256")]
    Sha256,
    #[serde(rename = "SCRAM-SHA-512")]
    Sha512,
}

impl ScramMechanism {
    pub const ALL: [ScramMechanism; 2] = [ScramMechanism::Sha256, ScramMechanism::Sha512];

    /// Kafka's wire code (AlterUserScramCredentials, DescribeUserScramCredentials).
    pub fn from_code(code: i8) -> Option<ScramMechanism> {
        match code {
            1 => Some(ScramMechanism::Sha256),
            2 => Some(ScramMechanism::Sha512),
            _ => None,
        }
    }

    pub fn code(self) -> i8 {
        match self {
            ScramMechanism::Sha256 => 1,
            ScramMechanism::Sha512 => 2,
        }
    }

    /// The SASL mechanism name.
    pub fn name(self) -> &'static str {
        match self {
            ScramMechanism::Sha256 => "SCRAM-SHA-256",
            ScramMechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    pub fn from_name(name: &str) -> Option<ScramMechanism> {
        ScramMechanism::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Output length of the hash, which is also the salted password's length.
    pub fn hash_bytes(self) -> usize {
        match self {
            ScramMechanism::Sha256 => 32,
            ScramMechanism::Sha512 => 64,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredential {
    pub salt: Vec<u8>,
    pub iterations: i32,
    /// PBKDF2-HMAC(password, salt, iterations), `hash_bytes` long.
    pub salted_password: Vec<u8>,
}

/// Every user's credentials, by user name and mechanism.
pub type Credentials = BTreeMap<String, BTreeMap<ScramMechanism, ScramCredential>>;

/// Why a credential change is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum CredentialError {
    #[error("user name must be 1 to {USER_NAME_MAX_BYTES} bytes")]
    BadUserName,
    #[error("iterations {0} outside {ITERATIONS_MIN}..={ITERATIONS_MAX}")]
    BadIterations(i32),
    #[error("salt must be 1 to {SALT_MAX_BYTES} bytes")]
    BadSalt,
    #[error("salted password of {got} bytes; {mechanism:?} needs {want}")]
    BadSaltedPassword {
        mechanism: ScramMechanism,
        got: usize,
        want: usize,
    },
    #[error("user {user} has no {} credential", mechanism.name())]
    NotFound { user: String, mechanism: ScramMechanism },
}

/// One user's change: upsert (`Some`) or delete (`None`) per mechanism.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialChange {
    pub user: String,
    pub mechanism: ScramMechanism,
    pub credential: Option<ScramCredential>,
}

/// Checks a credential before it is stored.
pub fn validate(user: &str, mechanism: ScramMechanism, c: &ScramCredential) -> Result<(), CredentialError> {
    validate_user(user)?;
    if !(ITERATIONS_MIN..=ITERATIONS_MAX).contains(&c.iterations) {
        return Err(CredentialError::BadIterations(c.iterations));
    }
    if c.salt.is_empty() || c.salt.len() > SALT_MAX_BYTES {
        return Err(CredentialError::BadSalt);
    }
    if c.salted_password.len() != mechanism.hash_bytes() {
        return Err(CredentialError::BadSaltedPassword {
            mechanism,
            got: c.salted_password.len(),
            want: mechanism.hash_bytes(),
        });
    }
    Ok(())
}

pub fn validate_user(user: &str) -> Result<(), CredentialError> {
    if user.is_empty() || user.len() > USER_NAME_MAX_BYTES {
        return Err(CredentialError::BadUserName);
    }
    Ok(())
}

/// Applies one user's changes atomically: all are checked against the
/// store (as changed by the ones before) first, then all are applied.
pub fn apply(store: &mut Credentials, changes: &[CredentialChange]) -> Result<(), CredentialError> {
    let mut next = store
        .get(changes.first().map_or("", |c| c.user.as_str()))
        .cloned();
    for c in changes {
        let user_map = next.get_or_insert_with(BTreeMap::new);
        match &c.credential {
            Some(cred) => {
                validate(&c.user, c.mechanism, cred)?;
                user_map.insert(c.mechanism, cred.clone());
            }
            None => {
                validate_user(&c.user)?;
                if user_map.remove(&c.mechanism).is_none() {
                    return Err(CredentialError::NotFound {
                        user: c.user.clone(),
                        mechanism: c.mechanism,
                    });
                }
            }
        }
    }
    // Programmer error: a command carries one user's changes.
    assert!(
        changes.windows(2).all(|w| w[0].user == w[1].user),
        "one credential command per user"
    );
    if let (Some(first), Some(map)) = (changes.first(), next) {
        if map.is_empty() {
            store.remove(&first.user);
        } else {
            store.insert(first.user.clone(), map);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(m: ScramMechanism) -> ScramCredential {
        ScramCredential {
            salt: vec![1, 2, 3],
            iterations: 4096,
            salted_password: vec![7; m.hash_bytes()],
        }
    }

    fn upsert(user: &str, m: ScramMechanism) -> CredentialChange {
        CredentialChange {
            user: user.into(),
            mechanism: m,
            credential: Some(cred(m)),
        }
    }

    fn delete(user: &str, m: ScramMechanism) -> CredentialChange {
        CredentialChange {
            user: user.into(),
            mechanism: m,
            credential: None,
        }
    }

    #[test]
    fn upsert_then_delete_removes_the_user() {
        let mut s = Credentials::new();
        apply(
            &mut s,
            &[
                upsert("alice", ScramMechanism::Sha256),
                upsert("alice", ScramMechanism::Sha512),
            ],
        )
        .expect("upsert");
        assert_eq!(s["alice"].len(), 2);
        apply(&mut s, &[delete("alice", ScramMechanism::Sha256)]).expect("delete");
        assert_eq!(s["alice"].len(), 1);
        apply(&mut s, &[delete("alice", ScramMechanism::Sha512)]).expect("delete");
        assert!(s.is_empty());
    }

    #[test]
    fn a_refused_change_leaves_the_store_as_it_was() {
        let mut s = Credentials::new();
        apply(&mut s, &[upsert("bob", ScramMechanism::Sha256)]).expect("upsert");
        let before = s.clone();
        let mut bad = upsert("bob", ScramMechanism::Sha512);
        bad.credential.as_mut().expect("some").iterations = 100;
        let err = apply(&mut s, &[delete("bob", ScramMechanism::Sha256), bad]).expect_err("refused");
        assert_eq!(err, CredentialError::BadIterations(100));
        assert_eq!(s, before);
        let err = apply(&mut s, &[delete("bob", ScramMechanism::Sha512)]).expect_err("absent");
        assert!(matches!(err, CredentialError::NotFound { .. }));
        assert_eq!(s, before);
    }

    #[test]
    fn bad_credentials_are_refused() {
        let mut s = Credentials::new();
        let mut c = upsert("", ScramMechanism::Sha256);
        assert_eq!(apply(&mut s, &[c.clone()]), Err(CredentialError::BadUserName));
        c.user = "u".into();
        c.credential.as_mut().expect("some").salted_password = vec![0; 64];
        assert!(matches!(
            apply(&mut s, &[c.clone()]),
            Err(CredentialError::BadSaltedPassword {
                got: 64,
                want: 32,
                ..
            })
        ));
        c.credential.as_mut().expect("some").salted_password = vec![0; 32];
        c.credential.as_mut().expect("some").salt.clear();
        assert_eq!(apply(&mut s, &[c]), Err(CredentialError::BadSalt));
        assert!(s.is_empty());
    }

    #[test]
    fn the_store_round_trips_through_json() {
        let mut s = Credentials::new();
        apply(&mut s, &[upsert("carol", ScramMechanism::Sha512)]).expect("upsert");
        let json = serde_json::to_string(&s).expect("encode");
        assert!(json.contains("SCRAM-SHA-512"), "{json}");
        let back: Credentials = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, s);
    }
}
