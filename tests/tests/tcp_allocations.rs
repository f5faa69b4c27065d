//! RFC 6062 TCP allocations over real sockets on 127.0.0.1, beside what
//! `turnutils_uclient -T` does (`coturn_tools.rs`): a Connect to a port nobody listens on, a
//! peer connecting without a permission and with one, bytes both ways over the data
//! connection, and the allocation's deletion closing it. Requests are written with the test
//! kit over plain TCP.
#![deny(unsafe_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use icegate_testkit as kit;
use icegate_tests::{server_tests, Relay, RelayConfig, ServerKind};

server_tests!(
    connect_to_a_closed_port_is_447,
    an_incoming_peer_needs_a_permission_and_then_reaches_the_client,
    a_peer_waiting_for_its_connection_bind_closes_with_the_allocation,
);

const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// One TCP connection to the relay speaking STUN, with alice's long-term credentials.
struct StreamClient {
    stream: TcpStream,
    user: String,
    password: String,
    realm: Option<String>,
    nonce: Option<String>,
    next_tid: u8,
}

impl StreamClient {
    fn connect(relay: &Relay) -> StreamClient {
        let stream = TcpStream::connect(relay.tcp_addr()).expect("connect to the relay");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let (user, password) = relay.config.users[0].clone();
        StreamClient {
            stream,
            user,
            password,
            realm: None,
            nonce: None,
            next_tid: 0,
        }
    }

    fn tid(&mut self) -> [u8; 12] {
        self.next_tid += 1;
        [self.next_tid; 12]
    }

    /// The next STUN message the relay sends on this connection.
    fn recv(&mut self) -> Vec<u8> {
        let mut message = vec![0u8; 20];
        self.stream.read_exact(&mut message).expect("a STUN header");
        let len = u16::from_be_bytes([message[2], message[3]]) as usize;
        message.resize(20 + len, 0);
        self.stream
            .read_exact(&mut message[20..])
            .expect("a STUN body");
        message
    }

    /// Sends `build(tid)` signed (after the 401 that teaches the nonce, the first time) and
    /// returns the answer.
    fn request(&mut self, build: impl Fn([u8; 12]) -> kit::Message) -> Vec<u8> {
        if self.nonce.is_none() {
            let tid = self.tid();
            let bytes = build(tid).fingerprint().finish();
            self.stream.write_all(&bytes).unwrap();
            let answer = self.recv();
            let reply = kit::Reply::parse(&answer).expect("a STUN answer");
            assert_eq!(
                reply.error_code(),
                Some(401),
                "the first request is challenged"
            );
            self.realm = reply.realm();
            self.nonce = reply.nonce();
        }
        let realm = self.realm.clone().expect("REALM");
        let nonce = self.nonce.clone().expect("NONCE");
        let key = kit::long_term_key_md5(&self.user, &realm, &self.password);
        let tid = self.tid();
        let bytes = build(tid)
            .credentials(&self.user, &realm, &nonce)
            .integrity(&key)
            .fingerprint()
            .finish();
        self.stream.write_all(&bytes).unwrap();
        let answer = self.recv();
        assert_eq!(answer[8..20], tid, "the answer to the request just sent");
        answer
    }

    /// A TCP allocation: its relayed address.
    fn allocate_tcp(&mut self) -> SocketAddr {
        let answer = self.request(|tid| {
            kit::Message::request(kit::method::ALLOCATE, tid)
                .attr(kit::attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0])
        });
        let reply = kit::Reply::parse(&answer).unwrap();
        assert_eq!(reply.class, kit::Class::Success, "{:?}", reply.error_code());
        reply.xor_relayed()[0]
    }
}

/// A port on 127.0.0.1 nobody listens on (bound, then closed again).
fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Whether the other end closed `stream` (end of stream or reset) within [`IO_TIMEOUT`].
fn closed_by_peer(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
        ),
    }
}

fn connect_to_a_closed_port_is_447(kind: ServerKind) {
    let relay = Relay::start(kind, RelayConfig::default());
    let mut control = StreamClient::connect(&relay);
    control.allocate_tcp();
    let peer = closed_port();
    let answer = control.request(|tid| kit::connect(tid, peer));
    let reply = kit::Reply::parse(&answer).unwrap();
    assert_eq!(reply.method, kit::method::CONNECT);
    assert_eq!(reply.error_code(), Some(447), "Connect to {peer}");
    if let Some(metrics) = relay.try_metrics() {
        let failed = metrics.sum(
            "icegate_relay_peer_connections_total",
            &[("direction", "outgoing"), ("result", "failed")],
        );
        assert_eq!(failed, 1.0);
    }
}

