//! `ferrolog cluster status|decommission`: the operator's view of the
//! control plane, through a node's admin listener (`GET /v1/cluster`,
//! `POST /v1/cluster/decommission/<id>`). Any node answers; the status is
//! read after a linearizable read barrier.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

/// How long the admin call may take (a read barrier waits for a leader).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// One HTTP/1.1 request with `Connection: close`; returns status code and body.
fn call(addr: SocketAddr, method: &str, path: &str) -> Result<(u16, String), String> {
    let mut s =
        TcpStream::connect_timeout(&addr, CALL_TIMEOUT).map_err(|e| format!("cannot reach {addr}: {e}"))?;
    s.set_read_timeout(Some(CALL_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(CALL_TIMEOUT))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("{addr}: {e}"))?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| format!("{addr}: {e}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr}: not an HTTP response"))?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{addr}: bad status line"))?;
    Ok((code, body.to_string()))
}

fn finish(r: Result<(u16, String), String>) -> ExitCode {
    match r {
        Ok((200, body)) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Ok((code, body)) => {
            eprintln!("error ({code}): {}", body.trim_end());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the cluster as JSON: term, leader, voters, members with state and liveness.
pub fn status(admin: SocketAddr) -> ExitCode {
    finish(call(admin, "GET", "/v1/cluster"))
}

/// Starts draining `node`; the controller removes it once no partition is assigned to it.
pub fn decommission(admin: SocketAddr, node: i32) -> ExitCode {
    finish(call(admin, "POST", &format!("/v1/cluster/decommission/{node}")))
}
