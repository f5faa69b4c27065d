//! The data path allocates nothing: counted by a test-only global allocator, per thread so that
//! other tests running at the same time do not disturb the count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use super::harness::*;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: during thread teardown the counter may already be gone.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

#[allow(unsafe_code)]
// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn relaying_allocates_nothing() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    let relay = h.allocate(&mut alice, vec![]).relays[0];
    assert_eq!(
        h.channel_bind(&alice, MIN_CHANNEL, peer()).class(),
        MessageClass::SuccessResponse
    );
    assert_eq!(
        h.create_permission(&alice, &[peer2()]).class(),
        MessageClass::SuccessResponse
    );
    let channel_data = kit::channel_data(MIN_CHANNEL, &[7; 100]);
    let tid = h.tid();
    let send = encode(
        SEND,
        MessageClass::Indication,
        tid,
        vec![
            XorPeerAddress::from(peer2()).into(),
            Data::new(vec![7; 100]).into(),
        ],
    );
    let mut out = [0u8; crate::wire::PAYLOAD_OFFSET + 1500];
    let now = h.now;

    let before = allocations();
    for _ in 0..1000 {
        let outcome = h
            .server
            .handle_client_packet(alice.from, &channel_data, now);
        assert!(matches!(outcome, ClientOutcome::Relay { .. }));
        let route = h.server.handle_peer_packet(relay, peer(), 100, now);
        assert_eq!(route.and_then(|r| r.channel), Some(MIN_CHANNEL));
        crate::wire::write_channel_header(&mut out, MIN_CHANNEL, 100);

        let outcome = h.server.handle_client_packet(alice.from, &send, now);
        assert!(matches!(outcome, ClientOutcome::Relay { .. }));
        let route = h.server.handle_peer_packet(relay, peer2(), 100, now);
        assert_eq!(route.map(|r| r.channel), Some(None));
        crate::wire::write_data_indication(
            &mut out,
            peer2(),
            100,
            stun_types::message::TransactionId::from(7u128),
        );
    }
    let spent = allocations() - before;
    assert_eq!(
        spent, 0,
        "{spent} heap allocations for 4000 relayed packets"
    );
}
