//! TLS and SASL on the Kafka listener, end to end: the `ferrolog` binary with
//! real clients (confluent-kafka, kcat, kafka-python) and raw sockets.
//!
//! The certificates are made by the test with `openssl` (tools/setup.sh
//! installs it): a CA, and a server certificate for 127.0.0.1/localhost it
//! signed. The client scripts in `tests/clients/` check their scenario and
//! exit non-zero with `FAIL: ...` on the first mismatch.

mod common;
use common::certs::openssl;
use common::{free_port, output_bounded, spawn_with_stderr, wait_exit, wait_for_line, SERVING};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ferrolog");
const CLIENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");
const START_TIMEOUT: Duration = Duration::from_secs(30);
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
const ADMIN: (&str, &str) = ("admin", "admin-secret");

/// A CA, a server certificate it signed for 127.0.0.1 and localhost, and a
/// client certificate it signed.
struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn make_certs(dir: &Path) -> Certs {
    let p = |name: &str| dir.join(name);
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=ferrolog-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext.cnf");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=client1",
            "-keyout",
            "client.key",
            "-out",
            "client.csr",
        ],
    );
    std::fs::write(p("client.cnf"), "extendedKeyUsage=clientAuth\n").expect("client.cnf");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "client.cnf",
            "-out",
            "client.pem",
        ],
    );
    Certs {
        ca: p("ca.pem"),
        cert: p("server.pem"),
        key: p("server.key"),
        client_cert: p("client.pem"),
        client_key: p("client.key"),
    }
}

struct Broker {
    child: Child,
    lines: mpsc::Receiver<String>,
    addr: String,
}

impl Drop for Broker {
    /// A test that fails before `stop` leaves no broker running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Broker {
    fn start(dir: &Path, extra: &[&str]) -> Broker {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(BIN);
        cmd.args(["start", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--kafka-addr", &addr, "--admin-addr", "none"])
            .args(extra);
        let (child, lines) = spawn_with_stderr(cmd);
        let mut b = Broker { child, lines, addr };
        let seen = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for_line(&b.lines, SERVING, START_TIMEOUT)
        }));
        if seen.is_err() {
            let _ = b.child.kill();
            panic!("broker did not start");
        }
        b
    }

    /// Every log line so far.
    fn log(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    fn python(&mut self, script: &str, args: &[&str]) -> Vec<String> {
        let mut cmd = Command::new("python3");
        cmd.arg(Path::new(CLIENTS).join(script))
            .args(["--bootstrap", &self.addr])
            .args(args)
            .current_dir(CLIENTS)
            // cargo's LD_LIBRARY_PATH holds rdkafka-sys's librdkafka (no SSL); kcat
            // must load the system one.
            .env_remove("LD_LIBRARY_PATH")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        let (status, out, err) = output_bounded(cmd, SCRIPT_TIMEOUT);
        let log = self.log();
        println!("--- {script} ---\n{out}\n{err}");
        if !status.success() {
            let fails: Vec<&str> = err.lines().filter(|l| l.starts_with("FAIL: ")).collect();
            let tail: Vec<&str> = err.lines().rev().take(40).collect();
            panic!(
                "{script} failed ({status}): {fails:?}\n--- stderr tail ---\n{}\n--- broker log ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                log.join("\n")
            );
        }
        assert!(self.child.try_wait().expect("wait").is_none(), "broker exited");
        log
    }

    fn stop(mut self) {
        // SAFETY: a signal to the child this test spawned and has not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = wait_exit(&mut self.child, EXIT_TIMEOUT);
        assert_eq!(status.code(), Some(0), "SIGTERM must exit 0");
    }
}

fn users_file(dir: &Path) -> PathBuf {
    let path = dir.join("users");
    std::fs::write(&path, format!("# bootstrap users\n{}:{}\n", ADMIN.0, ADMIN.1)).expect("users file");
    path
}

fn has_line(log: &[String], needle: &str) -> bool {
    log.iter().any(|l| l.contains(needle))
}

/// confluent-kafka and kcat over SASL_SSL with SCRAM, credentials made with the
/// Admin API by the bootstrap user; wrong passwords, garbage TLS, requests
/// before authentication and truncated SASL exchanges close only their own
/// connection.
#[test]
fn sasl_ssl_scram_with_real_clients_and_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(dir.path());
    let users = users_file(dir.path());
    let mut b = Broker::start(
        dir.path(),
        &[
            "--kafka-tls-cert",
            certs.cert.to_str().expect("utf8"),
            "--kafka-tls-key",
            certs.key.to_str().expect("utf8"),
            "--require-auth",
            "true",
            "--sasl-users-file",
            users.to_str().expect("utf8"),
        ],
    );
    let log = b.python(
        "sasl_ssl.py",
        &[
            "--ca",
            certs.ca.to_str().expect("utf8"),
            "--admin-user",
            ADMIN.0,
            "--admin-password",
            ADMIN.1,
        ],
    );
    for needle in [
        "TLS handshake failed",
        "request before SASL authentication on a listener that requires it",
        "SASL authentication failed",
        "SASL authenticated",
    ] {
        assert!(
            has_line(&log, needle),
            "no broker log line with {needle:?}:\n{}",
            log.join("\n")
        );
    }
    b.stop();
}

