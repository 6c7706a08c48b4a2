"""Read back what an offline wandb run logged, from its ``run-<id>.wandb`` file, without a server.

The file is wandb's transaction log: a 7-byte header (":W&B", magic 0xBEE1, version), then a LevelDB-style
log of 32 KiB blocks whose records (crc32, length, type FULL/FIRST/MIDDLE/LAST) carry protobuf `Record`s.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK, HEADER = 32 * 1024, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    data = Path(path).read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:HEADER])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a wandb transaction log"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # too little room left in the block for a header: padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:
            break
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind in (FULL, FIRST):
            pending = chunk
        else:
            pending += chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def logged_history(path: Path) -> list[dict]:
    """Every ``log`` call's values, in order: [{key: value}]."""
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def metric_definitions(path: Path) -> dict[str, dict]:
    """Every ``define_metric`` by name (globs as their pattern): {name: {"step_metric", "summary": set}};
    a later definition of the same name replaces an earlier one, as in wandb."""
    definitions = {}
    for record in records(path):
        if record.WhichOneof("record_type") == "metric":
            metric = record.metric
            summary = {kind for kind in ("min", "max", "mean", "best", "last", "none", "copy", "first")
                       if getattr(metric.summary, kind, False)}
            definitions[metric.name or metric.glob_name] = {"step_metric": metric.step_metric, "summary": summary}
    return definitions


def artifacts(path: Path) -> list[dict]:
    """Every logged artifact: {"name", "type", "aliases", "metadata", "files": {path in artifact: local copy}}."""
    found = []
    for record in records(path):
        if record.WhichOneof("record_type") == "artifact":
            a = record.artifact
            found.append({"name": a.name, "type": a.type, "aliases": list(a.aliases),
                          "metadata": json.loads(a.metadata or "{}"),
                          "files": {entry.path: entry.local_path for entry in a.manifest.contents}})
    return found
