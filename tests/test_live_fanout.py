"""The shared live feeds behind the WebSocket streams (service/api/live.py), in process,
against a real ZeroMQ publisher on 127.0.0.1."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import zmq

from service.api.live import Fanout, FeedKey, StreamEnded
from service.wire import protocol as P

pytestmark = pytest.mark.unit


def _decoded(seq: int) -> list[bytes]:
    return [bytes(f) for f in P.encode_array(b"decoded", P.KIND_DECODED, "s", seq, seq * 1000,
                                             np.array([float(seq)]))]


async def _publish(pub: zmq.Socket, seqs: range) -> None:
    for seq in seqs:
        pub.send_multipart(_decoded(seq))
        await asyncio.sleep(0)


def test_followers_share_one_feed_a_slow_one_loses_only_its_own_oldest_and_all_see_the_end():
    async def scenario() -> None:
        pub = zmq.Context.instance().socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        active = True

        async def still_active() -> bool:
            return active

        fanout = Fanout()
        key = FeedKey("s1", f"tcp://127.0.0.1:{port}", (b"decoded",))
        never = asyncio.get_running_loop().create_future()  # the browsers stay
        try:
            async with fanout.follow(key, still_active) as fast, \
                    fanout.follow(key, still_active, queue_size=10) as slow:
                assert len(fanout.feeds) == 1 and fanout.followers() == 2
                # The subscription joins asynchronously: publish until the fast one hears.
                warm = 0
                while fast.queue.empty():
                    await _publish(pub, range(warm, warm + 1))
                    warm += 1
                    await asyncio.sleep(0.01)
                await _publish(pub, range(1000, 1100))
                got = []
                while len(got) < 100:
                    msg = await fast.receive(never, timeout=10)
                    assert msg is not None, "the fast follower stopped hearing the feed"
                    if msg.header.seq >= 1000:
                        got.append(msg.header.seq)
                assert got == list(range(1000, 1100))
                # The slow one never read: it holds its newest 10, the rest counted lost.
                held = [slow.queue.get_nowait().header.seq for _ in range(10)]
                assert held == list(range(1090, 1100)) and slow.dropped >= 90
                active = False  # the session ends: the quiet feed asks, then closes
                with pytest.raises(StreamEnded):
                    await fast.receive(never, timeout=10)
                with pytest.raises(StreamEnded):
                    await slow.receive(never, timeout=10)
            assert fanout.feeds == {} and fanout.dropped >= 90
        finally:
            never.cancel()
            pub.close(0)

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_follower_whose_browser_left_stops_waiting_and_the_last_one_out_ends_the_feed():
    async def scenario() -> None:
        async def still_active() -> bool:
            return True

        fanout = Fanout()
        key = FeedKey("s2", "tcp://127.0.0.1:9", (b"decoded",))  # nothing publishes there
        closed = asyncio.get_running_loop().create_future()
        async with fanout.follow(key, still_active) as me:
            assert await me.receive(closed, timeout=0.05) is None  # quiet: a timeout
            closed.set_result(None)
            with pytest.raises(StreamEnded):
                await me.receive(closed)
            task = fanout.feeds[key].task
        assert fanout.feeds == {}
        assert task is not None
        await asyncio.sleep(0)
        assert task.cancelled() or task.done()

    asyncio.run(asyncio.wait_for(scenario(), 30))
