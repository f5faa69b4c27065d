//! Feeds fuzzer bytes to the TCP/TLS stream framing (`relay/src/framing.rs`) in arbitrary
//! read sizes, reassembling frames the way `serve_stream` in `relay/src/worker.rs` does: a
//! read into a small buffer while no frame is partial, complete frames handed on, a partial
//! frame kept in a buffer of its own that grows by `bytes_wanted` and is read into.
//!
//! Input layout: byte 0 = `k` (low nibble: how many split bytes follow) and a scale (high
//! nibble); the next `k` bytes give the read sizes, cycled (`1 + byte * (1 + scale)`); the rest
//! is the stream. TLS hands the framer the same decrypted byte stream, so this covers both.
//!
//! Beyond "no panic", it checks that:
//! - every complete frame is well formed: a STUN frame (`00` leading bits) is the 20-byte
//!   header plus the header's length, unpadded; a ChannelData frame (`01`) is the 4-byte header
//!   plus its length, padded to a multiple of 4 on the stream (RFC 8656 §12.5);
//! - a frame and its padding lie inside the bytes received, and fit `MAX_FRAME`;
//! - a partial frame is less than `MAX_FRAME`, and `bytes_wanted` is exactly what completes
//!   it (0 for a complete or invalid frame), so the worker always has room to read (a read
//!   into no room returns 0 bytes, which it takes for end of stream);
//! - `Invalid` is answered for the `10` and `11` leading bits only;
//! - the frames found do not depend on how the stream was split: they equal those an
//!   independent parser finds in the whole stream at once, and the stream ends in the same
//!   state (waiting at the same offset, or invalid at the same offset).
#![no_main]

use libfuzzer_sys::fuzz_target;

// The framing module is plain Rust with no dependencies; it lives in the binary crate, so it
// is compiled in here from its source rather than through a library target.
#[allow(dead_code)]
#[path = "../../src/framing.rs"]
mod framing;

use framing::{bytes_wanted, next_frame, Frame, MAX_FRAME};

/// A frame found on the stream: where it starts, its length and its padding.
#[derive(Debug, PartialEq, Eq)]
struct Found {
    offset: usize,
    len: usize,
    padding: usize,
}

/// How the stream ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Waiting for more bytes of the frame starting at this offset (or for nothing, at the end).
    Waiting(usize),
    /// Unframeable bytes at this offset: the worker closes the connection.
    Invalid(usize),
}

/// The frames in `stream` read in one piece, by a parser written from the RFCs, independent
/// of `framing.rs`.
fn reference(stream: &[u8]) -> (Vec<Found>, End) {
    let mut frames = Vec::new();
    let mut offset = 0;
    loop {
        let rest = &stream[offset..];
        if rest.is_empty() {
            return (frames, End::Waiting(offset));
        }
        let channel_data = match rest[0] >> 6 {
            0b00 => false,
            0b01 => true,
            _ => return (frames, End::Invalid(offset)),
        };
        if rest.len() < 4 {
            return (frames, End::Waiting(offset));
        }
        let body = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let (len, padding) = if channel_data {
            let len = 4 + body;
            (len, len.next_multiple_of(4) - len)
        } else {
            (20 + body, 0)
        };
        if rest.len() < len + padding {
            return (frames, End::Waiting(offset));
        }
        frames.push(Found {
            offset,
            len,
            padding,
        });
        offset += len + padding;
    }
}

/// Checks one complete frame at the start of `buf`.
fn check_frame(buf: &[u8], len: usize, padding: usize) {
    assert!(len + padding <= buf.len(), "frame past the bytes received");
    assert!(len + padding <= MAX_FRAME, "frame larger than MAX_FRAME");
    let body = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    match buf[0] >> 6 {
        0b00 => {
            assert_eq!(len, 20 + body, "STUN length is the header's");
            assert_eq!(padding, 0, "STUN is not padded");
        }
        0b01 => {
            assert_eq!(len, 4 + body, "ChannelData length is the header's");
            assert!(padding < 4, "at most 3 bytes of padding");
            assert_eq!((len + padding) % 4, 0, "ChannelData padded to 4 on streams");
        }
        _ => panic!("a frame with leading bits {:02b}", buf[0] >> 6),
    }
}

