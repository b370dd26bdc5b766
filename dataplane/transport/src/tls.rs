//! TLS between nodes: mutual TLS (rustls, ring provider) on the control-plane
//! RPC and on the replication data links, when the node is configured with a
//! certificate, its key and the CA that signs every node's certificate.
//!
//! Both sides prove who they are: the dialling node checks that the
//! listener's certificate chains to the CA and names the address it dialled
//! (an IP address SAN for an address like `10.0.0.1:9093`, a DNS SAN for a
//! host name), and the listener requires a client certificate that chains to
//! the same CA. A node without TLS, or with a certificate of another CA,
//! cannot talk to the cluster: its connections fail the handshake and are
//! closed with one warning naming the peer.
//!
//! A connection is a [`NodeStream`]: plain TCP when TLS is off (the data
//! link keeps its vectored `sendmsg` fast path there), or a rustls stream.

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// A handshake that has not finished after this long fails (a peer that
/// connects and says nothing, or speaks something else).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The files of a node's TLS identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeTlsFiles {
    /// PEM certificate chain, this node's certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM certificates of the CA(s) every node's certificate chains to.
    pub ca: PathBuf,
}

/// The rustls configurations of both directions, built once at start and
/// shared read-only by the control executor and every shard.
pub struct NodeTls {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeTls")
    }
}

/// The PEM certificates of the file at `path` (at least one); the error names the file.
/// Shared with the Kafka listener's TLS settings.
pub fn pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in the file", path.display()));
    }
    Ok(certs)
}

impl NodeTls {
    /// Reads and checks the files; the error names the file and the reason.
    pub fn from_files(files: &NodeTlsFiles) -> Result<NodeTls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = pem_certs(&files.cert)?;
        let key =
            PrivateKeyDer::from_pem_file(&files.key).map_err(|e| format!("{}: {e}", files.key.display()))?;
        let mut roots = RootCertStore::empty();
        for c in pem_certs(&files.ca)? {
            roots.add(c).map_err(|e| format!("{}: {e}", files.ca.display()))?;
        }
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| format!("{}: {e}", files.ca.display()))?;
        let both = |e: rustls::Error| format!("{} and {}: {e}", files.cert.display(), files.key.display());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(both)?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(both)?;
        Ok(NodeTls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// The listener's side of a handshake on an accepted connection.
    pub async fn accept(&self, stream: TcpStream) -> io::Result<NodeStream> {
        let accept = futures_rustls::TlsAcceptor::from(self.server.clone()).accept(stream);
        let s = bounded(accept).await?;
        Ok(NodeStream::Tls(Box::new(s.into())))
    }

    /// The dialling side of a handshake with the listener at `host` (an IP
    /// address or a DNS name, as dialled; its certificate must name it).
    pub async fn connect(&self, host: &str, stream: TcpStream) -> io::Result<NodeStream> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {e}")))?;
        let connect = futures_rustls::TlsConnector::from(self.client.clone()).connect(name, stream);
        let s = bounded(connect).await?;
        Ok(NodeStream::Tls(Box::new(s.into())))
    }
}

async fn bounded<T>(handshake: impl std::future::Future<Output = io::Result<T>>) -> io::Result<T> {
    let timeout = async {
        glommio::timer::sleep(HANDSHAKE_TIMEOUT).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("TLS handshake not done within {HANDSHAKE_TIMEOUT:?}"),
        ))
    };
    futures_lite::future::or(handshake, timeout)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake: {e}")))
}

/// The host part of a `host:port` address (brackets of an IPv6 literal
/// removed), as a certificate must name it.
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// A node-to-node connection: plain TCP or TLS over TCP.
pub enum NodeStream {
    Plain(TcpStream),
    Tls(Box<futures_rustls::TlsStream<TcpStream>>),
}

impl NodeStream {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            NodeStream::Plain(s) => s,
            NodeStream::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for NodeStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            NodeStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for NodeStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            NodeStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            NodeStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_flush(cx),
            NodeStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_close(cx),
            NodeStream::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_of_addresses() {
        assert_eq!(host_of("10.0.0.1:9093"), "10.0.0.1");
        assert_eq!(host_of("node-1.example:9093"), "node-1.example");
        assert_eq!(host_of("[::1]:9093"), "::1");
        assert_eq!(host_of("127.0.0.1"), "127.0.0.1");
    }
}
