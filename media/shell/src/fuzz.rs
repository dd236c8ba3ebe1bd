//! Entry points for the fuzz targets in `fuzz/` (the `fuzzing` feature
//! only): thin wrappers that make the ICE-TCP framing (RFC 4571) reachable
//! from outside, unchanged. Nothing here is API.

use bytes::{Bytes, BytesMut};

pub use crate::tcp::MAX_FRAME;

/// The complete frames at the front of `buf`, split off (with their length
/// prefixes), as a connection's reader takes them; an error (its `Debug`
/// form) for a bad length.
pub fn take_frames(buf: &mut BytesMut) -> Result<Option<Bytes>, String> {
    crate::tcp::take_frames(buf).map_err(|e| format!("{e:?}"))
}

/// The frames of a chunk from [`take_frames`], without their prefixes.
pub fn frames(chunk: &[u8]) -> Vec<&[u8]> {
    crate::tcp::frames(chunk).collect()
}

/// Appends `datagram` to `out` as one frame, as a connection's writer does;
/// false when it does not fit a frame.
pub fn put_frame(out: &mut Vec<u8>, datagram: &[u8]) -> bool {
    crate::tcp::put_frame(out, datagram)
}

/// Whether `frame` may open an ICE-TCP connection (a STUN binding request
/// with a USERNAME).
pub fn is_first_frame(frame: &[u8]) -> bool {
    crate::tcp::is_first_frame(frame)
}
