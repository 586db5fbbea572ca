//! `bench.sh quic`'s load generator: the same request over QUIC (quinn)
//! and over TLS 1.3 on TCP (rustls), as a browser would make it with
//! `quic = "tunnel"` and, after falling back, with `quic = "block"`.
//!
//! ```text
//! quicperf serve ADDR CERT_FILE        QUIC on UDP ADDR, TLS on TCP ADDR; writes
//!                                      its self-signed certificate (DER) to CERT_FILE
//! quicperf get quic|tls ADDR CERT_FILE BYTES COUNT
//!                                      COUNT requests of BYTES each, one new
//!                                      connection (handshake) per request; one
//!                                      JSON line per request
//! quicperf refuse ADDR COUNT           COUNT QUIC Initial-sized datagrams from a
//!                                      connected UDP socket, as a browser sends
//!                                      them: how long until "connection refused"
//! ```
//!
//! A request is the body's length (8 bytes, big-endian); the answer is
//! that many bytes. A request that fails prints `"error"` and how long it
//! took. quinn's socket is not connected, so it never hears of an ICMP
//! unreachable and would wait for its idle timeout; browsers' sockets are,
//! hence `refuse`. Bounded: every request times out after 60 s.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const NAME: &str = "quicperf.lab";
const LIMIT: Duration = Duration::from_secs(60);
/// The most a request may ask for.
const MAX_BODY: u64 = 1 << 30;

type Result<T> = std::result::Result<T, String>;

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve", addr, cert] => serve(addr, cert),
        ["get", proto, addr, cert, bytes, count] => get(proto, addr, cert, bytes, count),
        ["refuse", addr, count] => refuse(addr, count),
        _ => Err(
            "usage: quicperf serve ADDR CERT_FILE | get quic|tls ADDR CERT_FILE BYTES COUNT \
             | refuse ADDR COUNT"
                .into(),
        ),
    };
    if let Err(e) = result {
        eprintln!("quicperf: {e}");
        std::process::exit(1);
    }
}

fn addr_of(text: &str) -> Result<SocketAddr> {
    text.parse()
        .map_err(|e| format!("{text} is not an address: {e}"))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

/// A pattern body of `len` bytes.
fn body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn serve(addr: &str, cert_file: &str) -> Result<()> {
    let addr = addr_of(addr)?;
    let cert =
        rcgen::generate_simple_self_signed(vec![NAME.to_owned()]).map_err(|e| e.to_string())?;
    let cert_der = CertificateDer::from(cert.cert);
    std::fs::write(cert_file, cert_der.as_ref()).map_err(|e| format!("write {cert_file}: {e}"))?;
    let key = PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let config = Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert_der], key)
            .map_err(|e| format!("server certificate: {e}"))?,
    );

    let tls = {
        let config = Arc::clone(&config);
        let listener = TcpListener::bind(addr).map_err(|e| format!("TCP {addr}: {e}"))?;
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let config = Arc::clone(&config);
                std::thread::spawn(move || {
                    let _ = serve_tls(config, stream);
                });
            }
        })
    };

    let quic = rustls_quic_server(&config)?;
    runtime()?.block_on(async move {
        let endpoint =
            quinn::Endpoint::server(quic, addr).map_err(|e| format!("UDP {addr}: {e}"))?;
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else {
                    return;
                };
                while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                    let Ok(request) = recv.read_to_end(8).await else {
                        return;
                    };
                    let Some(len) = length(&request) else { return };
                    let _ = send.write_all(&body(len)).await;
                    let _ = send.finish();
                    let _ = send.stopped().await;
                }
            });
        }
        Ok::<_, String>(())
    })?;
    let _ = tls.join();
    Ok(())
}

fn rustls_quic_server(config: &Arc<rustls::ServerConfig>) -> Result<quinn::ServerConfig> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from((**config).clone())
        .map_err(|e| format!("QUIC server config: {e}"))?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
}

/// The requested length, if the request is one.
fn length(request: &[u8]) -> Option<usize> {
    let len = u64::from_be_bytes(request.try_into().ok()?);
    (len <= MAX_BODY)
        .then_some(len)
        .and_then(|l| usize::try_from(l).ok())
}

fn serve_tls(config: Arc<rustls::ServerConfig>, stream: TcpStream) -> Result<()> {
    stream
        .set_read_timeout(Some(LIMIT))
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let connection = rustls::ServerConnection::new(config).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(connection, stream);
    let mut request = [0; 8];
    tls.read_exact(&mut request).map_err(|e| e.to_string())?;
    let len = length(&request).ok_or("bad request")?;
    tls.write_all(&body(len)).map_err(|e| e.to_string())?;
    tls.conn.send_close_notify();
    tls.flush().map_err(|e| e.to_string())?;
    Ok(())
}

