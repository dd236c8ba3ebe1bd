//! What the synthetic participants send: Opus audio encoded once at start
//! from a generated voice-like signal, and simulcast-shaped VP8 frames with
//! valid payload descriptors. Every frame ends with a 16-byte [`Trailer`]
//! that receivers strip to measure latency, loss and order.
//!
//! The server forwards frames byte-identical (str0m frame mode), so the
//! trailer survives depacketization and repacketization. The Opus packets are
//! real encoder output with the trailer appended; the VP8 frames have a valid
//! payload header (and keyframe start code) but the picture data is filler.

use std::time::Duration;

/// Length of the measurement trailer at the end of every frame.
pub const TRAILER_LEN: usize = 16;
const MAGIC: [u8; 2] = *b"VL";
const VIDEO_FLAG: u8 = 0x80;

/// The measurement trailer: who sent a frame, which one, and when.
///
/// Layout (16 bytes, big endian): `"VL"`, layer byte (bit 7 set for video,
/// low bits the simulcast layer index), sender id (u32), frame sequence
/// (u32), send time in microseconds since the run's epoch (u40).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// The sending track: participant index * 2 + (1 for video).
    pub sender: u32,
    /// True for video.
    pub video: bool,
    /// The simulcast layer index (0 for audio and single-layer video).
    pub layer: u8,
    /// The frame number on this track; all layers of a video frame share it.
    pub seq: u32,
    /// Send time, microseconds since the run's epoch.
    pub sent_us: u64,
}

impl Trailer {
    /// Appends the encoded trailer to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        let kind = if self.video { VIDEO_FLAG } else { 0 };
        out.push(kind | (self.layer & 0x7f));
        out.extend_from_slice(&self.sender.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.sent_us.to_be_bytes()[3..8]);
    }

    /// Parses the last [`TRAILER_LEN`] bytes of `frame`.
    pub fn parse(frame: &[u8]) -> Option<Trailer> {
        let t = frame.get(frame.len().checked_sub(TRAILER_LEN)?..)?;
        if t[0..2] != MAGIC {
            return None;
        }
        let mut ts = [0u8; 8];
        ts[3..8].copy_from_slice(&t[11..16]);
        Some(Trailer {
            video: t[2] & VIDEO_FLAG != 0,
            layer: t[2] & 0x7f,
            sender: u32::from_be_bytes([t[3], t[4], t[5], t[6]]),
            seq: u32::from_be_bytes([t[7], t[8], t[9], t[10]]),
            sent_us: u64::from_be_bytes(ts),
        })
    }

    /// The sender id of a participant's track.
    pub fn sender_id(participant: u32, video: bool) -> u32 {
        participant * 2 + u32::from(video)
    }
}

/// Opus frames encoded once from a generated signal, played in a loop.
#[derive(Debug, Clone)]
pub struct OpusLibrary {
    frames: Vec<Vec<u8>>,
}

/// Samples per 20 ms at 48 kHz.
pub const OPUS_FRAME_SAMPLES: usize = 960;
/// Audio frame interval.
pub const AUDIO_INTERVAL: Duration = Duration::from_millis(20);