fn an_incoming_peer_needs_a_permission_and_then_reaches_the_client(kind: ServerKind) {
    let relay = Relay::start(kind, RelayConfig::default());
    let mut control = StreamClient::connect(&relay);
    let relayed = control.allocate_tcp();

    // Without a permission the relay takes the connection and closes it.
    let mut stranger = TcpStream::connect(relayed).expect("the relayed address listens");
    assert!(
        closed_by_peer(&mut stranger),
        "a peer without a permission was kept"
    );

    let me = "127.0.0.1:1".parse().unwrap();
    let answer = control.request(|tid| kit::create_permission(tid, &[me]));
    assert_eq!(
        kit::Reply::parse(&answer).unwrap().class,
        kit::Class::Success
    );
    let mut peer = TcpStream::connect(relayed).expect("the relayed address listens");
    peer.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let attempt = control.recv();
    let attempt = kit::Reply::parse(&attempt).expect("a STUN message");
    assert_eq!(
        (attempt.method, attempt.class),
        (kit::method::CONNECTION_ATTEMPT, kit::Class::Indication)
    );
    let from = kit::xor_address(
        attempt.get(kit::attr::XOR_PEER_ADDRESS).unwrap(),
        &attempt.tid,
    );
    assert_eq!(from, Some(peer.local_addr().unwrap()));
    let id: [u8; 4] = attempt
        .get(kit::attr::CONNECTION_ID)
        .expect("CONNECTION-ID")
        .try_into()
        .unwrap();
    let id = u32::from_be_bytes(id);

    // The peer may send before the client has bound: nothing is lost.
    peer.write_all(b"early bytes from the peer").unwrap();
    // Signed at once with the control connection's nonce, as turnutils_uclient does (coturn
    // closes a data connection whose ConnectionBind it challenges).
    let mut data = StreamClient::connect(&relay);
    data.realm = control.realm.clone();
    data.nonce = control.nonce.clone();
    let answer = data.request(|tid| kit::connection_bind(tid, id));
    let reply = kit::Reply::parse(&answer).unwrap();
    assert_eq!(
        (reply.method, reply.class),
        (kit::method::CONNECTION_BIND, kit::Class::Success),
        "{:?}",
        reply.error_code()
    );
    let mut early = [0u8; 25];
    data.stream.read_exact(&mut early).unwrap();
    assert_eq!(&early, b"early bytes from the peer");
    // Unframed both ways, bytes that look like STUN included.
    let stun_like = kit::Message::request(kit::method::BINDING, [9; 12]).finish();
    data.stream.write_all(&stun_like).unwrap();
    let mut got = vec![0u8; stun_like.len()];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(got, stun_like);
    let big = vec![0xA5u8; 256 * 1024];
    peer.write_all(&big).unwrap();
    let mut got = vec![0u8; big.len()];
    data.stream.read_exact(&mut got).unwrap();
    assert!(got == big, "256 KiB from the peer arrived changed");

    // Deleting the allocation closes the data connection and the peer's.
    let answer = control.request(|tid| kit::refresh(tid, 0));
    assert_eq!(
        kit::Reply::parse(&answer).unwrap().class,
        kit::Class::Success
    );
    assert!(
        closed_by_peer(&mut data.stream),
        "the data connection outlived its allocation"
    );
    assert!(
        closed_by_peer(&mut peer),
        "the peer connection outlived its allocation"
    );
}

fn a_peer_waiting_for_its_connection_bind_closes_with_the_allocation(kind: ServerKind) {
    let relay = Relay::start(kind, RelayConfig::default());
    let mut control = StreamClient::connect(&relay);
    let relayed = control.allocate_tcp();
    let me = "127.0.0.1:1".parse().unwrap();
    let answer = control.request(|tid| kit::create_permission(tid, &[me]));
    assert_eq!(
        kit::Reply::parse(&answer).unwrap().class,
        kit::Class::Success
    );
    let mut peer = TcpStream::connect(relayed).expect("the relayed address listens");
    let attempt = control.recv();
    assert_eq!(
        kit::Reply::parse(&attempt).unwrap().method,
        kit::method::CONNECTION_ATTEMPT
    );
    // Nobody binds it; the allocation goes.
    let answer = control.request(|tid| kit::refresh(tid, 0));
    assert_eq!(
        kit::Reply::parse(&answer).unwrap().class,
        kit::Class::Success
    );
    assert!(
        closed_by_peer(&mut peer),
        "a peer connection waiting for its ConnectionBind outlived its allocation"
    );
}
