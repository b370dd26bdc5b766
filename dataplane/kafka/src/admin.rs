//! The admin HTTP listener (`--admin-addr`, Redpanda's port 9644 by
//! default): `GET /metrics` in the Prometheus text format and `GET
//! /v1/status` as JSON (node, shards, partitions with their offsets).
//!
//! It runs on the controller shard only, off the hot path of the others: a
//! scrape asks every shard for a snapshot of its counters over the
//! cross-shard channels (one hop per shard per scrape) and renders them
//! here. HTTP is the least that scrapers and curl need: one GET per
//! connection, answered with `Connection: close`. Every input is bounded
//! (request head size, time to send it, concurrent connections) and
//! anything else gets a 4xx, never a panic.

use crate::metrics::{render_prometheus, ShardSnapshot};
use crate::shard::{local, Shard};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use serde_json::json;
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// Admin connections served at once; more are closed at accept.
pub const ADMIN_CONNECTIONS_MAX: usize = 64;
/// Largest request head (request line and headers) read.
const REQUEST_HEAD_BYTES_MAX: usize = 8 << 10;
/// Time a client has to send its request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const ADMIN_BACKLOG: u32 = 64;
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds the admin listener on this shard (the controller shard) and
/// starts serving; returns the task and the bound address (port 0 picks a
/// free one). Unlike the Kafka listener the socket is exclusive: a second
/// process on the same address is an error, not a silent split.
pub fn start(addr: SocketAddr) -> Result<(glommio::task::JoinHandle<()>, SocketAddr), String> {
    let listener = crate::server::bind(addr, ADMIN_BACKLOG, false)
        .map_err(|e| format!("cannot listen on admin address {addr}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("admin listener address: {e}"))?;
    let shard = local();
    let started = Instant::now();
    Ok((
        glommio::spawn_local(accept_loop(shard, listener, started)).detach(),
        bound,
    ))
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, started: Instant) {
    let open = Rc::new(Cell::new(0usize));
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!("admin accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if open.get() >= ADMIN_CONNECTIONS_MAX {
            debug!("admin connection refused: {ADMIN_CONNECTIONS_MAX} already open");
            continue;
        }
        open.set(open.get() + 1);
        let open = open.clone();
        let shard = shard.clone();
        glommio::spawn_local(async move {
            if let Err(e) = serve(&shard, stream, started).await {
                debug!("admin connection: {e}");
            }
            open.set(open.get() - 1);
        })
        .detach();
    }
}

/// An HTTP response: status line, content type and body.
struct Response {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn text(status: &'static str, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

async fn serve(shard: &Rc<Shard>, mut stream: TcpStream, started: Instant) -> std::io::Result<()> {
    let head = futures_lite::future::or(read_head(&mut stream), async {
        glommio::timer::sleep(REQUEST_TIMEOUT).await;
        Err(Response::text(
            "408 Request Timeout",
            "request head not received in time\n",
        ))
    })
    .await;
    let response = match head {
        Err(r) => r,
        Ok(head) => match parse_request_line(&head) {
            Err(r) => r,
            Ok((method, path)) => route(shard, method, path, started).await,
        },
    };
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(response.body.as_bytes()).await?;
    stream.close().await
}

/// Reads up to the blank line that ends the request head.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, Response> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = find(&head, b"\r\n\r\n") {
            head.truncate(end);
            return Ok(head);
        }
        if head.len() > REQUEST_HEAD_BYTES_MAX {
            return Err(Response::text(
                "431 Request Header Fields Too Large",
                format!("request head over {REQUEST_HEAD_BYTES_MAX} bytes\n"),
            ));
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(Response::text("400 Bad Request", "incomplete request\n")),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `GET /path HTTP/1.1` -> ("GET", "/path"); the query string is ignored.
fn parse_request_line(head: &[u8]) -> Result<(&str, &str), Response> {
    let bad = || Response::text("400 Bad Request", "malformed request line\n");
    let line = head.split(|&b| b == b'\r').next().ok_or_else(bad)?;
    let line = std::str::from_utf8(line).map_err(|_| bad())?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Err(bad());
    }
    let path = target.split('?').next().unwrap_or(target);
    Ok((method, path))
}

async fn route(shard: &Rc<Shard>, method: &str, path: &str, started: Instant) -> Response {
    const ENDPOINTS: &str = "GET /metrics (Prometheus), GET /v1/status (JSON), GET /v1/cluster (JSON), \
                             POST /v1/cluster/decommission/<node id>\n";
    if path == "/v1/cluster" || path.starts_with("/v1/cluster/") {
        return cluster_route(shard, method, path, ENDPOINTS).await;
    }
    if !matches!(path, "/metrics" | "/v1/status") {
        return Response::text("404 Not Found", ENDPOINTS);
    }
    if method != "GET" {
        return Response::text("405 Method Not Allowed", ENDPOINTS);
    }
    let snapshots = match gather(shard).await {
        Ok(s) => s,
        Err(e) => return Response::text("503 Service Unavailable", format!("{e}\n")),
    };
    if path == "/metrics" {
        Response {
            status: "200 OK",
            content_type: PROMETHEUS_CONTENT_TYPE,
            body: render_prometheus(&snapshots),
        }
    } else {
        Response {
            status: "200 OK",
            content_type: "application/json",
            body: status_json(shard, &snapshots, started.elapsed()),
        }
    }
}

/// `GET /v1/cluster`: the control plane's view, after a linearizable read
/// barrier (so a follower answers no older than the leader committed).
/// `POST /v1/cluster/decommission/<id>`: starts draining a node.
async fn cluster_route(shard: &Rc<Shard>, method: &str, path: &str, endpoints: &'static str) -> Response {
    let Some(control) = shard.smp.control_shard() else {
        return Response::text("503 Service Unavailable", "this node runs no controller\n");
    };
    let decommission = match path.strip_prefix("/v1/cluster/decommission/") {
        Some(id) => match id.parse::<i32>() {
            Ok(id) if method == "POST" => Some(id),
            Ok(_) => return Response::text("405 Method Not Allowed", endpoints),
            Err(_) => return Response::text("400 Bad Request", format!("{id:?} is not a node id\n")),
        },
        None if path == "/v1/cluster" && method == "GET" => None,
        None if path == "/v1/cluster" => return Response::text("405 Method Not Allowed", endpoints),
        None => return Response::text("404 Not Found", endpoints),
    };
    let answer = shard
        .smp
        .submit_to(control, move || async move {
            let c = ferrolog_controlplane::controller::local();
            match decommission {
                Some(id) => c
                    .decommission(ferrolog_model::NodeId(id))
                    .await
                    .map(|()| json!({ "decommissioning": id }))
                    .map_err(|e| e.to_string()),
                None => c.status(true).await.map_err(|e| e.to_string()),
            }
        })
        .await;
    match answer {
        Ok(Ok(v)) => Response {
            status: "200 OK",
            content_type: "application/json",
            body: format!("{v}\n"),
        },
        Ok(Err(e)) if decommission.is_some() => Response::text("409 Conflict", format!("{e}\n")),
        Ok(Err(e)) => Response::text("503 Service Unavailable", format!("{e}\n")),
        Err(e) => Response::text("503 Service Unavailable", format!("{e}\n")),
    }
}

/// Every shard's snapshot, in shard order.
async fn gather(shard: &Rc<Shard>) -> Result<Vec<ShardSnapshot>, String> {
    shard
        .smp
        .invoke_on_all(|| async { local().metrics_snapshot() })
        .await
        .into_iter()
        .map(|r| r.map_err(|e| e.to_string()))
        .collect()
}

fn status_json(shard: &Shard, snapshots: &[ShardSnapshot], uptime: Duration) -> String {
    let c = &shard.config;
    let shards: Vec<_> = snapshots
        .iter()
        .map(|s| {
            json!({
                "shard": s.shard,
                "cpu": s.cpu,
                "partitions": s.partitions.len(),
                "connections_open": s.connections_open,
                "batch_cache_bytes": s.batch_cache_bytes,
            })
        })
        .collect();
    let partitions: Vec<_> = snapshots
        .iter()
        .flat_map(|s| {
            s.partitions.iter().map(move |p| {
                json!({
                    "topic": p.topic,
                    "partition": p.partition,
                    "shard": s.shard,
                    "start_offset": p.start_offset,
                    "high_watermark": p.high_watermark,
                    "log_end_offset": p.log_end_offset,
                    "size_bytes": p.size_bytes,
                    "segments": p.segments,
                    "producers": p.producers,
                })
            })
        })
        .collect();
    let status = json!({
        "node_id": c.node_id.0,
        "cluster_id": shard.metadata().cluster_id.clone(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_ms": u64::try_from(uptime.as_millis()).unwrap_or(u64::MAX),
        "kafka_addr": c.listen.to_string(),
        "advertised": format!("{}:{}", c.advertised_host, c.advertised_port),
        "data_dir": c.data_dir.display().to_string(),
        "topics": shard.topics().topics.len(),
        "shards": shards,
        "partitions": partitions,
    });
    let mut text = status.to_string();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_parse_or_are_rejected() {
        assert_eq!(
            parse_request_line(b"GET /metrics HTTP/1.1\r\nHost: x").ok(),
            Some(("GET", "/metrics"))
        );
        assert_eq!(
            parse_request_line(b"GET /v1/status?pretty HTTP/1.0").ok(),
            Some(("GET", "/v1/status"))
        );
        for bad in [
            &b""[..],
            b"GET /metrics",
            b"GET metrics HTTP/1.1",
            b"GET /metrics SPDY/3",
            b"GET /a b HTTP/1.1",
            b"\xff\xfe / HTTP/1.1",
        ] {
            let r = parse_request_line(bad).expect_err("malformed");
            assert_eq!(r.status, "400 Bad Request", "{bad:?}");
        }
    }
}
