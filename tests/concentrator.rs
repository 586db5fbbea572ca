//! The concentrator on loopback, with real sockets: a client speaking the
//! connect header over an MPTCP socket, the concentrator, and a TCP server
//! standing in for the destination.
//!
//! Addresses: the concentrator listens on 127.0.0.1, clients bind
//! 127.0.0.2, destination servers listen on 127.0.0.3 and 127.0.0.4, so a
//! server can tell the concentrator's outbound connection from the
//! client's. Every test is bounded in time and runs its own concentrator.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use mpbond::auth::{random_nonce, sign_request, verify_epoch, Epoch, Key};
use mpbond::concentrator::Concentrator;
use mpbond::config::concentrator::{ClientConfig, PolicyConfig};
use mpbond::config::{ConcentratorConfig, ControlConfig};
use mpbond::wire::convert::{self, ClientId, ErrorCode, Response};

const CONCENTRATOR_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const OTHER_SERVER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(300);
const TEST_TIMEOUT: Duration = Duration::from_secs(30);
const CLIENT_ID: &str = "lab";

fn client_id() -> ClientId {
    CLIENT_ID.parse().expect("valid id")
}

/// Fails the test if `test` takes longer than [`TEST_TIMEOUT`].
async fn bounded<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test timed out")
}

fn config(key: &Key, max_connections: usize, allow: &[&str]) -> ConcentratorConfig {
    ConcentratorConfig {
        listen: SocketAddr::from((CONCENTRATOR_IP, 0)),
        handshake_timeout: HANDSHAKE_TIMEOUT,
        connect_timeout: Duration::from_secs(2),
        send_buffer: ConcentratorConfig::DEFAULT_SEND_BUFFER,
        clients: vec![ClientConfig {
            id: client_id(),
            key: key.clone(),
            max_connections,
            tunnel: None,
            public_key: None,
        }],
        policy: PolicyConfig {
            allow: allow.iter().map(|p| p.parse().expect("prefix")).collect(),
            deny: Vec::new(),
        },
        datagram: None,
        private_key: None,
        // Unused: only `concentrator::run` serves it.
        control: ControlConfig {
            socket: "/run/mpbond/concentrator-test.sock".into(),
            metrics: None,
        },
    }
}

/// A running concentrator; stops when dropped.
struct Running {
    addr: SocketAddr,
    key: Key,
    epoch: Epoch,
    _stop: oneshot::Sender<()>,
}

/// Starts a concentrator that lets clients reach all of 127.0.0.0/8.
fn start(max_connections: usize) -> Running {
    start_with(max_connections, &["127.0.0.0/8"])
}

/// Sends the concentrator's logs to the test's output, shown when it fails.
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MPBOND_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("mpbond=debug")),
        )
        .with_test_writer()
        .try_init();
}

fn start_with(max_connections: usize, allow: &[&str]) -> Running {
    start_keyed(Key::generate().expect("random key"), max_connections, allow)
}

fn start_keyed(key: Key, max_connections: usize, allow: &[&str]) -> Running {
    init_logs();
    let (concentrator, addr) =
        Concentrator::bind(config(&key, max_connections, allow)).expect("bind");
    assert_eq!(addr.ip(), IpAddr::V4(CONCENTRATOR_IP));
    assert!(
        concentrator.is_multipath(),
        "this kernel offers MPTCP: the listener must use it"
    );
    let epoch = concentrator.epoch();
    assert!(epoch.is_known(), "a concentrator runs a real epoch");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(concentrator.serve(stopped));
    Running {
        addr,
        key,
        epoch,
        _stop: stop,
    }
}

/// A destination server: counts and hands over every connection it accepts.
struct Server {
    addr: SocketAddr,
    accepted: mpsc::UnboundedReceiver<(TcpStream, SocketAddr)>,
    count: Arc<AtomicUsize>,
}

impl Server {
    async fn start(ip: Ipv4Addr) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind server");
        let addr = listener.local_addr().expect("server addr");
        let (tx, accepted) = mpsc::unbounded_channel();
        let count = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&count);
        tokio::spawn(async move {
            while let Ok(conn) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                if tx.send(conn).is_err() {
                    return;
                }
            }
        });
        Self {
            addr,
            accepted,
            count,
        }
    }

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        self.accepted.recv().await.expect("server stopped")
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

