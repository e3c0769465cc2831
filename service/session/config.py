"""Session configuration: the pydantic models the REST API accepts and stores.

A config fully describes a session, so that it can be stored, restarted after
an API restart, and replayed with the same decisions.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.cluster.redis_streams import has_secret
from service.wire.net import local_source_endpoint
from stim.limits import SafetyLimits

_ENDPOINT = re.compile(r"(tcp://(\[[0-9a-fA-F:]+\]|[^\s:\[\]]+):(\d+|\*)|ipc://\S+|inproc://\S+)")


#: bounds on what one session config may make a session hold in memory
MAX_RING_BYTES = 256 << 20
MAX_CALIBRATION_BYTES = 1 << 30


def _check_endpoint(v: str) -> str:
    if not _ENDPOINT.fullmatch(v):  # fullmatch: "$" would let a trailing newline through
        raise ValueError(
            f"{v!r} is not a ZeroMQ endpoint; use tcp://HOST:PORT (PORT 0 or * = any free port) "
            "or ipc:///path"
        )
    return v


def session_dir(run_dir: Path, sid: str) -> Path:
    """A session's own 0700 directory under the run directory: its control and output
    sockets (the manager creates it; the runner binds its ``"ipc"`` output there)."""
    d = run_dir / sid
    d.mkdir(mode=0o700, exist_ok=True)
    d.chmod(0o700)
    return d


def output_endpoint(endpoint: str, run_dir: Path, sid: str) -> str:
    """Where a session binds its output: ``"ipc"`` (the default) becomes a socket in its
    own directory; any other (checked) endpoint is used as given. Only the runner resolves
    it, so the config it records keeps ``"ipc"`` and a replay of it binds its own socket."""
    if endpoint == "ipc":
        return f"ipc://{session_dir(run_dir, sid) / 'output.sock'}"
    return endpoint


class SourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint: str = Field(default_factory=local_source_endpoint,
                          description="Where the source publishes (default: the local "
                                      "source socket of `spikeloop sim`/`replay`, "
                                      "ipc://…/source.sock; tcp://HOST:PORT for another host)")
    channels: int = Field(96, ge=1, le=65536, description="Number of units/channels")
    spikes_topic: str = "spikes"
    behavior_topic: str = Field("behavior", description="Ground truth / calibration targets")
    stream: str | None = Field(None, description="Accept only frames of this stream id")
    reorder_tolerance_ms: float = Field(0.0, ge=0, le=1000,
                                        description="Late events within this window are binned")
    timestamp_tolerance_ms: float = Field(50.0, ge=0, le=60_000,
                                          description="A frame older than this is rejected")
    redis_stream: str | None = Field(
        None, pattern=r"^[\w.\-]+$", max_length=100,
        description="Read the spike frames from this Redis stream (on the session's redis.url) "
                    "instead of the ZeroMQ endpoint: a source on another host, through Redis")

    _endpoint = field_validator("endpoint")(_check_endpoint)


class DecoderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str = Field("kalman", description="Decoder kind to calibrate (kalman, wiener, snn, ...)")
    model: str | None = Field(None, description="Name of a stored model: skips calibration")
    params: dict[str, Any] = Field(default_factory=dict, description="Decoder constructor args")
    calibration_s: float = Field(30.0, gt=0, le=3600,
                                 description="Source-clock seconds collected before fitting")
    outputs: list[str] | None = Field(None, description="Behaviour names to decode (default all)")
    adapt: bool = Field(False, description="Recalibrate online from the behaviour topic")


class StimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    modality: Literal["dbs", "opto"] = "dbs"
    policy: dict[str, Any] = Field(default_factory=lambda: {"type": "speed_to_dbs"},
                                   description='{"type": name, **params}')
    limits: SafetyLimits = Field(default_factory=SafetyLimits)


class OutputConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint: str = Field("ipc",
                          description="PUB socket for decoded/stim/heartbeat: \"ipc\" (the "
                                      "default) for a socket the server places in the "
                                      "session's own directory, or tcp://127.0.0.1:PORT "
                                      "(0 = any free port)")
    high_water_mark: int = Field(10_000, ge=1, le=100_000)
    heartbeat_ms: float = Field(100.0, gt=0, le=10_000)

    @field_validator("endpoint")
    @classmethod
    def _output_endpoint(cls, v: str) -> str:
        return v if v == "ipc" else _check_endpoint(v)


class SecurityConfig(BaseModel):
    """CurveZMQ on the session's links (see docs/reliability.md, security model)."""

    model_config = ConfigDict(extra="forbid")

    source_public_key: str | None = Field(
        None, min_length=40, max_length=40,
        description="z85 public key of the source: encrypt and authenticate the ingest link")
    output_curve: bool = Field(False, description="Encrypt the output (stim/decoded) socket")
    output_allowed_clients: str | None = Field(
        None, description="Directory of public keys allowed on the output (None: any client "
                          "that knows the service key)")


