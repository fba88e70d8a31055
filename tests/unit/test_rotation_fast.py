"""A rotation's fast paths give exactly what their definitions give.

* ``fasthmac`` (HMAC-SHA256 over Arrow arrays, large batches shared with helper processes) gives
  ``KeyRing.step``'s pseudonyms bit for bit, and ``hmac``'s digests; its helpers end with their
  parent, also when it is killed;
* ``linkage.map_tokens`` (the ``[id:…]`` tokens of free text found and replaced over the bytes of
  all rows) gives what ``TOKEN_RE.sub`` gives row by row, on messy text: Faker in several locales,
  tokens next to punctuation, full-width brackets, look-alikes, tokens cut by a row's end, nulls,
  empty strings, sliced, large, dictionary and chunked arrays;
* ``rotation.Mapper`` steps columns, tokens and sealed values as ``KeyRing.step`` does.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import signal
import string
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from faker import Faker

from pseudozone import fasthmac, ingest, linkage
from pseudozone.keys import SEALED_PREFIX, KeyRing
from pseudozone.rotation import SUBJECT_PURPOSE, Mapper, RotationError

KR = KeyRing(bytes(range(32)), pseudonym_version=1)
T = "acme"
LOCALES = ["en_US", "de_DE", "fr_FR", "ja_JP", "ru_RU", "ar_AA", "hi_IN", "he_IL", "zh_CN", "pt_BR"]
INCLUDE = Path(fasthmac.__file__).resolve().parent.parent


def _v1(purpose: str, n: int, tag: str = "x") -> list[str]:
    return KR.pseudonymize(T, purpose, [f"{tag}{i}" for i in range(n)], version=1)


# -- fasthmac ------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [b"", b"k", bytes(range(32)), bytes(64), os.urandom(65), os.urandom(200)])
def test_digests_are_hmac_sha256(key: bytes) -> None:
    values = [b"", b"a", "é€😀".encode(), os.urandom(63), os.urandom(64), os.urandom(65), os.urandom(1000)]
    raw = fasthmac.digests(key, values)
    assert [raw[i * 32:(i + 1) * 32] for i in range(len(values))] == \
        [hmac.digest(key, v, hashlib.sha256) for v in values]


@pytest.mark.parametrize("helpers", [0, 1, 2])
def test_stepper_gives_keyring_step(helpers: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fasthmac, "SPLIT_MIN", 10)  # the helpers take part in small batches too
    values = [*_v1("event_id", 257), "[id:bcdfghjklmnpqrs]", "", "ünïcødé"]
    key = KR.pseudonym_key(T, "event_id", 2)
    with fasthmac.Stepper(helpers) as stepper:
        for arr in (pa.array(values, pa.string()), pa.array(values, pa.large_string()),
                    pa.array(["pad"] * 5 + values, pa.string()).slice(5)):
            for _ in range(2):  # helpers are reused from one batch to the next
                out = fasthmac.pseudonyms("v2:", fasthmac.step_digests(stepper, key, arr))
                assert out.type == pa.string()
                assert out.to_pylist() == KR.step(T, "event_id", 2, values)
        assert len(stepper._procs) == helpers
        procs = list(stepper._procs)
    assert all(p.poll() is not None for p in procs)  # closed with the stepper
    assert fasthmac.step_digests(fasthmac.Stepper(), key, pa.array([], pa.string())).shape == (0, 32)


def test_stepper_refuses_nulls() -> None:
    with pytest.raises(ValueError, match="null"):
        fasthmac.Stepper().digests(b"k", pa.array(["a", None]))


def test_helper_dies_with_its_killed_parent(tmp_path: Path) -> None:
    """A parent killed with SIGKILL (no cleanup runs) takes its hash helpers with it."""
    pid_file = tmp_path / "helpers"
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(INCLUDE)!r})
        import pyarrow as pa
        from pseudozone import fasthmac
        fasthmac.SPLIT_MIN = 1
        stepper = fasthmac.Stepper(2)
        stepper.digests(b"k", pa.array(["a", "b", "c", "d"]))
        open({str(pid_file)!r}, "w").write(" ".join(str(p.pid) for p in stepper._procs))
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        helpers = [int(p) for p in pid_file.read_text().split()]
        assert len(helpers) == 2
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in helpers):
        time.sleep(0.05)
    assert not any(_alive(p) for p in helpers)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie (not yet reaped by init) has ended


def test_digest_tokens_are_token_of() -> None:
    raw = np.frombuffer(os.urandom(32 * 300), np.uint8).reshape(300, 32).copy()
    raw[0] = 0
    raw[1] = 255
    assert linkage.digest_tokens(raw).to_pylist() == [linkage.token_of(bytes(r).hex()) for r in raw]
    assert linkage.digest_tokens(raw[:0]).to_pylist() == []


def test_tokens_public_name_is_the_old_one() -> None:
    ids = ["83920117", "deadbeefdeadbeef"]
    step = KR.pseudonymize(T, linkage.TEXT_PURPOSE, ids)
    assert linkage.tokens(lambda v: KR.pseudonymize(T, linkage.TEXT_PURPOSE, v), ids).to_pylist() == \
        [linkage.token_of(p.rpartition(":")[2]) for p in step]
    assert linkage._tokens is linkage.tokens


# -- map_tokens ------------------------------------------------------------------------------------


def _token(rng: random.Random) -> str:
    return "[id:" + "".join(rng.choice(linkage._ALPHABET) for _ in range(15)) + "]"


def _image(distinct: pa.Array) -> pa.Array:
    """A test mapping: each token to another (keyed digest of it, as a token)."""
    raw = np.frombuffer(b"".join(hashlib.sha256(t.encode()).digest() for t in distinct.to_pylist()),
                        np.uint8).reshape(len(distinct), 32)
    return linkage.digest_tokens(raw)


def _reference(values: list[str | None]) -> list[str | None]:
    """``TOKEN_RE.sub`` row by row (what a rotation did before the byte-level path)."""
    found = sorted({t for v in values if v for t in linkage.TOKEN_RE.findall(v)})
    table = dict(zip(found, _image(pa.array(found, pa.string())).to_pylist(), strict=True))
    return [None if v is None else linkage.TOKEN_RE.sub(lambda m: table[m.group(0)], v) for v in values]


def _messy(seed: int, n: int) -> list[str | None]:
    rng = random.Random(seed)
    fakers = [Faker(loc) for loc in LOCALES]
    for k, f in enumerate(fakers):
        f.seed_instance(seed * 100 + k)
    pool = [_token(rng) for _ in range(40)]
    pieces = [
        lambda: rng.choice(pool),
        lambda: rng.choice(pool).upper(),  # not a token: upper case
        lambda: rng.choice(pool)[:-1],  # cut short
        lambda: rng.choice(pool)[:-2] + "]",  # 14 letters
        lambda: rng.choice(pool)[:-1] + "b]",  # 16 letters
        lambda: "［id:" + rng.choice(pool)[4:-1] + "］",  # full-width brackets
        lambda: rng.choice(pool).replace("[id:", "[ID:"),
        lambda: rng.choice(pool).replace("[id:", "[id;"),
        lambda: "[id:" + rng.choice(pool),  # nested start
        lambda: rng.choice(pool) + rng.choice(pool),  # adjacent
        lambda: rng.choice(pool)[:10] + "é" + rng.choice(pool)[11:],  # a non-ASCII letter inside
        lambda: rng.choice(pool)[:10] + "Ａ" + rng.choice(pool)[11:],
        lambda: rng.choice(string.punctuation) + rng.choice(pool) + rng.choice(string.punctuation),
        lambda: f'{{"order": "{rng.choice(pool)}", "n": 3}}',
        lambda: f"https://shop.example.com/o/{rng.choice(pool)}?x={rng.choice(pool)}#{rng.choice(pool)}",
        lambda: rng.choice(fakers).sentence(),
        lambda: rng.choice(fakers).name(),
        lambda: rng.choice(fakers).address(),
        lambda: "".join(rng.choice("[]id:bcdfgxyz") for _ in range(rng.randint(1, 30))),
        lambda: rng.choice(["", " ", "\n", "\t", "\x00", "😀", "[", "]", "[id:", "]]"]),
    ]
    out: list[str | None] = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.05:
            out.append(None)
        elif roll < 0.1:
            out.append("")
        else:
            out.append("".join(rng.choice(pieces)() for _ in range(rng.randint(1, 8))))
    # a token that only a row's end and the next row's start make: never one
    out += [pool[0][:8], pool[0][8:], pool[1][:19], "]" + pool[2]]
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_map_tokens_is_the_regex(seed: int) -> None:
    values = _messy(seed, 3000)
    expected = _reference(values)
    assert sum(v != e for v, e in zip(values, expected, strict=True)) > 500  # tokens were replaced
    for typ in (pa.string(), pa.large_string()):
        arr = pa.array(values, typ)
        out = linkage.map_tokens(arr, _image)
        assert out.type == typ
        assert out.to_pylist() == expected
        assert out.null_count == arr.null_count
        sliced = arr.slice(7, 1000)
        assert linkage.map_tokens(sliced, _image).to_pylist() == expected[7:1007]
    dictionary = pa.array(values, pa.string()).dictionary_encode()
    assert linkage.map_tokens(dictionary, _image).to_pylist() == expected
    chunked = pa.chunked_array([pa.array(values[:100], pa.string()), pa.array(values[100:], pa.string())])
    assert linkage.map_tokens(chunked, _image).to_pylist() == expected


def test_map_tokens_edges() -> None:
    token = "[id:bcdfghjklmnpqrs]"
    cases: list[list[str | None]] = [[], [None, None], ["", ""], ["short"], [token[:-1]], [None, token],
                                     [token, None]]
    for values in cases:
        arr = pa.array(values, pa.string())
        assert linkage.map_tokens(arr, _image).to_pylist() == _reference(values)
    # a null row's bytes are never read for tokens (Arrow lets a null slot hold bytes)
    hidden = pa.Array.from_buffers(pa.string(), 2, [pa.array([False, True]).buffers()[1],
                                                    pa.py_buffer(np.array([0, 20, 20], np.int32)),
                                                    pa.py_buffer(b"[id:bcdfghjklmnpqrs]")], null_count=1)
    seen: list[list[str]] = []
    linkage.map_tokens(hidden, lambda d: seen.append(d.to_pylist()) or _image(d))  # type: ignore[func-returns-value]
    assert seen == []
    with pytest.raises(ValueError, match="one 20-byte token"):
        linkage.map_tokens(pa.array(["a [id:bcdfghjklmnpqrs] b"]), lambda d: pa.array(["x"] * len(d)))
    with pytest.raises(TypeError):
        linkage.map_tokens(pa.array([b"[id:bcdfghjklmnpqrs]"]), _image)


# -- the mapper --------------------------------------------------------------------------------------


def _mapper(stepper: fasthmac.Stepper | None = None) -> Mapper:
    return Mapper(KR, T, 1, 2, stepper or fasthmac.Stepper(), remember=frozenset({SUBJECT_PURPOSE}))


def test_mapper_column_steps_v1_and_keeps_v2() -> None:
    v1 = _v1("session_id", 50)
    v2 = KR.step(T, "session_id", 2, _v1("session_id", 5, "y"))
    rows = [*v1, *v1[:10], None, *v2]
    out = _mapper().column("session_id", pa.chunked_array([pa.array(rows, pa.string())]))
    stepped = dict(zip(v1, KR.step(T, "session_id", 2, v1), strict=True))
    assert out.to_pylist() == [None if v is None else stepped.get(v, v) for v in rows]
    assert _mapper().column("session_id", pa.array(rows).dictionary_encode()).to_pylist() == out.to_pylist()


def test_mapper_remembers_subjects_across_calls() -> None:
    mapper = _mapper()
    subjects = _v1(SUBJECT_PURPOSE, 30)
    first = mapper.values(SUBJECT_PURPOSE, subjects[:20])
    second = mapper.values(SUBJECT_PURPOSE, subjects[10:])
    expected = KR.step(T, SUBJECT_PURPOSE, 2, subjects)
    assert first == expected[:20] and second == expected[10:]
    remembered = mapper._known[SUBJECT_PURPOSE]
    assert remembered.old is not None and len(remembered.old) == 30
    assert list(remembered.keys) == sorted(remembered.keys)
    # of other widths: stepped, not remembered
    odd = ["v1:" + "ab" * 5, "v1:" + "cd" * 40]
    assert mapper.values(SUBJECT_PURPOSE, odd) == KR.step(T, SUBJECT_PURPOSE, 2, odd)
    assert len(remembered.old) == 30
    # values whose keys collide (same last 16 bytes) are still told apart
    same_tail = ["v1:" + "0" * 48 + "f" * 16, "v1:" + "1" * 48 + "f" * 16, "v1:" + "2" * 48 + "f" * 16]
    for _ in range(2):
        assert mapper.values(SUBJECT_PURPOSE, same_tail) == KR.step(T, SUBJECT_PURPOSE, 2, same_tail)
        assert mapper.values(SUBJECT_PURPOSE, same_tail[1:]) == KR.step(T, SUBJECT_PURPOSE, 2, same_tail[1:])


def test_mapper_sealed_and_stray() -> None:
    mapper = _mapper()
    subjects = _v1(SUBJECT_PURPOSE, 3)
    sealed = KR.seal(T, subjects[0])
    out = mapper.values(SUBJECT_PURPOSE, [sealed, subjects[1], subjects[2]])
    stepped = KR.step(T, SUBJECT_PURPOSE, 2, subjects)
    assert out[0].startswith(SEALED_PREFIX) and KR.unseal(T, out[0]) == stepped[0]
    assert out[1:] == stepped[1:]
    with pytest.raises(RotationError, match="neither version 1 nor 2"):
        mapper.values("session_id", [*_v1("session_id", 2), "v3:" + "0" * 64])
    with pytest.raises(RotationError):
        mapper.values("session_id", ["raw-id"])


def test_mapper_text_is_step_then_token_of() -> None:
    ids = ["83920117", "1700000000000", "deadbeefdeadbeef"]
    v2_ring = KeyRing(bytes(range(32)), pseudonym_version=2)
    v1_tokens = linkage.tokens(lambda v: ingest.text_pseudonyms(KR, T, v), ids).to_pylist()
    v2_tokens = linkage.tokens(lambda v: ingest.text_pseudonyms(v2_ring, T, v), ids).to_pylist()
    assert v1_tokens != v2_tokens
    texts = [f'{{"order": "{v1_tokens[0]}"}}', f"/o/{v1_tokens[1]}?t={v1_tokens[2]}", None, "none here"]
    out = _mapper().text(pa.array(texts, pa.string())).to_pylist()
    assert out == [f'{{"order": "{v2_tokens[0]}"}}', f"/o/{v2_tokens[1]}?t={v2_tokens[2]}", None, "none here"]


def test_stepper_helpers_only(monkeypatch: pytest.MonkeyPatch) -> None:
    values = _v1("event_id", 40)
    key = KR.pseudonym_key(T, "event_id", 2)
    with fasthmac.Stepper(2, local=False) as stepper:
        out = fasthmac.pseudonyms("v2:", fasthmac.step_digests(stepper, key, pa.array(values)))
        assert len(stepper._procs) == 2  # below SPLIT_MIN too: the caller hashes nothing
    assert out.to_pylist() == KR.step(T, "event_id", 2, values)
    assert fasthmac.Stepper(0, local=False).local  # no helper: the caller hashes


def test_prefetched_steps_are_the_mapper_steps(tmp_path: Path) -> None:
    """``_prefetch`` over a partition's files gives what the mapper computes itself; a value it
    did not see (a file that changed since) is stepped by the mapper."""
    from pseudozone import contracts
    from pseudozone.rotation import _prefetch, _purposes, _text_columns

    contract = contracts.load("events")
    purposes, texts = _purposes(contract), _text_columns(contract)
    rng = random.Random(5)
    tokens = [_token(rng) for _ in range(30)]

    def table(tag: str, n: int) -> pa.Table:
        cols: dict[str, pa.Array] = {}
        for name, purpose in purposes.items():
            raw = [f"{tag}{i % 17}" for i in range(n)]
            cols[name] = pa.array(KR.pseudonymize(T, purpose, raw, version=1))
        for name in texts:
            cols[name] = pa.array([f'{{"o": "{tokens[i % 30]}"}} {tokens[(i * 7) % 30]}' if i % 5 else None
                                   for i in range(n)], pa.string())
        return pa.table(cols)

    files = []
    for k, tag in enumerate(("a", "b")):
        files.append(tmp_path / f"{k}.parquet")
        pq_write(table(tag, 60), files[-1])
    keys = {p: KR.pseudonym_key(T, p, 2) for p in {*purposes.values(), linkage.TEXT_PURPOSE}}
    with fasthmac.Stepper(1, local=False) as stepper:
        ahead = _prefetch(stepper, keys, 1, 2, contract, files, frozenset({SUBJECT_PURPOSE}))
    assert len(ahead) == 2
    assert "subject_id" not in ahead[0] and set(texts) <= set(ahead[0])
    assert {n for n, p in purposes.items() if p != SUBJECT_PURPOSE} <= set(ahead[0])
    plain, looked_up = _mapper(), _mapper()
    looked_up.ahead = list(ahead)
    # the files in order, then a table the prefetch never saw (it is stepped by the mapper)
    for t in (table("a", 60), table("b", 60), table("c", 40)):
        assert looked_up.table(contract, t).equals(plain.table(contract, t))
    assert looked_up.ahead == []
    assert looked_up.fitted == {True: 2 * len(ahead[0])}  # every column of both files fitted
    # out of order: nothing fits, everything is stepped by the mapper, with the same result
    looked_up.ahead = list(reversed(ahead))
    assert looked_up.table(contract, table("a", 60)).equals(plain.table(contract, table("a", 60)))
    assert looked_up.fitted[False] >= len(purposes) - 1  # the pseudonym columns of "b" fit none of "a"


def pq_write(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path)
