"""The Redis plumbing every scale-out part shares, against a real redis-server."""

import pytest

from service.cluster.redis_streams import Keys, connect, fields_to_frames, frames_to_fields
from service.wire import protocol as P
from tests.helpers import free_port


def test_frames_survive_a_stream_entry_byte_for_byte(redis_server):
    r = connect(redis_server.url, socket_timeout=5)
    frames = P.encode_events(b"spikes", "rig1", 7, 2_000_000, 4, [0, 3], [1_000_100, 1_000_900])
    r.xadd(Keys.source("rig1"), frames_to_fields(frames))
    (_, entries), = r.xread({Keys.source("rig1"): 0})
    back = fields_to_frames(entries[0][1])
    assert back == [bytes(f) for f in frames]
    assert P.decode(back).header.seq == 7


def test_wrong_url_names_the_url_and_what_to_do():
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(ConnectionError, match=f"cannot reach Redis at {url}.*redis-server"):
        connect(url, socket_timeout=5)