/// Opens an MPTCP connection from [`CLIENT_IP`] to the concentrator.
fn mptcp_connect(concentrator: SocketAddr) -> TcpStream {
    let socket =
        Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::MPTCP)).expect("MPTCP socket");
    socket
        .bind(&SocketAddr::from((CLIENT_IP, 0)).into())
        .expect("bind client");
    socket.connect(&concentrator.into()).expect("connect");
    socket.set_nonblocking(true).expect("nonblocking");
    TcpStream::from_std(socket.into()).expect("tokio stream")
}

fn now_ms() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    u64::try_from(since_epoch.as_millis()).expect("ms fit u64")
}

/// A fresh connect header for `destination`, signed with `key` as `id`
/// for concentrator run `epoch`.
fn header_as(key: &Key, epoch: Epoch, id: &str, destination: SocketAddr) -> Vec<u8> {
    let nonce = random_nonce().expect("random nonce");
    let id = id.parse().expect("valid id");
    sign_request(key, id, destination, epoch, nonce, now_ms()).encode()
}

/// A fresh header for `destination`, as the configured client signs it
/// for `running`.
fn header(running: &Running, destination: SocketAddr) -> Vec<u8> {
    header_as(&running.key, running.epoch, CLIENT_ID, destination)
}

/// Connects to the concentrator and sends `first` (header and any payload)
/// in one write.
async fn send_first(concentrator: SocketAddr, first: &[u8]) -> TcpStream {
    let mut stream = mptcp_connect(concentrator);
    stream.write_all(first).await.expect("send header");
    stream
}

/// Reads the concentrator's response: the fixed header, then as many
/// bytes as it says, and nothing more.
async fn read_response(stream: &mut TcpStream) -> Response {
    let mut buf = vec![0; convert::FIXED_HEADER_LEN];
    stream
        .read_exact(&mut buf)
        .await
        .expect("response fixed header");
    let len = convert::header_len(&buf)
        .expect("valid fixed header")
        .expect("complete fixed header");
    buf.resize(len, 0);
    stream
        .read_exact(&mut buf[convert::FIXED_HEADER_LEN..])
        .await
        .expect("response TLVs");
    let (response, used) = Response::decode(&buf).expect("valid response");
    assert_eq!(used, len);
    response
}

/// Connects with a fresh header for `destination` and returns the response.
async fn request(running: &Running, destination: SocketAddr) -> (TcpStream, Response) {
    let mut stream = send_first(running.addr, &header(running, destination)).await;
    let response = read_response(&mut stream).await;
    (stream, response)
}

fn error(code: ErrorCode) -> Response {
    Response::Error { code, value: 0 }
}

/// Asserts the concentrator closed `stream` without sending a byte.
async fn assert_closed_silently(stream: &mut TcpStream) {
    let mut got = Vec::new();
    match stream.read_to_end(&mut got).await {
        Ok(_) => {}
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
    }
    assert!(
        got.is_empty(),
        "an unauthenticated peer must get nothing back, got {got:?}"
    );
}

/// Asserts a good client still gets through, and that its connection is
/// the first the server accepted: nothing reached the server before.
async fn assert_still_serves(running: &Running, server: &mut Server) {
    assert_still_serves_after(running, server, 0).await;
}

/// Deterministic pseudo-random bytes (xorshift64).
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[tokio::test]
async fn four_mebibytes_each_way_arrive_intact_from_the_concentrator() {
    bounded(async {
        const LEN: usize = 4 << 20;
        let running = start(16);
        let mut server = Server::start(SERVER_IP).await;
        let (mut client, response) = request(&running, server.addr).await;
        assert_eq!(response, Response::Connected);
        assert_eq!(
            SockRef::from(&client).protocol().expect("SO_PROTOCOL"),
            Some(Protocol::MPTCP)
        );
        let client_addr = client.local_addr().expect("client addr");

        let (mut accepted, peer) = server.accept().await;
        assert_eq!(
            peer.ip(),
            IpAddr::V4(CONCENTRATOR_IP),
            "the server must see the concentrator's outbound socket"
        );
        assert_ne!(peer, client_addr);

        let up = pattern(1, LEN);
        let down = pattern(2, LEN);
        let (client_got, server_got) = tokio::join!(
            async {
                let (mut read, mut write) = client.split();
                let send = async {
                    write.write_all(&up).await.expect("client write");
                    write.shutdown().await.expect("client shutdown");
                };
                let mut got = Vec::with_capacity(LEN);
                let recv = read.read_to_end(&mut got);
                let ((), received) = tokio::join!(send, recv);
                received.expect("client read");
                got
            },
            async {
                let (mut read, mut write) = accepted.split();
                let send = async {
                    write.write_all(&down).await.expect("server write");
                    write.shutdown().await.expect("server shutdown");
                };
                let mut got = Vec::with_capacity(LEN);
                let recv = read.read_to_end(&mut got);
                let ((), received) = tokio::join!(send, recv);
                received.expect("server read");
                got
            },
        );
        assert!(client_got == down, "client received corrupted data");
        assert!(server_got == up, "server received corrupted data");
        assert_eq!(server.count(), 1);
    })
    .await;
}

