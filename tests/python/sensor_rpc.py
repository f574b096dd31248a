"""The real vgi-rpc Python client against examples/sensor-rpc (a user's own
crate, served by `deploy-kit up local`): struct parameters and results, a list,
nullable fields, a producer, an exchange, and an `export` large enough to come
back as a pointer into the embedded store. The Protocol class below is the
Python side of the Rust trait `Sensors`; a schema mismatch fails the call.

Usage: python sensor_rpc.py URL
Exits nonzero on any mismatch.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import ClassVar, Protocol

import pyarrow as pa

from vgi_rpc.external import ClientExternalConfig, FetchConfig
from vgi_rpc.http import http_connect
from vgi_rpc.rpc import AnnotatedBatch, ExchangeState, ProducerState, Stream
from vgi_rpc.utils import ArrowSerializableDataclass


@dataclass(frozen=True)
class Reading(ArrowSerializableDataclass):
    sensor: str
    celsius: float
    note: str | None


@dataclass(frozen=True)
class Summary(ArrowSerializableDataclass):
    count: int
    mean: float | None
    min: float | None
    max: float | None


class Sensors(Protocol):
    protocol_name: ClassVar[str] = "sensor.Sensors.v1"
    protocol_version: ClassVar[str] = "1.0.0"

    def summarize(self, values: list[float]) -> Summary: ...
    def calibrate(self, reading: Reading, offset: float) -> Reading: ...
    def history(self, sensor: str, count: int, batch_rows: int) -> Stream[ProducerState]: ...
    def fahrenheit(self) -> Stream[ExchangeState]: ...
    def export(self, sensor: str, bytes: int) -> bytes: ...


def export_byte(sensor: str, index: int) -> int:
    seed = sum(sensor.encode()) % 256
    return ((index % 256) * 31 + seed) % 256


def loopback_only(candidate: str) -> None:
    if not candidate.startswith("http://127.0.0.1"):
        raise ValueError(f"refusing non-loopback URL {candidate}")


url = sys.argv[1]
failures: list[str] = []


def check(what: str, got: object, expected: object) -> None:
    print(f"{what}: {got!r}")
    if got != expected:
        failures.append(f"{what}: got {got!r}, expected {expected!r}")


config = ClientExternalConfig(url_validator=loopback_only, fetch_config=FetchConfig(max_fetch_bytes=64 << 20))
with http_connect(Sensors, url, external_location=config) as proxy:
    check("summarize([1, 2, 6])", proxy.summarize(values=[1.0, 2.0, 6.0]), Summary(count=3, mean=3.0, min=1.0, max=6.0))
    check("summarize([])", proxy.summarize(values=[]), Summary(count=0, mean=None, min=None, max=None))
    calibrated = proxy.calibrate(reading=Reading(sensor="t1", celsius=20.0, note=None), offset=-0.5)
    check("calibrate", calibrated, Reading(sensor="t1", celsius=19.5, note="calibrated by -0.5"))

    rows = []
    for batch in proxy.history(sensor="t1", count=25, batch_rows=10):
        rows.extend(batch.batch.to_pylist())
    check("history rows", len(rows), 25)
    check("history[24].celsius", rows[24]["celsius"], 20.0 + (24 % 10) * 0.5)
    check("history[3].note", rows[3]["note"], "sample 3")

    schema = pa.schema([("sensor", pa.utf8(), False), ("celsius", pa.float64(), False), ("note", pa.utf8())])
    with proxy.fahrenheit() as session:
        out = session.exchange(AnnotatedBatch(pa.record_batch([["t1", "t1"], [0.0, 100.0], [None, None]], schema=schema)))
        check("fahrenheit", out.batch.column("celsius").to_pylist(), [32.0, 212.0])

    size = 3 << 20
    data = proxy.export(sensor="t1", bytes=size)
    check("export length (through a pointer)", len(data), size)
    wrong = next((i for i, b in enumerate(data) if b != export_byte("t1", i)), None)
    check("export first wrong byte", wrong, None)

if failures:
    sys.exit("sensor-rpc with the Python client failed: " + "; ".join(failures))
print("sensor-rpc: every call through the Python client matched")