class RedisConfig(BaseModel):
    """Scale-out, opt-in: the Redis server holding this session's streams."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(..., pattern=r"^rediss?://\S+$",
                     description="redis://host:port/db, without a password: the password is "
                                 "the server's own (spikeloop serve --redis-password-file)")
    mirror_output: bool = Field(True, description="Copy decoded, stim and heartbeat frames to "
                                                  "the session's output stream")
    output_maxlen: int = Field(100_000, ge=100, le=100_000_000,
                               description="Approximate length the output stream is trimmed to")
    mirror_recording: bool = Field(True, description="Copy the recording log, record by record, "
                                                     "to the session's recording stream")

    @field_validator("url")
    @classmethod
    def _no_password(cls, url: str) -> str:
        if has_secret(url):
            raise ValueError(
                "redis.url carries a password, which would be stored with the session and "
                "copied into its recording: give the password to the server instead "
                "(spikeloop serve --redis-password-file FILE, or the worker's --redis URL) "
                "and write redis://host:port/db here")
        return url


class SubjectInfo(BaseModel):
    """The subject, as NWB (and DANDI) describe one."""

    model_config = ConfigDict(extra="forbid")

    subject_id: str = Field(..., min_length=1, max_length=200)
    species: str | None = Field(None, max_length=200, description="Latin binomial, e.g. "
                                "'Macaca mulatta', or an NCBI taxonomy URL (DANDI requires it)")
    sex: Literal["M", "F", "U", "O"] = "U"
    age: str | None = Field(None, max_length=100,
                            description="ISO 8601 duration, e.g. P90D; 'P0D/' if unknown")
    description: str | None = Field(None, max_length=2000)
    strain: str | None = Field(None, max_length=200)
    genotype: str | None = Field(None, max_length=200)


class ElectrodeSite(BaseModel):
    """One input channel's electrode (a probe map entry)."""

    model_config = ConfigDict(extra="forbid")

    location: str = Field("unknown", max_length=200, description="Brain area")
    x: float | None = None
    y: float | None = None
    z: float | None = None
    group: str = Field("array", max_length=100, pattern=r"^[\w.\-]+$")


class RecordingMetadata(BaseModel):
    """Who and what was recorded: goes into the recording and its NWB export.

    A replay of an NWB file fills it from the original file (``origin`` names it).
    """

    model_config = ConfigDict(extra="forbid")

    session_description: str | None = Field(None, max_length=2000)
    experimenter: list[str] = Field(default_factory=list, max_length=50,
                                    description="'Last, First' names")
    institution: str | None = Field(None, max_length=200)
    lab: str | None = Field(None, max_length=200)
    subject: SubjectInfo | None = None
    device: str = Field("neural recording system", max_length=200,
                        description="The acquisition device the channels come from")
    location: str = Field("unknown", max_length=200,
                          description="Brain area of every channel, unless electrodes say")
    electrodes: list[ElectrodeSite] | None = Field(
        None, max_length=65536, description="Probe map: one entry per input channel")
    output_units: dict[str, str] = Field(default_factory=dict,
                                         description="Unit of each decoded output, by name")
    origin: dict[str, Any] = Field(default_factory=dict,
                                   description="The original file of a replay (identifier, "
                                               "path, session start)")