impl OpusLibrary {
    /// Encodes `seconds` of a voice-like signal (a gliding harmonic tone with
    /// a syllable envelope and a little noise) at `bitrate` bits/s, mono 48 kHz.
    pub fn generate(seconds: u32, bitrate: i32) -> Result<Self, opus::Error> {
        let mut enc = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip)?;
        enc.set_bitrate(opus::Bitrate::Bits(bitrate))?;
        enc.set_vbr(true)?;
        let n = (seconds as usize * 1000 / 20).max(1);
        let mut rng = fastrand::Rng::with_seed(7);
        let mut phase = 0.0f64;
        let mut frames = Vec::with_capacity(n);
        let mut pcm = [0i16; OPUS_FRAME_SAMPLES];
        let mut out = [0u8; 1500];
        for f in 0..n {
            for (i, s) in pcm.iter_mut().enumerate() {
                let t = (f * OPUS_FRAME_SAMPLES + i) as f64 / 48_000.0;
                let f0 = 150.0 + 40.0 * (t * 0.7).sin() + 20.0 * (t * 3.1).sin();
                phase += std::f64::consts::TAU * f0 / 48_000.0;
                let mut v = 0.0;
                for h in 1..=12 {
                    // Formant-ish weights around 500 Hz and 1500 Hz.
                    let fh = f0 * h as f64;
                    let w = (-((fh - 500.0) / 300.0).powi(2)).exp()
                        + 0.5 * (-((fh - 1500.0) / 400.0).powi(2)).exp()
                        + 0.05;
                    v += w * (phase * h as f64).sin();
                }
                let syllable = (t * std::f64::consts::PI * 4.0).sin().abs().powf(0.6);
                let noise = (rng.f64() - 0.5) * 0.05;
                *s = ((v * 0.25 * syllable + noise) * 12_000.0).clamp(-32_000.0, 32_000.0) as i16;
            }
            let len = enc.encode(&pcm, &mut out)?;
            frames.push(out[..len].to_vec());
        }
        Ok(OpusLibrary { frames })
    }

    /// The frame at `i` (wrapping).
    pub fn frame(&self, i: usize) -> &[u8] {
        &self.frames[i % self.frames.len()]
    }

    /// Number of distinct frames.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// True when no frame was encoded.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Mean encoded frame size in bytes (without trailer).
    pub fn mean_size(&self) -> f64 {
        self.frames.iter().map(Vec::len).sum::<usize>() as f64 / self.frames.len().max(1) as f64
    }
}

/// One simulcast layer of the video a publisher sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The RTP stream id (`a=rid`); empty for a single unnamed layer.
    pub rid: String,
    /// Width in pixels (written into keyframe headers).
    pub width: u16,
    /// Height in pixels.
    pub height: u16,
    /// Target bitrate in kbit/s.
    pub kbps: u32,
}

/// The video every video publisher sends.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoSpec {
    /// Layers, lowest first; one layer with an empty rid means no simulcast.
    pub layers: Vec<Layer>,
    /// Frames per second (all layers).
    pub fps: u32,
    /// Periodic keyframe interval (keyframes also follow PLI/FIR).
    pub keyframe_interval: Duration,
    /// Largest RTP payload (VP8 descriptor included) a packet carries.
    pub max_payload: usize,
}

impl VideoSpec {
    /// Three layers (320x180, 640x360, 1280x720) named by `rids` at `kbps`.
    pub fn simulcast(rids: [&str; 3], kbps: [u32; 3], fps: u32) -> Self {
        let dims = [(320, 180), (640, 360), (1280, 720)];
        VideoSpec {
            layers: (0..3)
                .map(|i| Layer {
                    rid: rids[i].to_owned(),
                    width: dims[i].0,
                    height: dims[i].1,
                    kbps: kbps[i],
                })
                .collect(),
            fps,
            keyframe_interval: Duration::from_secs(3),
            max_payload: 1148,
        }
    }

    /// One unnamed 1280x720 layer at `kbps`.
    pub fn single(kbps: u32, fps: u32) -> Self {
        VideoSpec {
            layers: vec![Layer {
                rid: String::new(),
                width: 1280,
                height: 720,
                kbps,
            }],
            fps,
            keyframe_interval: Duration::from_secs(3),
            max_payload: 1148,
        }
    }

    /// True when the layers carry rids.
    pub fn is_simulcast(&self) -> bool {
        self.layers.len() > 1 || self.layers.iter().any(|l| !l.rid.is_empty())
    }

    /// The interval between frames.
    pub fn interval(&self) -> Duration {
        Duration::from_micros(1_000_000 / u64::from(self.fps.max(1)))
    }

    /// Index of the layer the server forwards today (the top one).
    pub fn top_layer(&self) -> usize {
        self.layers.len().saturating_sub(1)
    }
}

