//! A local TLS endpoint in front of a plain one (the gateway, RabbitMQ, the S3 server), for the
//! TLS tests: a self-signed certificate for 127.0.0.1 made per test, TLS ended by rustls and
//! the bytes relayed both ways, so the peer behind it is the real service.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

pub struct TlsFront {
    /// Where the TLS endpoint listens.
    pub addr: SocketAddr,
    /// Its certificate (PEM): what a client must be told to trust.
    pub cert_pem: String,
    relay: JoinHandle<()>,
}

impl TlsFront {
    /// A TLS endpoint on a free port of 127.0.0.1 whose connections go on to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let certified = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
        ])
        .expect("a self-signed certificate");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .expect("the certificate and its key");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let addr = listener.local_addr().expect("bound address");
        let relay = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let Ok(mut plain) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        Self {
            addr,
            cert_pem: certified.cert.pem(),
            relay,
        }
    }

    /// Writes the certificate to a file in `dir` (for `VTX_TLS_CA_FILE`).
    pub fn write_cert(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join(format!("front-{}.pem", self.addr.port()));
        std::fs::write(&path, &self.cert_pem).expect("certificate file");
        path
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.relay.abort();
    }
}