#[tokio::test]
async fn payload_sent_with_the_header_arrives_first_and_intact() {
    bounded(async {
        let running = start(16);
        let mut server = Server::start(SERVER_IP).await;
        // Longer than the concentrator's header buffer, so part of it comes
        // with the header and the rest through the relay.
        let early = pattern(3, 3000);
        let mut first = header(&running, server.addr);
        first.extend_from_slice(&early);
        let mut client = send_first(running.addr, &first).await;
        assert_eq!(read_response(&mut client).await, Response::Connected);
        client.write_all(b"then this").await.expect("write");
        client.shutdown().await.expect("shutdown");

        let (mut accepted, _) = server.accept().await;
        let mut got = Vec::new();
        accepted.read_to_end(&mut got).await.expect("read");
        let mut expected = early.clone();
        expected.extend_from_slice(b"then this");
        assert!(
            got == expected,
            "early payload lost, reordered or corrupted"
        );
    })
    .await;
}

#[tokio::test]
async fn half_close_lets_the_server_keep_sending() {
    bounded(async {
        const LEN: usize = 1 << 20;
        let running = start(16);
        let mut server = Server::start(SERVER_IP).await;
        let (mut client, response) = request(&running, server.addr).await;
        assert_eq!(response, Response::Connected);
        client.write_all(b"request").await.expect("write");
        client.shutdown().await.expect("half-close");

        let (mut accepted, _) = server.accept().await;
        let mut got = Vec::new();
        accepted
            .read_to_end(&mut got)
            .await
            .expect("server reads to EOF");
        assert_eq!(got, b"request");
        let reply = pattern(4, LEN);
        accepted
            .write_all(&reply)
            .await
            .expect("server writes after EOF");
        accepted.shutdown().await.expect("server half-close");

        let mut back = Vec::with_capacity(LEN);
        client
            .read_to_end(&mut back)
            .await
            .expect("client reads to EOF");
        assert!(back == reply, "reply after half-close lost or corrupted");
    })
    .await;
}

#[tokio::test]
async fn a_server_reset_reaches_the_client_as_a_reset() {
    bounded(async {
        let running = start(16);
        let mut server = Server::start(SERVER_IP).await;
        let (mut client, response) = request(&running, server.addr).await;
        assert_eq!(response, Response::Connected);
        client.write_all(b"go").await.expect("write");

        let (mut accepted, _) = server.accept().await;
        let mut go = [0; 2];
        accepted.read_exact(&mut go).await.expect("read");
        SockRef::from(&accepted)
            .set_linger(Some(Duration::ZERO))
            .expect("linger 0");
        drop(accepted);

        let mut buf = [0; 64];
        let err = client
            .read(&mut buf)
            .await
            .expect_err("the client must see a reset, not an end of stream");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    })
    .await;
}

#[tokio::test]
async fn a_client_reset_reaches_the_server_as_a_reset() {
    bounded(async {
        let running = start(16);
        let mut server = Server::start(SERVER_IP).await;
        let (mut client, response) = request(&running, server.addr).await;
        assert_eq!(response, Response::Connected);
        client.write_all(b"go").await.expect("write");

        let (mut accepted, _) = server.accept().await;
        let mut go = [0; 2];
        accepted.read_exact(&mut go).await.expect("read");
        SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .expect("linger 0");
        drop(client);

        let mut buf = [0; 64];
        let err = accepted
            .read(&mut buf)
            .await
            .expect_err("the server must see a reset, not an end of stream");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    })
    .await;
}

