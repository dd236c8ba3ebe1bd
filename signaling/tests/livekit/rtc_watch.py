"""LiveKit's real-time Python SDK (`livekit`) joins a vela room over /rtc
and, for SECONDS seconds, says what the room tells it about the others
(joins, published tracks, leaves), a line at a time; then whether it is
still connected, and leaves. Run by signaling/tests/livekit_api.rs with
VELA_URL (ws://host:port) and TOKEN."""

import asyncio
import os

from livekit import rtc


async def main():
    room = rtc.Room()

    @room.on("participant_connected")
    def joined(p):
        print("joined", p.identity, p.sid, flush=True)

    @room.on("track_published")
    def published(publication, p):
        kind = "audio" if publication.kind == rtc.TrackKind.KIND_AUDIO else "video"
        print("published", p.identity, kind, publication.sid, flush=True)

    @room.on("participant_disconnected")
    def left(p):
        print("left", p.identity, flush=True)

    await asyncio.wait_for(room.connect(os.environ["VELA_URL"], os.environ["TOKEN"]), 20)
    print("connected", room.local_participant.sid, flush=True)
    await asyncio.sleep(float(os.environ.get("SECONDS", "10")))
    connected = room.connection_state == rtc.ConnectionState.CONN_CONNECTED
    print("still connected" if connected else "no longer connected", flush=True)
    await room.disconnect()
    print("done", flush=True)


asyncio.run(main())
