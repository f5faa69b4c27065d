//! TCP allocations (RFC 6062): Allocate with REQUESTED-TRANSPORT TCP, Connect, the
//! ConnectionAttempt of an incoming peer connection, ConnectionBind, and the 30 s a peer
//! connection waits for it.

use super::harness::*;

use kit::attr::CONNECTION_ID;
use kit::method::{CONNECT, CONNECTION_ATTEMPT, CONNECTION_BIND};

fn tcp_client(n: u8) -> FiveTuple {
    FiveTuple {
        transport: Transport::Tcp,
        client: SocketAddr::new(IpAddr::from([198, 51, 100, n]), 41_000 + u16::from(n)),
        server: sa("192.0.2.1:3478"),
    }
}

fn tcp_transport() -> StunAttribute {
    parsed_attr(0x0019, &[6, 0, 0, 0])
}

fn method(m: u16) -> MessageMethod {
    MessageMethod::try_from(m).expect("a TURN method")
}

/// A request stun-rs cannot encode (it has no CONNECTION-ID), written with the test kit and
/// signed with `client`'s MD5 key.
fn kit_signed(h: &mut Harness, client: &Client, msg: kit::Message) -> (TransactionId, Vec<u8>) {
    let tid = TransactionId::from(msg.tid());
    let key = kit::long_term_key_md5(&client.username, REALM, &client.password);
    let bytes = msg
        .credentials(
            &client.username,
            REALM,
            client.nonce.as_deref().expect("challenged"),
        )
        .integrity(&key)
        .fingerprint()
        .finish();
    let _ = h;
    (tid, bytes)
}

/// Alice with a TCP allocation over a TCP control connection, and a permission for `peer()`.
fn tcp_allocation(h: &mut Harness) -> (Client, RelayId, SocketAddr) {
    let mut alice = Client::new(tcp_client(1), "alice", "alice-pw");
    h.challenge(&mut alice);
    let (tid, bytes) = h.signed_bytes(&alice, ALLOCATE, vec![tcp_transport()]);
    assert_eq!(h.packet(alice.from, &bytes), ClientOutcome::Handled);
    let (relay, addr) = match h.commands().as_slice() {
        [Command::BindRelay {
            relay,
            addr,
            tcp: true,
            dont_fragment: false,
        }] => (*relay, *addr),
        other => panic!("expected one TCP BindRelay, got {other:?}"),
    };
    h.server.relay_bound(relay, true, h.now);
    let response = h.answer(&alice, tid, ALLOCATE);
    assert_eq!(response.class(), MessageClass::SuccessResponse);
    assert_eq!(relayed_addresses(&response), vec![addr]);
    let ok = h.create_permission(&alice, &[peer()]);
    assert_eq!(ok.class(), MessageClass::SuccessResponse);
    (alice, relay, addr)
}

/// Connect to `to`: the ConnectPeer command it asks for (from the relayed address).
fn connect(h: &mut Harness, alice: &Client, to: SocketAddr) -> (TransactionId, u32, RelayId) {
    let (tid, bytes) = h.signed_bytes(
        alice,
        method(CONNECT),
        vec![XorPeerAddress::from(to).into()],
    );
    assert_eq!(h.packet(alice.from, &bytes), ClientOutcome::Handled);
    match h.commands().as_slice() {
        [Command::ConnectPeer {
            connection,
            relay,
            peer,
            ..
        }] if *peer == to => (tid, *connection, *relay),
        other => panic!("expected ConnectPeer to {to}, got {other:?}"),
    }
}