#[tokio::test]
async fn a_closed_port_is_answered_with_connection_reset() {
    bounded(async {
        let running = start(16);
        let closed = {
            let listener = std::net::TcpListener::bind((SERVER_IP, 0)).expect("bind");
            listener.local_addr().expect("addr")
        };
        let (mut client, response) = request(&running, closed).await;
        assert_eq!(response, error(ErrorCode::ConnectionReset));
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.expect("clean close");
        assert!(rest.is_empty());
    })
    .await;
}

#[tokio::test]
async fn the_default_policy_refuses_loopback() {
    bounded(async {
        let running = start_with(16, &[]);
        let server = Server::start(SERVER_IP).await;
        let (mut client, response) = request(&running, server.addr).await;
        assert_eq!(response, error(ErrorCode::NotAuthorized));
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.expect("clean close");
        // Any connection would have been made before the answer; give the
        // server's accept loop time to count it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(server.count(), 0, "a denied destination got a connection");
    })
    .await;
}

#[tokio::test]
async fn a_destination_outside_allow_is_not_authorized() {
    bounded(async {
        let running = start_with(16, &["127.0.0.3/32"]);
        let mut allowed = Server::start(SERVER_IP).await;
        let denied = Server::start(OTHER_SERVER_IP).await;
        let (_client, response) = request(&running, denied.addr).await;
        assert_eq!(response, error(ErrorCode::NotAuthorized));
        assert_still_serves(&running, &mut allowed).await;
        assert_eq!(denied.count(), 0, "a denied destination got a connection");
    })
    .await;
}

