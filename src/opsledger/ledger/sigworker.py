"""The signature verifier process: run as a script, it verifies batches read from stdin.

``ledger.sigpool`` starts it as ``python -I .../sigworker.py`` (by path, so it imports
neither the parent's main module, as ``multiprocessing``'s spawn would, nor the
``opsledger`` package: only the standard library and PyNaCl; isolated, so no
``PYTHONPATH`` or user site can swap the ``nacl`` it trusts). It exits when its stdin
closes, which is also what happens when its parent dies, and ignores Ctrl-C, which is
its parent's to handle.

Frames, little-endian, written by hand because they are this small and fixed (pickle
would let the parent hand the worker code to run, which it never needs to):

* request: ``u32 seq, u32 count``, then per item ``u16 key_len, u16 sig_len, u32
  data_len`` and the key, signature and signed bytes (``domain || message``);
* response: ``u32 seq, u32 count`` (echoed, so the parent can prove each reply belongs
  to the request it waits on) and one byte per item, 1 if the signature verifies.
"""

from __future__ import annotations

import signal
import struct
import sys
from typing import BinaryIO

import nacl.exceptions
import nacl.signing

HEAD = struct.Struct("<II")
ITEM = struct.Struct("<HHI")


def _read_exact(stream: BinaryIO, size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


def serve(requests: BinaryIO, responses: BinaryIO) -> None:
    keys: dict[bytes, nacl.signing.VerifyKey | None] = {}
    while (head := _read_exact(requests, HEAD.size)) is not None:
        seq, count = HEAD.unpack(head)
        verdicts = bytearray(count)
        for i in range(count):
            item = _read_exact(requests, ITEM.size)
            if item is None:
                return
            key_len, sig_len, data_len = ITEM.unpack(item)
            body = _read_exact(requests, key_len + sig_len + data_len)
            if body is None:
                return
            raw, sig = body[:key_len], body[key_len : key_len + sig_len]
            data = body[key_len + sig_len :]
            if raw not in keys:
                try:
                    keys[raw] = nacl.signing.VerifyKey(raw)
                except (nacl.exceptions.ValueError, nacl.exceptions.TypeError):
                    keys[raw] = None
            key = keys[raw]
            if key is None or len(sig) != 64:
                continue
            try:
                key.verify(data, sig)
            except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
                continue
            verdicts[i] = 1
        responses.write(HEAD.pack(seq, count) + bytes(verdicts))
        responses.flush()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve(sys.stdin.buffer, sys.stdout.buffer)