/// ConnectionBind of `id` on a fresh TCP connection `data`: its answer, and the
/// JoinConnection that follows a success.
fn connection_bind(h: &mut Harness, data: &mut Client, id: u32) -> (StunMessage, Vec<Command>) {
    if data.nonce.is_none() {
        h.challenge(data);
    }
    let tid = *h.tid().as_bytes();
    let (tid, bytes) = kit_signed(h, data, kit::connection_bind(tid, id));
    assert_eq!(h.packet(data.from, &bytes), ClientOutcome::Handled);
    let mut commands = h.commands();
    let Command::SendToClient { to, data: answer } = commands.remove(0) else {
        panic!("the answer comes first: {commands:?}");
    };
    assert_eq!(to, data.from);
    let msg = decode(&answer, Some(&data.key())).msg;
    assert_eq!(*msg.transaction_id(), tid);
    (msg, commands)
}

#[test]
fn tcp_allocation_binds_a_tcp_listener_and_connect_answers_with_the_connection_id() {
    let mut h = Harness::new();
    let (alice, relay, relayed) = tcp_allocation(&mut h);
    let (tid, id, connect_relay) = {
        let (tid, bytes) = h.signed_bytes(
            &alice,
            method(CONNECT),
            vec![XorPeerAddress::from(peer()).into()],
        );
        assert_eq!(h.packet(alice.from, &bytes), ClientOutcome::Handled);
        match h.commands().as_slice() {
            [Command::ConnectPeer {
                connection,
                relay,
                from,
                peer: p,
            }] => {
                assert_eq!(*from, relayed, "connects from the relayed address");
                assert_eq!(*p, peer());
                (tid, *connection, *relay)
            }
            other => panic!("expected ConnectPeer, got {other:?}"),
        }
    };
    assert_eq!(connect_relay, relay);
    assert!(h.server.peer_connected(relay, id, true, h.now));
    let raw = h.expect_send(alice.from);
    let answer = decode(&raw, Some(&alice.key()));
    assert!(answer.signed);
    assert_eq!(*answer.msg.transaction_id(), tid);
    assert_eq!(answer.msg.class(), MessageClass::SuccessResponse);
    let reply = kit::Reply::parse(&raw).unwrap();
    assert_eq!(reply.method, CONNECT);
    assert_eq!(reply.get(CONNECTION_ID), Some(&id.to_be_bytes()[..]));
    assert_eq!(h.requests(MethodLabel::Connect, 0), 1);

    // A second Connect to the same peer while the first connection lives: 446.
    let again = vec![XorPeerAddress::from(peer()).into()];
    assert_eq!(h.signed_error(&alice, method(CONNECT), again), 446);

    // The data connection binds it, once; then it carries the peer's bytes.
    let mut data = Client::new(tcp_client(2), "alice", "alice-pw");
    let (ok, after) = connection_bind(&mut h, &mut data, id);
    assert_eq!(ok.class(), MessageClass::SuccessResponse);
    assert_eq!(
        after,
        vec![Command::JoinConnection {
            client: data.from,
            connection: id
        }]
    );
    assert_eq!(h.requests(MethodLabel::ConnectionBind, 0), 1);
    let mut late = Client::new(tcp_client(3), "alice", "alice-pw");
    let (refused, after) = connection_bind(&mut h, &mut late, id);
    assert_eq!(error_code(&refused), Some(400));
    assert!(after.is_empty());

    // A bound connection is not closed by the ConnectionBind timer.
    h.at(31);
    h.assert_no_commands();

    // Once the data connection has gone, the peer may be connected to again.
    h.server.connection_closed(id);
    let (_, second, _) = connect(&mut h, &alice, peer());
    assert_ne!(second, id);
    assert!(!h.server.peer_connected(relay, second, false, h.now));
    h.commands();
}