/// One RTP payload ready to send.
#[derive(Debug, Clone)]
pub struct Packet {
    /// The payload (VP8 descriptor + fragment, or the whole Opus frame).
    pub payload: Vec<u8>,
    /// Marker bit: last packet of a video frame, first of an audio talkspurt.
    pub marker: bool,
}

/// Where a publisher's next audio frame comes from.
#[derive(Debug, Clone)]
pub struct AudioSource {
    offset: usize,
    /// Frames produced so far (the trailer sequence of the next one).
    pub seq: u32,
}

impl AudioSource {
    /// Starts at frame `offset` of the library (spreads payloads apart).
    pub fn new(offset: usize) -> Self {
        AudioSource { offset, seq: 0 }
    }

    /// The next frame: one RTP payload, the Opus packet plus trailer.
    pub fn next(&mut self, lib: &OpusLibrary, sender: u32, sent_us: u64) -> Packet {
        let opus = lib.frame(self.offset + self.seq as usize);
        let mut payload = Vec::with_capacity(opus.len() + TRAILER_LEN);
        payload.extend_from_slice(opus);
        Trailer {
            sender,
            video: false,
            layer: 0,
            seq: self.seq,
            sent_us,
        }
        .write(&mut payload);
        let marker = self.seq == 0;
        self.seq = self.seq.wrapping_add(1);
        Packet { payload, marker }
    }

    /// RTP time (48 kHz) of the frame with sequence `seq`.
    pub fn rtp_time(seq: u32) -> u32 {
        seq.wrapping_mul(OPUS_FRAME_SAMPLES as u32)
    }
}

/// Per-layer VP8 state: picture id, temporal layer index, keyframe request.
#[derive(Debug, Clone)]
struct LayerState {
    picture_id: u16,
    tl0_pic_idx: u8,
    /// Position in the L1T3 temporal pattern (0, 2, 1, 2).
    pattern: usize,
    force_key: bool,
}

/// A publisher's simulcast VP8 source: frame sizes around each layer's
/// bitrate, periodic and requested keyframes, L1T3 temporal layer ids.
#[derive(Debug, Clone)]
pub struct VideoSource {
    layers: Vec<LayerState>,
    /// Frames produced so far (the trailer sequence of the next one).
    pub seq: u32,
    frames_per_key: u32,
    rng: fastrand::Rng,
}

/// Filler bytes for frame bodies (content is irrelevant; copying is cheap).
static FILLER: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let mut rng = fastrand::Rng::with_seed(11);
    (0..64 * 1024).map(|_| rng.u8(..)).collect()
});

/// One layer of one video frame, packetized.
#[derive(Debug, Clone)]
pub struct LayerFrame {
    /// The layer index.
    pub layer: usize,
    /// Whether this is a keyframe.
    pub key: bool,
    /// The RTP payloads, last one with the marker bit.
    pub packets: Vec<Packet>,
}

const TEMPORAL_PATTERN: [u8; 4] = [0, 2, 1, 2];

impl VideoSource {
    /// A source for `spec`, seeded so publishers differ.
    pub fn new(spec: &VideoSpec, seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let fpk = (spec.keyframe_interval.as_secs_f64() * f64::from(spec.fps)).round() as u32;
        VideoSource {
            layers: spec
                .layers
                .iter()
                .map(|_| LayerState {
                    picture_id: rng.u16(..0x7fff),
                    tl0_pic_idx: rng.u8(..),
                    pattern: 0,
                    force_key: true,
                })
                .collect(),
            seq: 0,
            frames_per_key: fpk.max(1),
            rng,
        }
    }

    /// Asks for a keyframe on `layer` (all layers when `None`).
    pub fn request_keyframe(&mut self, layer: Option<usize>) {
        for (i, l) in self.layers.iter_mut().enumerate() {
            if layer.is_none_or(|x| x == i) {
                l.force_key = true;
            }
        }
    }

    /// RTP time (90 kHz) of frame `seq` at `fps`.
    pub fn rtp_time(seq: u32, fps: u32) -> u32 {
        (u64::from(seq) * 90_000 / u64::from(fps.max(1))) as u32
    }

