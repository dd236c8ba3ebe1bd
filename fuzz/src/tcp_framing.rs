//! ICE over TCP's framing (RFC 4571: a 2-byte length before each datagram),
//! as `media/shell/src/tcp.rs` reads a connection: the bytes arrive in
//! reads of any size, each read is appended to the buffer and the complete
//! frames are split off its front; a length of 0 or over `MAX_FRAME` closes
//! the connection as soon as its prefix has arrived. The first frame is
//! checked for a STUN binding request, as the accept loop does.
//!
//! Input: the first byte seeds the sizes of the reads (1 to 64 bytes, or
//! all at once), the rest is what the client sent.
//!
//! Properties: however the bytes are split into reads, the frames taken
//! are the stream's frames in order (all of them when no length is bad;
//! the taking stops at a bad one, and never passes it), each of 1 to
//! `MAX_FRAME` bytes, and writing them again (`put_frame`) gives back the
//! bytes they were taken from; what is left in the buffer is the one
//! partial frame at the end.

use vela_media::fuzz::{MAX_FRAME, frames, is_first_frame, put_frame, take_frames};

/// What reading the whole stream at once gives: its frames, whether it
/// has a bad length, and how many bytes the frames take.
fn reference(stream: &[u8]) -> (Vec<&[u8]>, bool, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(p) = stream.get(at..at + 2) {
        let len = usize::from(u16::from_be_bytes([p[0], p[1]]));
        if len == 0 || len > MAX_FRAME {
            return (out, true, at);
        }
        let Some(frame) = stream.get(at + 2..at + 2 + len) else {
            break;
        };
        out.push(frame);
        at += 2 + len;
    }
    (out, false, at)
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let (expected, bad, used) = reference(stream);
    let mut buf = bytes::BytesMut::new();
    let mut taken: Vec<Vec<u8>> = Vec::new();
    let mut failed = false;
    let mut rng = u32::from(seed) | 1;
    let mut rest = stream;
    'reads: while !rest.is_empty() {
        // A read of 1..=64 bytes (xorshift), or everything when the seed is 0.
        let n = if seed == 0 {
            rest.len()
        } else {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            (rng % 64 + 1) as usize
        };
        let (read, next) = rest.split_at(n.min(rest.len()));
        rest = next;
        buf.extend_from_slice(read);
        loop {
            match take_frames(&mut buf) {
                Ok(Some(chunk)) => {
                    let mut again = Vec::new();
                    for f in frames(&chunk) {
                        assert!(
                            !f.is_empty() && f.len() <= MAX_FRAME,
                            "a frame of {} bytes",
                            f.len()
                        );
                        assert!(put_frame(&mut again, f));
                        taken.push(f.to_vec());
                    }
                    assert_eq!(again, chunk.as_ref(), "frames written again differ");
                }
                Ok(None) => break,
                Err(e) => {
                    crate::debug!("bad frame: {e}");
                    failed = true;
                    break 'reads;
                }
            }
        }
    }
    if let Some(first) = taken.first() {
        let _ = is_first_frame(first);
    }
    assert!(
        taken.len() <= expected.len(),
        "more frames than the stream has"
    );
    for (got, want) in taken.iter().zip(&expected) {
        assert_eq!(got.as_slice(), *want, "a frame differs");
    }
    assert_eq!(
        failed, bad,
        "a bad length noticed in one reading, not the other"
    );
    if !bad {
        assert_eq!(taken.len(), expected.len(), "frames left untaken");
        assert_eq!(buf.as_ref(), &stream[used..], "the partial frame left over");
    }
}
