"""Wire protocol v1: round trips and every rejection reason."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.wire import protocol as P

pytestmark = pytest.mark.unit


def _events(n=5, channels=96, seq=0, t_ns=1_000_000):
    ids = np.arange(n) % channels
    times = np.linspace(0, t_ns, n).astype(np.int64)
    return [bytes(f) for f in P.encode_events(b"spikes", "s", seq, t_ns, channels, ids, times)]


def _header(frames):
    return msgpack.unpackb(frames[1])


def _with_header(frames, **changes):
    h = _header(frames)
    h.update(changes)
    return [frames[0], msgpack.packb(h), *frames[2:]]


def _reason(frames):
    with pytest.raises(P.ProtocolError) as e:
        P.decode(frames)
    return e.value.reason


def test_events_round_trip_zero_copy():
    ids = np.array([3, 1, 95], np.uint16)
    times = np.array([10, 20, 30], np.int64)
    frames = P.encode_events(b"spikes", "rig1", 7, 40, 96, ids, times, {"k": 1})
    msg = P.decode(frames)
    assert msg.header.kind == P.KIND_EVENTS and msg.header.seq == 7 and msg.header.t_ns == 40
    assert msg.header.stream == "rig1" and msg.header.extra == {"k": 1}
    np.testing.assert_array_equal(msg.ids, ids)
    np.testing.assert_array_equal(msg.times, times)
    assert not msg.ids.flags.owndata  # a view on the received buffer


def test_wide_channel_ids_use_uint32():
    frames = P.encode_events(b"spikes", "s", 0, 5, 65536, np.array([65535]), np.array([1]))
    msg = P.decode(frames)
    assert msg.ids.dtype == np.dtype("<u4") and msg.ids[0] == 65535


@pytest.mark.parametrize("kind", [P.KIND_DECODED, P.KIND_BEHAVIOR])
def test_float_arrays_round_trip(kind):
    v = np.array([1.5, -2.0, 3.25])
    msg = P.decode(P.encode_array(b"t", kind, "s", 1, 2, v))
    np.testing.assert_array_equal(msg.values, v)


def test_counts_round_trip():
    c = np.array([0, 3, 1], np.uint16)
    msg = P.decode(P.encode_array(b"spikes", P.KIND_COUNTS, "s", 1, 2, c, bin_ns=1_000_000))
    assert msg.header.bin_ns == 1_000_000
    np.testing.assert_array_equal(msg.values, c)


def test_header_only_kinds():
    msg = P.decode(P.encode_control(b"stim", P.KIND_STIM, "s", 3, 4, {"status": "sent"}))
    assert msg.header.extra["status"] == "sent"
    assert P.decode(P.encode_control(b"hb", P.KIND_HEARTBEAT, "s", 3, 4, {})).header.seq == 3


# ------------------------------------------------------------------ rejections
def test_missing_frames():
    assert _reason([b"spikes"]) == "missing_frames"
    assert _reason(_events()[:3]) == "missing_frames"  # times frame missing


def test_truncated_payload():
    f = _events()
    assert _reason([f[0], f[1], f[2][:-1], f[3]]) == "payload_size"
    assert _reason([f[0], f[1], f[2], f[3][:-3]]) == "payload_size"


def test_unparseable_header():
    f = _events()
    assert _reason([f[0], b"\xc1\xff garbage", *f[2:]]) == "header_unparseable"
    assert _reason([f[0], msgpack.packb([1, 2]), *f[2:]]) == "header_unparseable"


def test_bad_version_and_kind():
    assert _reason(_with_header(_events(), v=2)) == "bad_version"
    assert _reason(_with_header(_events(), kind="spikes.wat")) == "unknown_kind"


def test_invalid_header_fields():
    assert _reason(_with_header(_events(), seq="7")) == "header_invalid"
    assert _reason(_with_header(_events(), seq=-1)) == "header_invalid"
    assert _reason(_with_header(_events(), ch=10**9)) == "header_invalid"
    f = _with_header(_events(), dtype="<f8")
    assert _reason(f) == "bad_dtype"


def test_payload_size_mismatch_with_header_count():
    assert _reason(_with_header(_events(n=5), n=6)) == "payload_size"


def test_channel_id_out_of_range():
    assert _reason(_with_header(_events(n=5, channels=96), ch=3)) == "channel_range"


def test_negative_and_nan_counts():
    neg = P.encode_array(b"s", P.KIND_COUNTS, "s", 0, 0, np.array([1, -1], np.int32), bin_ns=1)
    assert _reason(neg) == "negative_counts"
    nan = P.encode_array(b"s", P.KIND_COUNTS, "s", 0, 0, np.array([1.0, np.nan], np.float32),
                         bin_ns=1)
    assert _reason(nan) == "nan"
    inf = P.encode_array(b"s", P.KIND_DECODED, "s", 0, 0, np.array([np.inf]))
    assert _reason(inf) == "nan"


def test_counts_need_bin_width():
    f = P.encode_array(b"s", P.KIND_COUNTS, "s", 0, 0, np.array([1], np.uint8), bin_ns=0)
    assert _reason(f) == "header_invalid"


# ------------------------------------------------------------------ sequence
def _h(seq, t_ns):
    return P.Header(P.KIND_EVENTS, "s", seq, t_ns)


def test_sequence_gap_is_counted_and_accepted():
    tr = P.SequenceTracker()
    assert tr.check(_h(0, 0)) == 0
    assert tr.check(_h(4, 10)) == 3
    assert (tr.gaps, tr.missing) == (1, 3)


def test_duplicate_is_rejected():
    tr = P.SequenceTracker()
    tr.check(_h(0, 0))
    tr.check(_h(1, 10))
    with pytest.raises(P.ProtocolError) as e:
        tr.check(_h(1, 10))
    assert e.value.reason == "duplicate"


def test_timestamp_backwards_beyond_tolerance():
    tr = P.SequenceTracker(tolerance_ns=100)
    tr.check(_h(0, 1000))
    assert tr.check(_h(1, 950)) == 0  # within tolerance: accepted
    with pytest.raises(P.ProtocolError) as e:
        tr.check(_h(2, 800))
    assert e.value.reason == "timestamp_backwards"


# ------------------------------------------------------------------ fuzz
@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=5))
def test_fuzz_random_frames_only_raise_protocol_errors(frames):
    try:
        P.decode(frames)
    except P.ProtocolError as exc:
        assert exc.reason in P.REJECT_REASONS


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "kind", "stream", "seq", "t_ns", "ch", "dtype",
                                        "bin_ns", "n", "x"]),
                       st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=8), st.none(),
                                 st.floats(), st.sampled_from(list(P.KINDS) + ["<u2", "<f4"]))),
       st.lists(st.binary(max_size=32), max_size=3))
def test_fuzz_headers_only_raise_protocol_errors(header, payload):
    header.setdefault("v", 1)
    try:
        P.decode([b"t", msgpack.packb(header), *payload])
    except P.ProtocolError as exc:
        assert exc.reason in P.REJECT_REASONS


def test_restart_is_recognised_by_epoch_even_without_seq_zero():
    tr = P.SequenceTracker()
    first = P.Header(P.KIND_EVENTS, "s", 0, 0, epoch=7)
    assert not tr.is_restart(first)
    tr.check(first)
    tr.check(P.Header(P.KIND_EVENTS, "s", 500, 10, epoch=7))
    assert not tr.is_restart(P.Header(P.KIND_EVENTS, "s", 501, 11, epoch=7))
    assert tr.is_restart(P.Header(P.KIND_EVENTS, "s", 40, 0, epoch=9))  # seq 0..39 lost


def test_without_epochs_seq_zero_means_restart_and_old_seq_is_a_duplicate():
    tr = P.SequenceTracker()
    tr.check(P.Header(P.KIND_EVENTS, "s", 0, 0))
    tr.check(P.Header(P.KIND_EVENTS, "s", 5, 10))
    assert tr.is_restart(P.Header(P.KIND_EVENTS, "s", 0, 0))
    assert not tr.is_restart(P.Header(P.KIND_EVENTS, "s", 3, 5))
    with pytest.raises(P.ProtocolError):
        tr.check(P.Header(P.KIND_EVENTS, "s", 3, 5))


def test_event_times_must_lie_before_the_watermark_and_clock_fit_in_int64():
    f = P.encode_events(b"spikes", "s", 0, 100, 4, np.array([1, 2]), np.array([50, 150]))
    assert _reason(f) == "event_time"
    f = P.encode_events(b"spikes", "s", 0, 100, 4, np.array([1]), np.array([-5]))
    assert _reason(f) == "event_time"
    assert _reason(_with_header(_events(), t_ns=2**64 - 1)) == "header_invalid"
    assert _reason(_with_header(_events(), seq=2**63)) == "header_invalid"


def test_numpy_one_byte_spelling_is_accepted_and_other_spellings_are_named_in_the_refusal():
    """numpy writes uint8 as '|u1' (``np.dtype('u1').str``); a publisher that sends what its
    numpy says must not be refused. Big-endian and type names are not the wire's."""
    counts = np.array([1, 0, 2, 255], np.uint8)
    f = [bytes(x) for x in P.encode_array(b"spikes", P.KIND_COUNTS, "s", 0, 0, counts,
                                          bin_ns=1_000_000)]
    msg = P.decode(_with_header(f, dtype="|u1"))
    assert msg.header.dtype == "<u1"
    np.testing.assert_array_equal(msg.values, counts)
    for bad in (">u2", "uint8", "u1"):
        with pytest.raises(P.ProtocolError, match="not in") as e:
            P.decode(_with_header(f, dtype=bad))
        assert e.value.reason == "bad_dtype"