#[tokio::test]
async fn the_connection_limit_is_resource_exceeded_and_slots_come_back() {
    bounded(async {
        let running = start(1);
        let mut server = Server::start(SERVER_IP).await;
        let (mut first, response) = request(&running, server.addr).await;
        assert_eq!(response, Response::Connected);
        let (mut accepted, _) = server.accept().await;

        let (_second, response) = request(&running, server.addr).await;
        assert_eq!(response, error(ErrorCode::ResourceExceeded));
        assert_eq!(server.count(), 1);

        first.shutdown().await.expect("shutdown");
        accepted.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        accepted.read_to_end(&mut rest).await.expect("EOF");
        first.read_to_end(&mut rest).await.expect("EOF");
        drop(first);
        // The slot is given back when the relay task ends, just after the
        // client sees its end of stream.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let (_third, response) = request(&running, server.addr).await;
            if response == Response::Connected {
                break;
            }
            assert_eq!(response, error(ErrorCode::ResourceExceeded));
            assert!(Instant::now() < deadline, "the slot never came back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_wrong_key_gets_nothing() {
    bounded(async {
        let running = start(16);
        let mut server = Server::start(SERVER_IP).await;
        let wrong = Key::generate().expect("random key");
        let mut client = send_first(
            running.addr,
            &header_as(&wrong, running.epoch, CLIENT_ID, server.addr),
        )
        .await;
        assert_closed_silently(&mut client).await;
        assert_still_serves(&running, &mut server).await;
    })
    .await;
}

#[tokio::test]
async fn an_unknown_client_id_gets_nothing() {
    bounded(async {
        let running = start(16);
        let mut server = Server::start(SERVER_IP).await;
        let first = header_as(&running.key, running.epoch, "stranger", server.addr);
        let mut client = send_first(running.addr, &first).await;
        assert_closed_silently(&mut client).await;
        assert_still_serves(&running, &mut server).await;
    })
    .await;
}

#[tokio::test]
async fn a_replayed_header_gets_nothing() {
    bounded(async {
        let running = start(16);
        let mut server = Server::start(SERVER_IP).await;
        let first = header(&running, server.addr);

        let mut original = send_first(running.addr, &first).await;
        assert_eq!(read_response(&mut original).await, Response::Connected);
        let (accepted, _) = server.accept().await;
        drop((original, accepted));

        let mut replay = send_first(running.addr, &first).await;
        assert_closed_silently(&mut replay).await;

        // The replay reached nothing: the next connection is the good one.
        assert_still_serves_after(&running, &mut server, 1).await;
    })
    .await;
}

/// A restart, as an attacker who recorded the client's headers sees it:
/// every header accepted before, replayed to the new run (same key, same
/// clients), reaches no server. It gets the new epoch under a MAC bound to
/// it (which gives the attacker nothing), and the client, signing again
/// for that epoch, gets through at once.
#[tokio::test]
async fn headers_from_before_a_restart_reach_nothing_after_it() {
    bounded(async {
        let key = Key::generate().expect("random key");
        let before = start_keyed(key.clone(), 16, &["127.0.0.0/8"]);
        let mut server = Server::start(SERVER_IP).await;
        let mut captured = Vec::new();
        for n in 0..3u8 {
            let mut first = header(&before, server.addr);
            first.extend_from_slice(&[b'0' + n; 8]);
            let mut stream = send_first(before.addr, &first).await;
            assert_eq!(read_response(&mut stream).await, Response::Connected);
            let (accepted, _) = server.accept().await;
            drop((stream, accepted));
            captured.push(first);
        }
        assert_eq!(server.count(), 3);
        drop(before);

        let after = start_keyed(key.clone(), 16, &["127.0.0.0/8"]);
        assert_ne!(after.epoch, Epoch::UNKNOWN);
        for first in &captured {
            let mut replay = send_first(after.addr, first).await;
            let Response::StaleEpoch { epoch, mac } = read_response(&mut replay).await else {
                panic!("a header from the earlier run must be refused with the new epoch");
            };
            assert_eq!(Epoch::from_u64(epoch), after.epoch);
            let (request, _) = convert::ConnectRequest::decode(first).expect("a header");
            assert!(verify_epoch(&key, after.epoch, &mac, &request));
            let mut rest = Vec::new();
            let _ = replay.read_to_end(&mut rest).await;
            assert!(rest.is_empty(), "nothing after the refusal: {rest:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(server.count(), 3, "a replayed header reached the server");

        assert_still_serves_after(&after, &mut server, 3).await;
    })
    .await;
}

/// Like [`assert_still_serves`], when the server already accepted
/// `before` connections.
async fn assert_still_serves_after(running: &Running, server: &mut Server, before: usize) {
    let mut first = header(running, server.addr);
    first.extend_from_slice(b"sentinel");
    let mut stream = send_first(running.addr, &first).await;
    assert_eq!(read_response(&mut stream).await, Response::Connected);
    let (mut accepted, _) = server.accept().await;
    let mut got = [0; 8];
    accepted.read_exact(&mut got).await.expect("sentinel");
    assert_eq!(
        &got, b"sentinel",
        "the server's next connection must be the good client's"
    );
    assert_eq!(server.count(), before + 1, "a bad peer reached the server");
}

#[tokio::test]
async fn garbage_gets_nothing() {
    bounded(async {
        let running = start(16);
        let mut server = Server::start(SERVER_IP).await;
        let mut client = send_first(running.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_closed_silently(&mut client).await;
        assert_still_serves(&running, &mut server).await;
    })
    .await;
}

#[tokio::test]
async fn a_truncated_header_then_close_gets_nothing() {
    bounded(async {
        let running = start(16);
        let mut server = Server::start(SERVER_IP).await;
        let full = header(&running, server.addr);
        let mut client = send_first(running.addr, &full[..full.len() / 2]).await;
        client.shutdown().await.expect("half-close");
        assert_closed_silently(&mut client).await;
        assert_still_serves(&running, &mut server).await;
    })
    .await;
}

#[tokio::test]
async fn a_silent_peer_is_closed_after_the_handshake_timeout() {
    bounded(async {
        let running = start(16);
        let mut server = Server::start(SERVER_IP).await;
        let started = Instant::now();
        let mut client = mptcp_connect(running.addr);
        assert_closed_silently(&mut client).await;
        let waited = started.elapsed();
        assert!(
            waited >= HANDSHAKE_TIMEOUT - Duration::from_millis(50),
            "closed after {waited:?}, before the handshake timeout"
        );
        assert!(
            waited < HANDSHAKE_TIMEOUT + Duration::from_secs(2),
            "still open {waited:?} after connecting"
        );
        assert_still_serves(&running, &mut server).await;
    })
    .await;
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    bounded(async {
        let key = Key::generate().expect("random key");
        let (concentrator, addr) =
            Concentrator::bind(config(&key, 16, &["127.0.0.0/8"])).expect("bind");
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(concentrator.serve(stopped));
        stop.send(()).expect("concentrator running");
        serving
            .await
            .expect("serve returns after shutdown")
            .expect("serve ends without error");
        let err = TcpStream::connect(addr)
            .await
            .expect_err("the listener must be closed");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    })
    .await;
}
