"""Keyed pseudonym steps of many values at once: ``KeyRing.step``, bit for bit, over Arrow arrays.

A pseudonym rotation (``pseudozone.rotation``) steps millions of values: every distinct event,
session and request id of a tenant, its subjects and cookies, every ``[id:]`` token of its free
text.  ``KeyRing.step`` does each in Python (HMAC-SHA256 spelled out over hashlib, keyed states
copied per value) and returns Python strings; OpenSSL's per-call cost (two state copies, two
digests) is most of its microsecond a value, and no faster keyed hash is at hand, so here:

* the values come from an Arrow string array and the results go back into one: the ``vN:`` +
  hex form is written with numpy (``pseudonyms``), or the first 64 bits are kept for a token
  (``linkage.token_array``), without a Python string per value;
* a batch of at least ``SPLIT_MIN`` values is shared with helper processes (``Stepper``): the
  caller hashes its part while the helpers hash theirs.  A helper is this file run by the same
  interpreter, fed over a pipe (key, value offsets and bytes in; 32-byte digests out); it exits
  when its pipe closes or its parent dies (``PR_SET_PDEATHSIG``, and a check of its parent's
  pid), and ``Stepper.close`` kills it by PID.  The key goes over the pipe, never in argv or
  the environment.

``tests/unit/test_fasthmac.py`` checks every path against ``KeyRing.step`` and ``hmac``.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import struct
import subprocess
import sys
from collections.abc import Sequence
from typing import IO, Any

_BLOCK = 64  # SHA-256's block: the HMAC key is padded to it
_DIGEST = 32
SPLIT_MIN = 20_000  # smaller batches are hashed by the caller alone (a helper's round trip costs more)
_HEADER = struct.Struct("<IQQ")  # key length, value count, bytes of the values
_SERVE = "--serve-hmac"


def keyed_states(key: bytes) -> tuple[Any, Any]:
    """HMAC-SHA256's keyed inner and outer SHA-256 states of ``key`` (RFC 2104), to be copied."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    padded = key.ljust(_BLOCK, b"\0")
    return (hashlib.sha256(bytes(b ^ 0x36 for b in padded)),
            hashlib.sha256(bytes(b ^ 0x5C for b in padded)))


def digests(key: bytes, values: Sequence[bytes]) -> bytes:
    """HMAC-SHA256 of each value under ``key``, the 32-byte digests one after another."""
    inner0, outer0 = keyed_states(key)
    inner_copy, outer_copy = inner0.copy, outer0.copy
    out: list[bytes] = []
    append = out.append
    for value in values:
        inner = inner_copy()
        inner.update(value)
        outer = outer_copy()
        outer.update(inner.digest())
        append(outer.digest())
    return b"".join(out)


# -- the helper process -------------------------------------------------------------------------