#[test]
fn a_failed_connect_is_447_and_frees_the_peer() {
    let mut h = Harness::new();
    let (alice, relay, _) = tcp_allocation(&mut h);
    let (tid, id, _) = connect(&mut h, &alice, peer());
    assert!(!h.server.peer_connected(relay, id, false, h.now));
    let answer = h.answer(&alice, tid, method(CONNECT));
    assert_eq!(error_code(&answer), Some(447));
    assert_eq!(h.requests(MethodLabel::Connect, 447), 1);
    assert_eq!(h.ledger.connections().state(id), None);
    let mut data = Client::new(tcp_client(2), "alice", "alice-pw");
    let (refused, _) = connection_bind(&mut h, &mut data, id);
    assert_eq!(error_code(&refused), Some(400));
    // A report about a connection the core no longer has is told to close.
    assert!(!h.server.peer_connected(relay, id, true, h.now));
    h.assert_no_commands();
    let (_, again, _) = connect(&mut h, &alice, peer());
    assert!(h.server.peer_connected(relay, again, true, h.now));
    h.commands();
}

#[test]
fn connect_is_refused_for_bad_requests_filtered_peers_and_udp_allocations() {
    let mut h = Harness::new();
    let (alice, _, _) = tcp_allocation(&mut h);
    assert_eq!(h.signed_error(&alice, method(CONNECT), vec![]), 400);
    let private = sa("10.0.0.1:80");
    let to_private = vec![XorPeerAddress::from(private).into()];
    assert_eq!(h.signed_error(&alice, method(CONNECT), to_private), 403);
    let v6 = vec![XorPeerAddress::from(peer_v6()).into()];
    assert_eq!(h.signed_error(&alice, method(CONNECT), v6), 443);
    // RFC 6062 §6: no channels on a TCP allocation.
    assert_eq!(
        error_code(&h.channel_bind(&alice, MIN_CHANNEL, peer())),
        Some(400)
    );

    let mut bob = Client::bob(9);
    h.allocate(&mut bob, vec![]);
    let to_peer = vec![XorPeerAddress::from(peer()).into()];
    assert_eq!(h.signed_error(&bob, method(CONNECT), to_peer), 400);
    let mut nobody = Client::new(tcp_client(7), "alice", "alice-pw");
    h.challenge(&mut nobody);
    let to_peer = vec![XorPeerAddress::from(peer()).into()];
    assert_eq!(h.signed_error(&nobody, method(CONNECT), to_peer), 437);
}

#[test]
fn tcp_allocations_are_400_over_udp_and_with_udp_only_attributes() {
    let mut h = Harness::new();
    let mut over_udp = Client::alice(1);
    h.challenge(&mut over_udp);
    // RFC 6062 §5.1: 400, not 442; the transport is supported, only not over UDP.
    assert_eq!(h.allocate_error(&mut over_udp, vec![tcp_transport()]), 400);
    let mut alice = Client::new(tcp_client(1), "alice", "alice-pw");
    h.challenge(&mut alice);
    for extra in [
        StunAttribute::from(stun_rs::attributes::turn::DontFragment::default()),
        EvenPort::new(false).into(),
        ReservationToken::from([7u8; 8]).into(),
        AdditionalAddressFamily::new(AddressFamily::IPv6).into(),
    ] {
        let code = h.allocate_error(&mut alice, vec![tcp_transport(), extra.clone()]);
        assert_eq!(code, 400, "{extra:?}");
    }
}

#[test]
fn no_tcp_relay_refuses_tcp_allocations_with_442() {
    let mut config = base_config();
    config.tcp_relay = false;
    let mut h = Harness::with(config);
    let mut alice = Client::new(tcp_client(1), "alice", "alice-pw");
    h.challenge(&mut alice);
    assert_eq!(h.allocate_error(&mut alice, vec![tcp_transport()]), 442);
    // Back on with a reload.
    h.reconfigure(|c| c.tcp_relay = true);
    let (tid, bytes) = h.signed_bytes(&alice, ALLOCATE, vec![tcp_transport()]);
    assert_eq!(h.packet(alice.from, &bytes), ClientOutcome::Handled);
    let binds = h.expect_binds();
    h.server.relay_bound(binds[0].0, true, h.now);
    let ok = h.answer(&alice, tid, ALLOCATE);
    assert_eq!(ok.class(), MessageClass::SuccessResponse);
}

