//! Certificates for the TLS tests, made with `openssl` (tools/setup.sh
//! installs it) in a test's directory.

use std::path::Path;
use std::process::Command;

/// Runs `openssl ARGS` in `dir`; panics with its stderr if it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl (tools/setup.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA `ca` (ca.pem, ca.key) in `dir`.
pub fn make_ca(dir: &Path, ca: &str) {
    let subj = format!("/CN={ca}");
    let (key, pem) = (format!("{ca}.key"), format!("{ca}.pem"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &subj,
            "-keyout",
            &key,
            "-out",
            &pem,
        ],
    );
}