def _read_exact(stream: IO[bytes], n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when its parent dies (Linux); exit if it already has."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # elsewhere: the closed pipe ends the helper after its current batch
    if os.getppid() != parent:
        os._exit(0)


def _serve(parent: int) -> None:
    """A helper's loop: a batch in (header, key, value offsets as int64, value bytes), its
    digests out; ends at the end of its input."""
    _die_with_parent(parent)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = _read_exact(stdin, _HEADER.size)
        if head is None:
            return
        key_len, n, nbytes = _HEADER.unpack(head)
        body = _read_exact(stdin, key_len + 8 * (n + 1) + nbytes)
        if body is None:
            return
        key = body[:key_len]
        offsets = struct.unpack_from(f"<{n + 1}q", body, key_len)
        start = key_len + 8 * (n + 1) - offsets[0]  # where offset 0 would be in the body
        values = [body[a + start:b + start] for a, b in itertools.pairwise(offsets)]
        stdout.write(digests(key, values))
        stdout.flush()


class Stepper:
    """HMAC-SHA256 of many values, large batches shared with ``helpers`` processes (0: none); with
    ``local=False`` (and helpers) every batch goes to the helpers, the caller only waits (a
    thread of its own, while the caller's other threads work).  One thread at a time uses a
    stepper."""

    def __init__(self, helpers: int = 0, *, local: bool = True) -> None:
        self.helpers = max(0, helpers)
        self.local = local or self.helpers == 0
        self._procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Stepper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _started(self) -> list[subprocess.Popen[bytes]]:
        while len(self._procs) < self.helpers:
            # -I: no environment variables, user site or script directory on the path
            self._procs.append(subprocess.Popen(  # noqa: S603 - this interpreter and this file
                [sys.executable, "-I", os.path.abspath(__file__), _SERVE, str(os.getpid())],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True))
        return self._procs

    def close(self) -> None:
        procs, self._procs = self._procs, []
        for proc in procs:
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def digests(self, key: bytes, values: Any) -> bytes:
        """The digests of the values of an Arrow string or binary array without nulls, in order."""
        import numpy as np
        import pyarrow as pa

        n = len(values)
        if n == 0:
            return b""
        if values.null_count:
            raise ValueError("a null cannot be stepped")
        # values [cuts[0], cuts[1]) are hashed here, [cuts[k], cuts[k + 1]) by helper k
        if not self.local:
            cuts = [0] + [round(k * n / self.helpers) for k in range(self.helpers + 1)]
        else:
            parts = 1 + (self.helpers if n >= SPLIT_MIN else 0)
            cuts = [round(k * n / parts) for k in range(parts + 1)]
        sent = []
        try:
            if len(cuts) > 2:
                offsets, data = string_buffers(values)
                for k, proc in enumerate(self._started()[:len(cuts) - 2], start=1):
                    part = offsets[cuts[k]:cuts[k + 1] + 1]
                    blob = bytes(memoryview(data)[int(part[0]):int(part[-1])])
                    assert proc.stdin is not None
                    proc.stdin.write(_HEADER.pack(len(key), len(part) - 1, len(blob)) + key
                                     + part.astype(np.int64).tobytes() + blob)
                    proc.stdin.flush()
                    sent.append((proc, len(part) - 1))
            mine = values.slice(0, cuts[1])
            binary = pa.large_binary() if pa.types.is_large_string(values.type) else pa.binary()
            out = [digests(key, mine.cast(binary).to_pylist())]
            for proc, count in sent:
                assert proc.stdout is not None
                got = _read_exact(proc.stdout, count * _DIGEST)
                if got is None:
                    raise OSError(f"hash helper {proc.pid} ended (exit code {proc.poll()})")
                out.append(got)
        except BaseException:
            self.close()  # a helper in the middle of a batch is of no further use
            raise
        return b"".join(out)


# -- over Arrow arrays ------------------------------------------------------------------------------


def string_buffers(values: Any) -> tuple[Any, Any]:
    """(offsets as int64, data) of an Arrow string or binary array."""
    import numpy as np
    import pyarrow as pa

    wide = pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type)
    n = len(values)
    offsets = np.frombuffer(values.buffers()[1], np.int64 if wide else np.int32)
    data = values.buffers()[2]
    return (offsets[values.offset:values.offset + n + 1].astype(np.int64),
            memoryview(data) if data is not None else memoryview(b""))


def step_digests(stepper: Stepper, key: bytes, values: Any) -> Any:
    """(n, 32) uint8 numpy array: HMAC-SHA256 under ``key`` of each value of an Arrow string array."""
    import numpy as np

    return np.frombuffer(stepper.digests(key, values), np.uint8).reshape(len(values), _DIGEST)


_HEX_PAIRS = b"".join(f"{i:02x}".encode() for i in range(256))


def pseudonyms(prefix: str, raw: Any) -> Any:
    """An Arrow string array of ``prefix`` + the lower-case hex of each row of ``raw`` ((n, 32) uint8)."""
    import numpy as np
    import pyarrow as pa

    n = len(raw)
    head = prefix.encode()
    width = len(head) + 2 * _DIGEST
    out = np.empty((n, width), np.uint8)
    out[:, :len(head)] = np.frombuffer(head, np.uint8)
    pairs = np.frombuffer(_HEX_PAIRS, np.uint16)  # byte value -> its two hex digits
    out[:, len(head):] = pairs[raw].view(np.uint8).reshape(n, 2 * _DIGEST)
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int64)
    if offsets[-1] < 2**31:
        return pa.StringArray.from_buffers(n, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(out))
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(out)).cast(pa.string())


def default_helpers() -> int:
    """One helper per further core this process may run on, at most three."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(0, min(cores, 4) - 1)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == _SERVE:
    _serve(int(sys.argv[2]))
