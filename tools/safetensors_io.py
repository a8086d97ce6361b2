#!/usr/bin/python3
"""safetensors_io.py: minimal reader/writer of the .safetensors format, without the
`safetensors` package (not installed on Debian; the engine's checkpoints and fixtures use it).

Layout: u64 little-endian header length N, N bytes of JSON
    {"__metadata__": {"key": "string", ...},
     "name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...}
then the raw little-endian tensor bytes; offsets are relative to the end of the header.
Supported dtypes: F32, I32, I64, U8 (those the engine uses). Writers pad the header with
spaces to a multiple of 8 bytes, as the reference implementation does, so the data is aligned.

API (numpy arrays; tensors keep insertion order):
    write(path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None)
    read(path) -> (dict[str, np.ndarray], dict[str, str])
"""
import json
import os
import struct
import sys

import numpy as np

DTYPES = {"F32": np.dtype("<f4"), "I32": np.dtype("<i4"), "I64": np.dtype("<i8"), "U8": np.dtype("u1")}
_NAMES = {(v.kind, v.itemsize): k for k, v in DTYPES.items()}


def _dtype_name(arr):
    name = _NAMES.get((arr.dtype.kind, arr.dtype.itemsize))  # any byte order: written as LE
    if name is None:
        raise TypeError("safetensors_io: unsupported dtype %s (F32, I32, I64, U8 only)" % arr.dtype)
    return name


def write(path, tensors, metadata=None):
    """Writes atomically (PATH.tmp, fsync, rename), like the engine."""
    header = {}
    if metadata:
        for k, v in metadata.items():
            if not isinstance(v, str):
                raise TypeError("safetensors_io: metadata value of '%s' must be a string" % k)
        header["__metadata__"] = dict(metadata)
    blobs, offset = [], 0
    for name, arr in tensors.items():
        if name == "__metadata__":
            raise ValueError("safetensors_io: '__metadata__' is not a tensor name")
        arr = np.asarray(arr)
        dt = _dtype_name(arr)
        data = np.ascontiguousarray(arr, dtype=DTYPES[dt]).tobytes()
        header[name] = {"dtype": dt, "shape": [int(s) for s in arr.shape],
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((-len(text)) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read(path):
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError("%s: truncated (no header length)" % path)
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        raise ValueError("%s: header length %d exceeds the file" % (path, n))
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = memoryview(raw)[8 + n:]
    metadata = header.pop("__metadata__", None) or {}
    tensors, spans = {}, []
    for name, info in header.items():
        dt = DTYPES.get(info["dtype"])
        if dt is None:
            raise ValueError("%s: tensor %s has unsupported dtype %s" % (path, name, info["dtype"]))
        begin, end = info["data_offsets"]
        count = int(np.prod(info["shape"])) if info["shape"] else 1
        if not (0 <= begin <= end <= len(data)) or end - begin != count * dt.itemsize:
            raise ValueError("%s: tensor %s has bad offsets %s for shape %s" % (path, name, info["data_offsets"], info["shape"]))
        spans.append((begin, end, name))
        tensors[name] = np.frombuffer(data[begin:end], dtype=dt).reshape(info["shape"]).copy()
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ValueError("%s: tensors %s and %s overlap" % (path, n0, n1))
    return tensors, metadata


def selftest():
    import tempfile
    rng = np.random.default_rng(0)
    tensors = {"a.weight": rng.standard_normal((3, 2, 3, 3)).astype(np.float32),
               "labels": np.array([1, 2, 3], dtype=np.int32),
               "step": np.array([123456789012], dtype=np.int64),
               "img": rng.integers(0, 255, (2, 5, 5, 3)).astype(np.uint8),
               "scalar_like": np.array([1.5], dtype=np.float32)}
    meta = {"config": "model:\n  ngf: 8\n", "step": "17"}
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "t.safetensors")
        write(p, tensors, meta)
        got, gm = read(p)
        with open(p, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
        ok = (list(got) == list(tensors) and gm == meta and n % 8 == 0 and
              all(np.array_equal(got[k], tensors[k]) and got[k].dtype == tensors[k].dtype for k in tensors))
    print("safetensors_io selftest:", "ok" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--selftest":
        sys.exit(selftest())
    if len(sys.argv) > 1:
        t, m = read(sys.argv[1])
        for k, v in m.items():
            print("meta %s = %r" % (k, v if len(v) < 80 else v[:77] + "..."))
        for k, v in t.items():
            print("%s %s %s" % (k, v.dtype, list(v.shape)))
        sys.exit(0)
    print("usage: safetensors_io.py --selftest | FILE.safetensors (lists it)")