/// `serve_stream`'s first read, into a buffer on the stack (`FIRST_READ` in worker.rs).
const FIRST_READ: usize = 2048;
/// The least it reserves for a read into a partial frame (`READ_CHUNK` in worker.rs).
const READ_CHUNK: usize = 16 * 1024;

/// Checks `bytes_wanted` on a partial frame: it is what makes the frame complete, no less
/// (or, before the length is known, what completes the 4 bytes that say it).
fn check_wanted(partial: &[u8]) {
    assert!(partial.len() < MAX_FRAME, "more than one frame left over");
    let wanted = bytes_wanted(partial);
    assert!(wanted > 0, "a partial frame wants more bytes");
    let mut more = partial.to_vec();
    more.resize(partial.len() + wanted, 0);
    if partial.len() >= 4 {
        assert_eq!(
            next_frame(&more).stream_len(),
            Some(more.len()),
            "wanted completes it"
        );
        more.pop();
        assert_eq!(next_frame(&more), Frame::Incomplete, "wanted is the least");
    } else {
        assert_eq!(more.len(), 4, "wanted completes the length");
    }
}

/// Hands the complete frames at the start of `bytes` on, like `Worker::take_frames`: the
/// bytes they took, or `None` at unframeable bytes.
fn take_frames(bytes: &[u8], base: usize, frames: &mut Vec<Found>) -> Option<usize> {
    let mut start = 0;
    loop {
        match next_frame(&bytes[start..]) {
            Frame::Incomplete => return Some(start),
            Frame::Invalid => {
                assert!(bytes[start] >= 0x80, "Invalid for STUN or ChannelData");
                assert_eq!(bytes_wanted(&bytes[start..]), 0);
                return None;
            }
            frame @ Frame::Complete { len, padding } => {
                assert_eq!(frame.stream_len(), Some(len + padding));
                assert_eq!(bytes_wanted(&bytes[start..]), 0);
                check_frame(&bytes[start..], len, padding);
                frames.push(Found {
                    offset: base + start,
                    len,
                    padding,
                });
                start += len + padding;
            }
        }
    }
}

/// Reads `stream` in pieces of `sizes` (cycled) the way `serve_stream` does: into a
/// `FIRST_READ` buffer while no frame is partial, else into the spare capacity of a buffer
/// holding the partial frame, reserved for `bytes_wanted` (at least `READ_CHUNK`).
fn reassemble(stream: &[u8], sizes: &[usize]) -> (Vec<Found>, End) {
    let mut partial: Vec<u8> = Vec::new();
    // Offset in the stream of the first byte not handed on.
    let mut base = 0;
    let mut frames = Vec::new();
    let mut sent = 0;
    let mut sizes = sizes.iter().copied().cycle();
    while sent < stream.len() {
        let free = if partial.is_empty() {
            FIRST_READ
        } else {
            check_wanted(&partial);
            partial.reserve(bytes_wanted(&partial).max(READ_CHUNK));
            partial.capacity() - partial.len()
        };
        // A read of an empty buffer returns 0, which the worker takes for end of stream.
        assert!(free > 0, "no room to read into");
        let want = sizes.next().unwrap_or(usize::MAX);
        let n = want.min(free).min(stream.len() - sent);
        let read = &stream[sent..sent + n];
        sent += n;
        let taken = if partial.is_empty() {
            let taken = take_frames(read, base, &mut frames);
            if let Some(consumed) = taken {
                partial.extend_from_slice(&read[consumed..]);
            }
            taken
        } else {
            partial.extend_from_slice(read);
            let taken = take_frames(&partial, base, &mut frames);
            if let Some(consumed) = taken {
                partial.drain(..consumed);
            }
            taken
        };
        let Some(consumed) = taken else {
            let at = frames.last().map_or(base, |f| f.offset + f.len + f.padding);
            return (frames, End::Invalid(at));
        };
        base += consumed;
    }
    (frames, End::Waiting(base))
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(head & 0x0F).min(rest.len());
    let scale = 1 + usize::from(head >> 4);
    let (splits, stream) = rest.split_at(count);
    let sizes: Vec<usize> = splits.iter().map(|&b| 1 + usize::from(b) * scale).collect();

    let expected = reference(stream);
    assert_eq!(reassemble(stream, &sizes), expected, "split reads");
    // The whole stream in one read finds the same frames.
    assert_eq!(reassemble(stream, &[]), expected, "one read");
});