    /// Produces the next frame on every layer, packetized.
    pub fn next(&mut self, spec: &VideoSpec, sender: u32, sent_us: u64) -> Vec<LayerFrame> {
        let periodic = self.seq > 0 && self.seq.is_multiple_of(self.frames_per_key);
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let mut out = Vec::with_capacity(spec.layers.len());
        for (i, layer) in spec.layers.iter().enumerate() {
            let st = &mut self.layers[i];
            let key = std::mem::take(&mut st.force_key) || periodic;
            if key {
                st.pattern = 0;
            }
            let tid = TEMPORAL_PATTERN[st.pattern % 4];
            let sync = matches!(st.pattern % 4, 1 | 2);
            st.pattern += 1;
            // Every base-layer frame, keyframes included, takes the next
            // TL0PICIDX (RFC 7741): a keyframe reusing the previous one
            // makes a receiver's depacketizer see two frames as one.
            if tid == 0 {
                st.tl0_pic_idx = st.tl0_pic_idx.wrapping_add(1);
            }
            let mean = f64::from(layer.kbps) * 1000.0 / 8.0 / f64::from(spec.fps.max(1));
            let size = if key {
                mean * 5.0
            } else {
                let tl = match tid {
                    0 => 1.3,
                    1 => 1.0,
                    _ => 0.8,
                };
                mean * tl * (0.75 + 0.5 * self.rng.f64())
            };
            let size = (size as usize).max(40);
            let frame = vp8_frame(key, layer, size, sender, i as u8, seq, sent_us);
            let desc = Vp8Descriptor {
                picture_id: st.picture_id,
                tl0_pic_idx: st.tl0_pic_idx,
                tid,
                layer_sync: sync,
                non_reference: tid == 2 && !key,
            };
            st.picture_id = (st.picture_id + 1) & 0x7fff;
            out.push(LayerFrame {
                layer: i,
                key,
                packets: packetize_vp8(&frame, &desc, spec.max_payload),
            });
        }
        out
    }
}

/// A VP8 frame of `size` bytes: payload header, keyframe start code and
/// dimensions, filler, trailer.
fn vp8_frame(
    key: bool,
    layer: &Layer,
    size: usize,
    sender: u32,
    layer_index: u8,
    seq: u32,
    sent_us: u64,
) -> Vec<u8> {
    let size = size.max(TRAILER_LEN + 10);
    let mut f = Vec::with_capacity(size);
    // RFC 6386 9.1: 19-bit first partition size, show_frame, version 0, P (0 = key).
    let first_part = ((size / 4) as u32).min(0x7ffff);
    let b0 = ((first_part & 0x7) << 5) as u8 | 0x10 | u8::from(!key);
    f.push(b0);
    f.push((first_part >> 3) as u8);
    f.push((first_part >> 11) as u8);
    if key {
        f.extend_from_slice(&[0x9d, 0x01, 0x2a]);
        f.extend_from_slice(&layer.width.to_le_bytes());
        f.extend_from_slice(&layer.height.to_le_bytes());
    }
    let fill = size - TRAILER_LEN - f.len();
    let start = (seq as usize * 131 + layer_index as usize * 977) % (FILLER.len() / 2);
    let mut left = fill;
    let mut at = start;
    while left > 0 {
        let n = left.min(FILLER.len() - at);
        f.extend_from_slice(&FILLER[at..at + n]);
        left -= n;
        at = 0;
    }
    Trailer {
        sender,
        video: true,
        layer: layer_index,
        seq,
        sent_us,
    }
    .write(&mut f);
    f
}

/// The fields of an RFC 7741 VP8 payload descriptor we set.
#[derive(Debug, Clone, Copy)]
pub struct Vp8Descriptor {
    /// 15-bit picture id.
    pub picture_id: u16,
    /// Temporal layer zero index.
    pub tl0_pic_idx: u8,
    /// Temporal layer id (0..=2).
    pub tid: u8,
    /// Y bit: the frame depends only on the base layer.
    pub layer_sync: bool,
    /// N bit: the frame is not used as a reference.
    pub non_reference: bool,
}