class SessionConfig(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{
                "name": "monkey-J-day3",
                "bin_ms": 20,
                "source": {"endpoint": "tcp://127.0.0.1:5555", "channels": 96},
                "decoder": {"type": "kalman", "calibration_s": 30},
                "stim": {"modality": "dbs", "policy": {"type": "speed_to_dbs"}},
            }]
        },
    )

    name: str = Field("session", min_length=1, max_length=100, pattern=r"^[\w.\- ]+$")
    bin_ms: float = Field(20.0, ge=0.1, le=1000, description="Decoding bin width (source clock)")
    source: SourceConfig = Field(default_factory=SourceConfig)
    decoder: DecoderConfig = Field(default_factory=DecoderConfig)
    stim: StimConfig = Field(default_factory=StimConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    record: bool = Field(True, description="Write a recording of the session")
    gc_freeze: bool = Field(True, description="Freeze the GC after start-up (latency)")
    realtime: bool = Field(
        True, description="Apply the best real-time layout the host permits (SCHED_FIFO, "
                          "cpu_dma_latency 0, a CPU of its own when there are spare ones); "
                          "what is refused is shown in the status with how to grant it. "
                          "false: an ordinary process (explicit settings below still apply)")
    cpu: int | None = Field(None, ge=0, description="Pin the session process to this CPU "
                                                    "(none: the server picks one when "
                                                    "realtime is on and there are spare cores)")
    spin: bool = Field(False, description="Busy-poll the input instead of blocking: lowest "
                                          "latency, costs a whole core")
    rt_priority: int | None = Field(
        None, ge=1, le=99,
        description="Run the session process (and libzmq's I/O thread) under SCHED_FIFO at "
                    "this priority (none: 50 when realtime is on); needs root or "
                    "CAP_SYS_NICE, else the session says so")
    cpu_dma_latency_us: int | None = Field(
        None, ge=0, le=10_000,
        description="While the session runs, ask the kernel (/dev/cpu_dma_latency) to keep "
                    "idle CPUs in idle states that wake within this many µs; 0 = poll "
                    "(none: 0 when realtime is on). Cuts wake-up latency on every hop, "
                    "costs idle CPU time; needs root")
    redis: RedisConfig | None = Field(None, description="Streams in Redis (scale-out); none "
                                                        "by default")
    placement: dict[str, str] = Field(
        default_factory=dict,
        description="With workers: run only on a worker whose labels include all of these "
                    '(e.g. {"rig": "rig-2"}, the host the source is attached to)')
    metadata: RecordingMetadata = Field(default_factory=RecordingMetadata,
                                        description="Subject, experimenter, electrodes: for "
                                                    "the recording and its NWB export")
    failover: Literal["fail", "restart"] = Field(
        "fail", description="With workers: when the worker running this session is lost, mark "
                            "it failed, or restart it on another worker (stimulation disarmed "
                            "until an operator arms it again)")

    @model_validator(mode="after")
    def _bounded_memory(self) -> SessionConfig:
        """A config must not be able to take the host's memory: the binner's ring (channels x
        pending bins) and the calibration block (channels x calibration bins) are capped."""
        ch = self.source.channels
        pending = -(-self.source.reorder_tolerance_ms // self.bin_ms) + 64
        ring = ch * pending * 8
        if ring > MAX_RING_BYTES:
            raise ValueError(
                f"source.channels {ch} x {pending:.0f} pending bins (reorder_tolerance_ms "
                f"{self.source.reorder_tolerance_ms:g} / bin_ms {self.bin_ms:g} + 64) needs "
                f"{ring / 2**20:.0f} MiB of binner ring, over {MAX_RING_BYTES >> 20} MiB: "
                "lower the reorder tolerance or widen the bins")
        cal = ch * (self.decoder.calibration_s * 1000 / self.bin_ms) * 8
        if self.decoder.model is None and cal > MAX_CALIBRATION_BYTES:
            raise ValueError(
                f"calibrating {self.decoder.calibration_s:g} s of {ch} channels in "
                f"{self.bin_ms:g} ms bins holds {cal / 2**20:.0f} MiB, over "
                f"{MAX_CALIBRATION_BYTES >> 20} MiB: shorten decoder.calibration_s, widen "
                "the bins, or start from a stored model (decoder.model)")
        return self

    @model_validator(mode="after")
    def _no_realtime_spin(self) -> SessionConfig:
        if self.spin and self.rt_priority:
            raise ValueError("spin with rt_priority would starve the CPU it runs on: pick one")
        if self.source.redis_stream and self.redis is None:
            raise ValueError("source.redis_stream needs redis.url: the Redis server to read from")
        if self.source.redis_stream and self.security.source_public_key:
            raise ValueError("security.source_public_key secures a ZeroMQ source, but with "
                             "source.redis_stream the frames come from Redis: drop the key "
                             "and protect Redis instead (a password, rediss://)")
        return self

    @model_validator(mode="after")
    def _probe_map_fits(self) -> SessionConfig:
        sites = self.metadata.electrodes
        if sites is not None and len(sites) != self.source.channels:
            raise ValueError(f"metadata.electrodes lists {len(sites)} sites for "
                             f"{self.source.channels} channels: give one per input channel")
        return self

    @property
    def bin_ns(self) -> int:
        return int(round(self.bin_ms * 1e6))


def recorded_session_id(value: dict[str, Any]) -> str | None:
    """The session id of a recording's CONFIG record (older recordings nested it)."""
    sid = value.get("session_id") or (value.get("config") or {}).get("session_id")
    return str(sid) if sid else None


def recorded_config(value: dict[str, Any]) -> SessionConfig:
    """The session config of a recording's CONFIG record.

    The recorder writes ``{"session_id", "config", ...}``; older recordings nested the
    config one level deeper or held it bare, and carried keys since removed: all are read.
    """
    cfg = value
    while "bin_ms" not in cfg and isinstance(cfg.get("config"), dict):
        cfg = cfg["config"]
    return SessionConfig(**{k: v for k, v in cfg.items() if k in SessionConfig.model_fields})