/// Client certificates checked against --kafka-tls-client-ca: a client with a
/// certificate the CA signed is served, one without is refused at the
/// handshake; with `requested` one without is served too.
#[test]
fn tls_client_certificates_required_and_requested() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(dir.path());
    let s = |p: &Path| p.to_str().expect("utf8").to_string();
    for mode in ["required", "requested"] {
        let node = dir.path().join(mode);
        std::fs::create_dir(&node).expect("node dir");
        let mut b = Broker::start(
            &node,
            &[
                "--kafka-tls-cert",
                &s(&certs.cert),
                "--kafka-tls-key",
                &s(&certs.key),
                "--kafka-tls-client-ca",
                &s(&certs.ca),
                "--kafka-tls-client-auth",
                mode,
            ],
        );
        let log = b.python(
            "tls_client_auth.py",
            &[
                "--ca",
                &s(&certs.ca),
                "--cert",
                &s(&certs.client_cert),
                "--key",
                &s(&certs.client_key),
                "--without-cert",
                if mode == "required" { "refused" } else { "served" },
            ],
        );
        if mode == "required" {
            assert!(
                has_line(&log, "TLS handshake failed"),
                "no handshake failure logged:\n{}",
                log.join("\n")
            );
        }
        b.stop();
    }
}

/// kafka-python with SASL PLAIN over plain text, against the users file.
#[test]
fn sasl_plaintext_plain_with_kafka_python() {
    let dir = tempfile::tempdir().expect("tempdir");
    let users = users_file(dir.path());
    let mut b = Broker::start(
        dir.path(),
        &[
            "--require-auth",
            "true",
            "--sasl-users-file",
            users.to_str().expect("utf8"),
        ],
    );
    b.python(
        "sasl_plain_kafka_python.py",
        &["--user", ADMIN.0, "--password", ADMIN.1],
    );
    b.stop();
}

/// The principal SASL authenticates is what ACLs check: with authorization on and
/// the users file's admin a superuser, a SCRAM user made by admin is refused until
/// admin grants it an ACL.
#[test]
fn sasl_principals_are_authorized_by_acls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let users = users_file(dir.path());
    let superuser = format!("User:{}", ADMIN.0);
    let mut b = Broker::start(
        dir.path(),
        &[
            "--require-auth",
            "true",
            "--sasl-users-file",
            users.to_str().expect("utf8"),
            "--authorization",
            "true",
            "--super-users",
            &superuser,
        ],
    );
    b.python(
        "sasl_acls.py",
        &["--admin-user", ADMIN.0, "--admin-password", ADMIN.1],
    );
    b.stop();
}

/// Credentials created with AlterUserScramCredentials are cluster metadata:
/// they survive a restart (the restarted node has no users file to fall back on).
#[test]
fn scram_credentials_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(dir.path());
    let users = users_file(dir.path());
    let tls = [
        "--kafka-tls-cert",
        certs.cert.to_str().expect("utf8"),
        "--kafka-tls-key",
        certs.key.to_str().expect("utf8"),
        "--require-auth",
        "true",
    ];
    let ca = certs.ca.to_str().expect("utf8");
    let mut first = tls.to_vec();
    first.extend(["--sasl-users-file", users.to_str().expect("utf8")]);
    let mut b = Broker::start(dir.path(), &first);
    b.python(
        "sasl_restart.py",
        &[
            "--ca",
            ca,
            "--step",
            "create",
            "--admin-user",
            ADMIN.0,
            "--admin-password",
            ADMIN.1,
        ],
    );
    b.stop();
    let mut b = Broker::start(dir.path(), &tls);
    b.python("sasl_restart.py", &["--ca", ca, "--step", "check"]);
    b.stop();
}

/// Unusable security settings stop the start with a clear message (exit 2).
#[test]
fn bad_security_settings_are_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(dir.path());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    let bad_users = dir.path().join("bad-users");
    std::fs::write(&bad_users, "no-colon-here\n").expect("write");
    let missing = dir.path().join("missing.pem");
    let s = |p: &Path| p.to_str().expect("utf8").to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--kafka-tls-cert".into(),
                s(&garbage),
                "--kafka-tls-key".into(),
                s(&certs.key),
            ],
            "no PEM certificate",
        ),
        (
            vec![
                "--kafka-tls-cert".into(),
                s(&certs.cert),
                "--kafka-tls-key".into(),
                s(&missing),
            ],
            "missing.pem",
        ),
        (
            vec![
                "--kafka-tls-cert".into(),
                s(&certs.cert),
                "--kafka-tls-key".into(),
                s(&certs.ca),
            ],
            "invalid TLS settings",
        ),
        (
            vec![
                "--node-tls-cert".into(),
                s(&garbage),
                "--node-tls-key".into(),
                s(&certs.key),
                "--node-tls-ca".into(),
                s(&certs.ca),
            ],
            "invalid node TLS settings",
        ),
        (
            vec![
                "--node-tls-cert".into(),
                s(&certs.cert),
                "--node-tls-key".into(),
                s(&certs.key),
                "--node-tls-ca".into(),
                s(&missing),
            ],
            "missing.pem",
        ),
        (
            vec!["--sasl-users-file".into(), s(&bad_users)],
            "expected NAME:PASSWORD",
        ),
        (
            vec!["--sasl-mechanisms".into(), "GSSAPI".into()],
            "unknown SASL mechanism",
        ),
        (
            vec![
                "--sasl-mechanisms".into(),
                "none".into(),
                "--require-auth".into(),
                "true".into(),
            ],
            "needs at least one SASL mechanism",
        ),
    ];
    for (args, needle) in cases {
        let mut cmd = Command::new(BIN);
        cmd.args(["start", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--kafka-addr",
                &format!("127.0.0.1:{}", free_port()),
                "--admin-addr",
                "none",
            ])
            .args(&args)
            .env("NO_COLOR", "1");
        let (status, _, err) = output_bounded(cmd, START_TIMEOUT);
        assert_eq!(status.code(), Some(2), "{args:?} must exit 2: {err}");
        assert!(err.contains(needle), "{args:?}: no {needle:?} in: {err}");
    }
}