#[test]
fn an_incoming_peer_connection_needs_a_permission_and_is_announced() {
    let mut h = Harness::new();
    let (alice, relay, _) = tcp_allocation(&mut h);
    assert_eq!(h.server.peer_connection(relay, peer2(), h.now), None);
    h.assert_no_commands();
    let id = h
        .server
        .peer_connection(relay, peer(), h.now)
        .expect("a permitted peer is taken");
    let bytes = h.expect_send(alice.from);
    let attempt = kit::Reply::parse(&bytes).expect("a STUN message");
    assert_eq!(
        (attempt.method, attempt.class),
        (CONNECTION_ATTEMPT, kit::Class::Indication)
    );
    let peer_attr = attempt.get(0x0012).expect("XOR-PEER-ADDRESS");
    assert_eq!(kit::xor_address(peer_attr, &attempt.tid), Some(peer()));
    assert_eq!(attempt.get(CONNECTION_ID), Some(&id.to_be_bytes()[..]));
    assert_eq!(
        Counters::get(&h.counters.peer_connections[1]),
        1,
        "counted as incoming"
    );
    assert_eq!(Counters::get(&h.counters.peer_connections_failed[1]), 1);

    // Only the allocation's user binds it.
    let mut mallory = Client::new(tcp_client(5), "bob", "bob-pw");
    let (refused, after) = connection_bind(&mut h, &mut mallory, id);
    assert_eq!(error_code(&refused), Some(400));
    assert!(after.is_empty());

    // Not bound within 30 s: closed, and its id binds nothing any more.
    h.at(29);
    h.assert_no_commands();
    h.at(30);
    assert_eq!(
        h.commands(),
        vec![Command::CloseConnection { connection: id }]
    );
    let mut data = Client::new(tcp_client(2), "alice", "alice-pw");
    let (refused, _) = connection_bind(&mut h, &mut data, id);
    assert_eq!(error_code(&refused), Some(400));
}

#[test]
fn connection_bind_only_on_a_new_stream_connection() {
    let mut h = Harness::new();
    let (alice, relay, _) = tcp_allocation(&mut h);
    let id = h.server.peer_connection(relay, peer(), h.now).unwrap();
    h.expect_send(alice.from);
    // On the control connection, which holds the allocation: 400.
    let mut control = alice.clone();
    let (refused, _) = connection_bind(&mut h, &mut control, id);
    assert_eq!(error_code(&refused), Some(400));
    // Over UDP: 400.
    let mut udp = Client::alice(4);
    let (refused, _) = connection_bind(&mut h, &mut udp, id);
    assert_eq!(error_code(&refused), Some(400));
    // Without CONNECTION-ID: 400.
    let mut data = Client::new(tcp_client(2), "alice", "alice-pw");
    h.challenge(&mut data);
    assert_eq!(h.signed_error(&data, method(CONNECTION_BIND), vec![]), 400);
    // Unauthenticated: challenged like any request.
    let tid = *h.tid().as_bytes();
    let bytes = kit::connection_bind(tid, id).fingerprint().finish();
    assert_eq!(h.packet(data.from, &bytes), ClientOutcome::Handled);
    let msg = decode(&h.expect_send(data.from), None).msg;
    assert_eq!(error_code(&msg), Some(401));
    let (ok, _) = connection_bind(&mut h, &mut data, id);
    assert_eq!(ok.class(), MessageClass::SuccessResponse);
}