/// Length of the descriptor [`packetize_vp8`] writes.
pub const VP8_DESCRIPTOR_LEN: usize = 6;

/// Splits `frame` into payloads of at most `max_payload` bytes of nearly
/// equal size (as libwebrtc does), each with a descriptor carrying X, I
/// (15-bit picture id), L and T; S on the first; marker on the last.
pub fn packetize_vp8(frame: &[u8], d: &Vp8Descriptor, max_payload: usize) -> Vec<Packet> {
    let room = max_payload.saturating_sub(VP8_DESCRIPTOR_LEN).max(1);
    let n = frame.len().div_ceil(room).max(1);
    let base = frame.len() / n;
    let extra = frame.len() % n;
    let mut out = Vec::with_capacity(n);
    let mut at = 0;
    for i in 0..n {
        let len = base + usize::from(i < extra);
        let mut p = Vec::with_capacity(VP8_DESCRIPTOR_LEN + len);
        let n_bit = if d.non_reference { 0x20 } else { 0 };
        let s_bit = if i == 0 { 0x10 } else { 0 };
        p.push(0x80 | n_bit | s_bit);
        p.push(0xe0); // I, L, T present; K absent.
        p.push(0x80 | (d.picture_id >> 8) as u8 & 0x7f);
        p.push(d.picture_id as u8);
        p.push(d.tl0_pic_idx);
        let y_bit = if d.layer_sync { 0x20 } else { 0 };
        p.push(((d.tid & 3) << 6) | y_bit);
        p.extend_from_slice(&frame[at..at + len]);
        at += len;
        out.push(Packet {
            payload: p,
            marker: i + 1 == n,
        });
    }
    out
}

/// Length of the VP8 payload descriptor at the start of `payload`.
pub fn vp8_descriptor_len(payload: &[u8]) -> Option<usize> {
    let b0 = *payload.first()?;
    let mut n = 1;
    if b0 & 0x80 != 0 {
        let x = *payload.get(1)?;
        n = 2;
        if x & 0x80 != 0 {
            let pid = *payload.get(n)?;
            n += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            n += 1;
        }
        if x & 0x30 != 0 {
            n += 1;
        }
    }
    (n <= payload.len()).then_some(n)
}

/// Finds the trailer at the end of video frames arriving as RTP packets:
/// keeps the tail of the previous packet in case the last packet of a frame
/// holds fewer than [`TRAILER_LEN`] bytes.
#[derive(Debug, Clone, Default)]
pub struct TailAssembler {
    last_seq: Option<u64>,
    tail: [u8; TRAILER_LEN],
    tail_len: usize,
}