fn client_config(cert_file: &str) -> Result<rustls::ClientConfig> {
    let der = std::fs::read(cert_file).map_err(|e| format!("read {cert_file}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(der))
        .map_err(|e| format!("{cert_file}: {e}"))?;
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn get(proto: &str, addr: &str, cert_file: &str, bytes: &str, count: &str) -> Result<()> {
    let addr = addr_of(addr)?;
    let bytes: usize = bytes.parse().map_err(|e| format!("BYTES {bytes}: {e}"))?;
    let count: usize = count.parse().map_err(|e| format!("COUNT {count}: {e}"))?;
    let config = client_config(cert_file)?;
    let expected = body(bytes);
    let request = u64::try_from(bytes)
        .map_err(|e| e.to_string())?
        .to_be_bytes();
    for _ in 0..count {
        let start = Instant::now();
        let outcome = match proto {
            "quic" => get_quic(&config, addr, &request),
            "tls" => get_tls(&config, addr, &request),
            other => return Err(format!("{other} is neither quic nor tls")),
        };
        let total = start.elapsed().as_secs_f64() * 1e3;
        match outcome {
            Ok(Got { first, last, body }) if body == expected => println!(
                "{{\"proto\": \"{proto}\", \"bytes\": {bytes}, \"first_ms\": {:.2}, \"total_ms\": {:.2}}}",
                first.as_secs_f64() * 1e3,
                last.as_secs_f64() * 1e3
            ),
            Ok(Got { body, .. }) => println!(
                "{{\"proto\": \"{proto}\", \"bytes\": {bytes}, \"error\": \"got {} bytes, not the body\", \"total_ms\": {total:.2}}}",
                body.len()
            ),
            Err(e) => println!(
                "{{\"proto\": \"{proto}\", \"bytes\": {bytes}, \"error\": {:?}, \"total_ms\": {total:.2}}}",
                e
            ),
        }
    }
    Ok(())
}

/// What one request got: when its first and last bytes came (from the
/// start, before the connection's close), and the body.
struct Got {
    first: Duration,
    last: Duration,
    body: Vec<u8>,
}

/// One request on a new QUIC connection.
fn get_quic(config: &rustls::ClientConfig, addr: SocketAddr, request: &[u8]) -> Result<Got> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(config.clone())
        .map_err(|e| format!("QUIC client config: {e}"))?;
    runtime()?.block_on(async move {
        let start = Instant::now();
        let work = async {
            let mut endpoint = quinn::Endpoint::client("0.0.0.0:0".parse().map_err(|_| "addr")?)
                .map_err(|e| format!("client socket: {e}"))?;
            endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
            let connection = endpoint
                .connect(addr, NAME)
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
            send.write_all(request).await.map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())?;
            let mut got = Vec::new();
            let mut first = None;
            let mut buf = vec![0; 64 * 1024];
            while let Some(n) = recv.read(&mut buf).await.map_err(|e| e.to_string())? {
                first.get_or_insert_with(|| start.elapsed());
                got.extend_from_slice(&buf[..n]);
            }
            let last = start.elapsed();
            connection.close(0u32.into(), b"done");
            endpoint.wait_idle().await;
            Ok::<_, String>(Got {
                first: first.unwrap_or(last),
                last,
                body: got,
            })
        };
        tokio::time::timeout(LIMIT, work)
            .await
            .map_err(|_| "timed out".to_owned())?
    })
}

/// One request on a new TCP connection with TLS 1.3.
fn get_tls(config: &rustls::ClientConfig, addr: SocketAddr, request: &[u8]) -> Result<Got> {
    let start = Instant::now();
    let stream =
        TcpStream::connect_timeout(&addr, LIMIT).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(LIMIT))
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from(NAME).map_err(|e| e.to_string())?;
    let connection =
        rustls::ClientConnection::new(Arc::new(config.clone()), name).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(connection, stream);
    tls.write_all(request).map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let mut first = None;
    let mut buf = vec![0; 64 * 1024];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                first.get_or_insert_with(|| start.elapsed());
                got.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    let last = start.elapsed();
    Ok(Got {
        first: first.unwrap_or(last),
        last,
        body: got,
    })
}

/// What a browser sees of a refused QUIC attempt.
fn refuse(addr: &str, count: &str) -> Result<()> {
    let addr = addr_of(addr)?;
    let count: usize = count.parse().map_err(|e| format!("COUNT {count}: {e}"))?;
    // A long header, version 1: what every QUIC connection starts with.
    let mut initial = vec![0; 1200];
    initial[..5].copy_from_slice(&[0xc3, 0, 0, 0, 1]);
    for _ in 0..count {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        socket.connect(addr).map_err(|e| e.to_string())?;
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let start = Instant::now();
        socket.send(&initial).map_err(|e| e.to_string())?;
        let mut buf = [0; 1500];
        let what = match socket.recv(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => "refused".to_owned(),
            Err(e) => format!("no refusal: {e}"),
            Ok(n) => format!("an answer of {n} bytes"),
        };
        println!(
            "{{\"proto\": \"quic\", \"bytes\": 0, \"error\": {what:?}, \"total_ms\": {:.2}}}",
            start.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(())
}
