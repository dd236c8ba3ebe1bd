"""LiveKit's real-time Python SDK (`livekit`) joins a vela room over /rtc
and, for SECONDS seconds, says what the room tells it about the others
(joins, published tracks, leaves, data packets) and which tracks it
subscribed to, a line
at a time; it counts what it decodes of each (VideoStream, AudioStream) and
the RTP packets its subscriber connection received (the track's inbound-rtp
stats). At the end, one line per track, then whether it is still connected,
and it leaves. Run by signaling/tests/livekit_api.rs with VELA_URL
(ws://host:port) and TOKEN."""

import asyncio
import os

from livekit import rtc


def kind_of(track):
    return "audio" if track.kind == rtc.TrackKind.KIND_AUDIO else "video"


async def main():
    room = rtc.Room()
    # (identity, kind) -> [decoded frames, the track]
    received = {}
    tasks = []

    @room.on("participant_connected")
    def joined(p):
        print("joined", p.identity, p.sid, flush=True)

    @room.on("track_published")
    def published(publication, p):
        kind = "audio" if publication.kind == rtc.TrackKind.KIND_AUDIO else "video"
        print("published", p.identity, kind, publication.sid, flush=True)

    @room.on("track_subscribed")
    def subscribed(track, publication, p):
        kind = kind_of(track)
        print("subscribed", p.identity, kind, publication.sid, flush=True)
        entry = received.setdefault((p.identity, kind), [0, track])
        entry[1] = track

        async def count():
            if kind == "video":
                stream = rtc.VideoStream(track)
            else:
                stream = rtc.AudioStream(track)
            async for _ in stream:
                entry[0] += 1

        tasks.append(asyncio.create_task(count()))

    @room.on("data_received")
    def data(packet):
        sender = packet.participant.identity if packet.participant else "server"
        print("data", sender, packet.topic, packet.data.decode(errors="replace"), flush=True)

    @room.on("participant_disconnected")
    def left(p):
        print("left", p.identity, flush=True)

    await asyncio.wait_for(room.connect(os.environ["VELA_URL"], os.environ["TOKEN"]), 20)
    print("connected", room.local_participant.sid, flush=True)
    await asyncio.sleep(float(os.environ.get("SECONDS", "10")))
    for (identity, kind), (frames, track) in sorted(received.items()):
        packets = 0
        try:
            for s in await asyncio.wait_for(track.get_stats(), 5):
                if s.HasField("inbound_rtp"):
                    packets += s.inbound_rtp.received.packets_received
        except Exception as e:  # a track ended: its stats are gone
            print("no stats", identity, kind, repr(e), flush=True)
        print("received", identity, kind, frames, "frames", packets, "packets", flush=True)
    connected = room.connection_state == rtc.ConnectionState.CONN_CONNECTED
    print("still connected" if connected else "no longer connected", flush=True)
    for t in tasks:
        t.cancel()
    await room.disconnect()
    print("done", flush=True)


asyncio.run(main())
