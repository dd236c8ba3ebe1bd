"""LiveKit's real-time Python SDK (`livekit`, its Rust core inside) joins a
vela room over /rtc and publishes a microphone (AudioSource: a 440 Hz tone)
and a camera (VideoSource: 320x240 frames) for SECONDS seconds, with a data
packet (topic "chat") to the room, then leaves.
Run by signaling/tests/livekit_api.rs with VELA_URL (ws://host:port) and
TOKEN; says on standard output what it did, a line at a time."""

import asyncio
import os

import numpy as np
from livekit import rtc

RATE = 48000
SAMPLES = RATE // 100  # 10 ms of audio per frame
WIDTH, HEIGHT = 320, 240


async def main():
    seconds = float(os.environ.get("SECONDS", "5"))
    room = rtc.Room()
    await asyncio.wait_for(room.connect(os.environ["VELA_URL"], os.environ["TOKEN"]), 20)
    print("connected", room.local_participant.sid, flush=True)
    audio = rtc.AudioSource(RATE, 1)
    video = rtc.VideoSource(WIDTH, HEIGHT)
    mic = rtc.LocalAudioTrack.create_audio_track("mic", audio)
    cam = rtc.LocalVideoTrack.create_video_track("cam", video)
    for track, source, kind in [
        (mic, rtc.TrackSource.SOURCE_MICROPHONE, "audio"),
        (cam, rtc.TrackSource.SOURCE_CAMERA, "video"),
    ]:
        options = rtc.TrackPublishOptions(source=source)
        publication = await asyncio.wait_for(
            room.local_participant.publish_track(track, options), 20
        )
        print("published", kind, publication.sid, flush=True)
    # A user data packet to the room, over the publisher connection's
    # `_reliable` data channel.
    await asyncio.wait_for(
        room.local_participant.publish_data(b"hello from alice", topic="chat"), 20
    )
    print("sent data", flush=True)
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    tone = np.arange(SAMPLES) * 2 * np.pi * 440 / RATE
    n = 0
    while loop.time() < end:
        phase = n * SAMPLES * 2 * np.pi * 440 / RATE
        samples = (np.sin(tone + phase) * 8000).astype(np.int16)
        await audio.capture_frame(rtc.AudioFrame(samples.tobytes(), RATE, 1, SAMPLES))
        if n % 3 == 0:  # about 30 frames a second
            shade = (n * 3) % 255
            pixels = np.full((HEIGHT, WIDTH, 4), shade, dtype=np.uint8)
            video.capture_frame(
                rtc.VideoFrame(WIDTH, HEIGHT, rtc.VideoBufferType.RGBA, pixels.tobytes())
            )
        n += 1
        await asyncio.sleep(0.01)
    print("sent", n, flush=True)
    await room.disconnect()
    print("done", flush=True)


asyncio.run(main())