#[test]
fn deleting_a_tcp_allocation_closes_its_listener_and_connections() {
    let mut h = Harness::new();
    let (alice, relay, _) = tcp_allocation(&mut h);
    let incoming = h.server.peer_connection(relay, peer(), h.now).unwrap();
    h.expect_send(alice.from);
    let (_, outgoing, _) = connect(&mut h, &alice, peer2());
    let (tid, bytes) = h.signed_bytes(&alice, REFRESH, vec![LifeTime::new(0).into()]);
    assert_eq!(h.packet(alice.from, &bytes), ClientOutcome::Handled);
    let commands = h.commands();
    let closes: Vec<_> = commands
        .iter()
        .filter(|c| !matches!(c, Command::SendToClient { .. }))
        .cloned()
        .collect();
    assert_eq!(
        closes,
        vec![
            Command::CloseRelay { relay },
            Command::CloseConnection {
                connection: incoming
            },
            Command::CloseConnection {
                connection: outgoing
            },
        ]
    );
    let _ = tid;
    assert!(h.ledger.connections().is_empty());
    // The connect finishing after the allocation went: told to close it.
    assert!(!h.server.peer_connected(relay, outgoing, true, h.now));
    h.assert_no_commands();
}

#[test]
fn a_closed_control_connection_takes_its_connections() {
    let mut h = Harness::new();
    let (alice, relay, _) = tcp_allocation(&mut h);
    let id = h.server.peer_connection(relay, peer(), h.now).unwrap();
    h.expect_send(alice.from);
    h.server.handle_disconnect(alice.from);
    assert_eq!(
        h.commands(),
        vec![
            Command::CloseRelay { relay },
            Command::CloseConnection { connection: id }
        ]
    );
    assert_eq!(h.ledger.total_allocations(), 0);
}

#[test]
fn send_indications_on_a_tcp_allocation_are_dropped() {
    let mut h = Harness::new();
    let (alice, _, _) = tcp_allocation(&mut h);
    let (_, outcome) = h.send_indication(&alice, peer(), b"datagram");
    assert_eq!(outcome, ClientOutcome::Dropped);
    assert_eq!(h.dropped(DropReason::NoPermission), 1);
}

#[test]
fn a_connection_bind_reaching_another_worker_claims_the_connection() {
    let mut h = Harness::new();
    let (alice, relay, _) = tcp_allocation(&mut h);
    let id = h.server.peer_connection(relay, peer(), h.now).unwrap();
    h.expect_send(alice.from);
    // The kernel handed the data connection to another worker: its own server, the same
    // ledger.
    let mut other = Server::new(
        Arc::new(h.config.clone()),
        Arc::clone(&h.ledger),
        Arc::new(Counters::default()),
        Arc::new(PeerDenials::default()),
        7,
        h.t0,
    );
    let mut data = Client::new(tcp_client(2), "alice", "alice-pw");
    h.challenge(&mut data);
    let tid = *h.tid().as_bytes();
    let (tid, bytes) = kit_signed(&mut h, &data, kit::connection_bind(tid, id));
    assert_eq!(
        other.handle_client_packet(data.from, &bytes, h.now),
        ClientOutcome::Handled
    );
    let commands: Vec<_> = std::iter::from_fn(|| other.poll_command()).collect();
    let [Command::SendToClient { to, data: answer }, join] = &commands[..] else {
        panic!("expected an answer and a join, got {commands:?}");
    };
    assert_eq!(*to, data.from);
    let answer = decode(answer, Some(&data.key())).msg;
    assert_eq!(*answer.transaction_id(), tid);
    assert_eq!(answer.class(), MessageClass::SuccessResponse);
    assert_eq!(
        *join,
        Command::JoinConnection {
            client: data.from,
            connection: id
        }
    );
    // The owner's timer leaves a connection bound elsewhere alone...
    h.at(31);
    h.assert_no_commands();
    // ...and its allocation's end still closes it, from the owner.
    h.server.handle_disconnect(alice.from);
    assert_eq!(
        h.commands(),
        vec![
            Command::CloseRelay { relay },
            Command::CloseConnection { connection: id }
        ]
    );
    // The other worker learns of the close by the runtime (PeerStreams) and forgets the id.
    other.connection_closed(id);
    assert!(h.ledger.connections().is_empty());
}