impl TailAssembler {
    /// Feeds one VP8 RTP payload with extended sequence number `seq`;
    /// returns the frame's trailer on the last packet of a frame.
    pub fn push(&mut self, seq: u64, payload: &[u8], marker: bool) -> Option<Trailer> {
        let data = payload.get(vp8_descriptor_len(payload)?..)?;
        let contiguous = self.last_seq.is_some_and(|s| s + 1 == seq);
        let result = if !marker {
            None
        } else if data.len() >= TRAILER_LEN {
            Trailer::parse(data)
        } else if contiguous && self.tail_len + data.len() >= TRAILER_LEN {
            let mut buf = [0u8; 2 * TRAILER_LEN];
            buf[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
            buf[self.tail_len..self.tail_len + data.len()].copy_from_slice(data);
            Trailer::parse(&buf[..self.tail_len + data.len()])
        } else {
            None
        };
        // Remember the last bytes of this packet for a short successor.
        let keep = data.len().min(TRAILER_LEN);
        self.tail[..keep].copy_from_slice(&data[data.len() - keep..]);
        self.tail_len = keep;
        self.last_seq = Some(seq);
        result
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn trailer_round_trips() {
        let t = Trailer {
            sender: 77,
            video: true,
            layer: 2,
            seq: 123_456,
            sent_us: (1 << 39) + 5,
        };
        let mut v = vec![1, 2, 3];
        t.write(&mut v);
        assert_eq!(v.len(), 3 + TRAILER_LEN);
        assert_eq!(Trailer::parse(&v), Some(t));
        assert_eq!(Trailer::parse(&v[..10]), None);
    }

    #[test]
    fn opus_frames_are_voice_sized() {
        let lib = OpusLibrary::generate(1, 32_000).unwrap();
        assert_eq!(lib.len(), 50);
        let m = lib.mean_size();
        assert!((30.0..160.0).contains(&m), "mean opus frame {m} B");
    }

    #[test]
    fn vp8_frames_packetize_with_descriptors_and_trailers() {
        let spec = VideoSpec::simulcast(["l", "m", "h"], [150, 500, 1700], 30);
        let mut src = VideoSource::new(&spec, 1);
        let frames = src.next(&spec, 9, 1000);
        assert_eq!(frames.len(), 3);
        let top = &frames[2];
        assert!(top.key);
        // A 720p keyframe at 1.7 Mbit/s is ~35 kB: many packets.
        assert!(top.packets.len() > 20, "{}", top.packets.len());
        let mut asm = TailAssembler::default();
        let mut found = None;
        let mut whole = Vec::new();
        for (i, p) in top.packets.iter().enumerate() {
            assert!(p.payload.len() <= spec.max_payload);
            assert_eq!(vp8_descriptor_len(&p.payload), Some(VP8_DESCRIPTOR_LEN));
            assert_eq!(p.payload[0] & 0x10 != 0, i == 0);
            whole.extend_from_slice(&p.payload[VP8_DESCRIPTOR_LEN..]);
            found = asm.push(100 + i as u64, &p.payload, p.marker).or(found);
        }
        assert_eq!(&whole[3..6], &[0x9d, 0x01, 0x2a]);
        assert_eq!(whole[0] & 1, 0, "keyframe P bit");
        let t = found.unwrap();
        assert_eq!((t.sender, t.video, t.layer, t.seq), (9, true, 2, 0));
        let next = src.next(&spec, 9, 2000);
        assert!(!next[2].key);
        assert_eq!(next[2].packets[0].payload[VP8_DESCRIPTOR_LEN] & 1, 1);
    }

    #[test]
    fn each_base_layer_frame_takes_the_next_tl0picidx() {
        let spec = VideoSpec::simulcast(["l", "m", "h"], [150, 500, 1700], 30);
        let mut src = VideoSource::new(&spec, 3);
        let mut last: [Option<u8>; 3] = [None; 3];
        for n in 0..200u32 {
            // Keyframe requests at odd places in the L1T3 pattern.
            if n % 7 == 3 {
                src.request_keyframe(Some((n % 3) as usize));
            }
            for f in src.next(&spec, 1, u64::from(n)) {
                let d = &f.packets[0].payload;
                let (tl0, tid) = (d[4], d[5] >> 6);
                if tid == 0 {
                    if let Some(prev) = last[f.layer] {
                        assert_eq!(tl0, prev.wrapping_add(1), "frame {n} layer {}", f.layer);
                    }
                    last[f.layer] = Some(tl0);
                } else {
                    assert_eq!(Some(tl0), last[f.layer], "frame {n} layer {}", f.layer);
                }
            }
        }
    }

    #[test]
    fn trailer_split_across_packets_is_found() {
        let mut frame = vec![0u8; 100];
        Trailer {
            sender: 3,
            video: true,
            layer: 0,
            seq: 5,
            sent_us: 9,
        }
        .write(&mut frame);
        // A repacketizer that leaves 4 bytes in the last packet (1-byte descriptors).
        let mut a = vec![0x10];
        a.extend_from_slice(&frame[..frame.len() - 4]);
        let mut b = vec![0x00];
        b.extend_from_slice(&frame[frame.len() - 4..]);
        let mut asm = TailAssembler::default();
        assert_eq!(asm.push(1, &a, false), None);
        assert_eq!(asm.push(2, &b, true).map(|t| t.seq), Some(5));
    }
}
