"""Fuzz run: every parser of untrusted input, millions of inputs, crashes counted and saved.

Not part of CI (``tests/test_input_fuzz.py`` is the bounded version). Parsers and inputs:

    config     ``agent.config.load_config`` on a file: the shipped agent configs with random
               edits (bytes flipped, inserted, deleted, duplicated; YAML syntax and hostile
               tokens spliced in) and random bytes
    topology   ``agent.sources.topology.load_topology`` on a file: the same for the lab
               topologies
    token      ``decode_token`` (and ``token_from_header`` on the text form): edited encoded
               tokens, with and without ``insecure``, and random bytes
    reply      ``decode_reply``: edited encoded replies and random bytes
    proxy      ``parse_proxy_v2`` / ``parse_proxy_stack``: edited AWS-style headers (IPv4,
               IPv6, LOCAL, with TLVs), stacks of them, and random bytes
    syntag     ``SynTagger.verify``: random ISNs (in and out of range), random times
    stream     responder framing: ``[PROXY v2 header...] token`` fed in random chunks the way
               the responder reads it (TruncatedError = read more); the chunked result must
               equal the one-shot result

A *crash* is any exception other than the project's own (``agent.errors.PlprobeError``: the
loaders raise ConfigError, the decoders WireError), an input that takes longer than
``--input-timeout`` seconds, or (stream) a chunked parse that disagrees with the one-shot parse.
Each crash's input is written to ``--crash-dir`` to reproduce it.

Each parser stops after ``--count`` inputs or ``--seconds`` seconds, whichever comes first.
Prints one JSON object on stdout (inputs, crashes, inputs/s per parser), progress on stderr;
exit 1 if anything crashed.

    .venv/bin/python bench/fuzz_parsers.py [--count 1000000] [--seconds 3600] [--jobs 1]
        [--parsers config,topology,token,reply,proxy,syntag,stream] [--seed 1]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing
import os
import random
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent.config import load_config
from agent.errors import PlprobeError, TruncatedError
from agent.sources.topology import load_topology
from agent.wire import (
    Reply,
    SynTagger,
    Token,
    build_proxy_v2,
    decode_reply,
    decode_token,
    encode_reply,
    encode_token,
    parse_proxy_stack,
    parse_proxy_v2,
    token_from_header,
    token_to_header,
)

ROOT = Path(__file__).resolve().parent.parent
KEY = b"k" * 32
PARSERS = ("config", "topology", "token", "reply", "proxy", "syntag", "stream")

#: spliced into the YAML files: syntax, tokens that used to crash the loaders, hostile values
YAML_TOKENS = [
    b"&a ", b"*a", b"!!int ", b"!!binary ", b"!foo ", b"!!python/object:os.system ", b"<<: ",
    b"? ", b"- ", b": ", b"[", b"]", b"{", b"}", b",", b"\n", b"\n  ", b"\t", b"'", b'"', b"#",
    b"---\n", b"...", b"|", b">", b"%YAML 1.1\n", b"\x00", b"\\0", b"\xff", b"\xc3",
    b"~nosuchuser/", b"9" * 40, b"9" * 5000, b"0x" + b"f" * 30, b".inf", b".nan", b"-1", b"null",
    b"true", b"2001-13-45", b"[client]", b"{}", b"[]", b"1e+999", b"[" * 200, b"\xef\xbb\xbf",
]  # fmt: skip


# -------------------------------------------------------------------------------- inputs


def mutate(rng: random.Random, data: bytes, tokens: list[bytes] | None = None) -> bytes:
    """1-6 random edits of ``data``; ``tokens`` are spliced in as a whole."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        at = rng.randint(0, len(out))
        kind = rng.choice(("flip", "insert", "delete", "duplicate", "token", "bit"))
        if kind == "flip" and at < len(out):
            out[at] = rng.randrange(256)
        elif kind == "bit" and at < len(out):
            out[at] ^= 1 << rng.randrange(8)
        elif kind == "insert":
            out[at:at] = rng.randbytes(rng.randint(1, 8))
        elif kind == "delete":
            del out[at : at + rng.randint(1, 64)]
        elif kind == "duplicate":
            out[at:at] = out[at : at + rng.randint(1, 256)]
        elif kind == "token" and tokens:
            out[at:at] = rng.choice(tokens)
    return bytes(out)


def seeds_or_random(rng: random.Random, seeds: list[bytes], tokens: list[bytes] | None) -> bytes:
    """Mostly edited valid inputs (they get past the first checks), sometimes random bytes."""
    roll = rng.random()
    if roll < 0.1:
        return rng.randbytes(rng.randint(0, 512))
    if roll < 0.15:
        return rng.choice(seeds)
    return mutate(rng, rng.choice(seeds), tokens)


def _agent_configs() -> list[bytes]:
    files = [*ROOT.glob("configs/*.yaml"), *ROOT.glob("configs/lab/*.yaml")]
    return [p.read_bytes() for p in sorted(files) if b"\nrole:" in b"\n" + p.read_bytes()]


def _topologies() -> list[bytes]:
    files = sorted(ROOT.glob("configs/lab/*.yaml"))
    return [p.read_bytes() for p in files if b"\nresources:" in p.read_bytes()]


def _tokens(rng: random.Random) -> list[bytes]:
    out = []
    for _ in range(32):
        token = Token(
            rng.randbytes(16),
            "a" * rng.randint(1, 40),
            "b" * rng.randint(1, 8),
            rng.randrange(1 << 63),
        )
        out.append(encode_token(token, KEY))
    return out


def _replies(rng: random.Random) -> list[bytes]:
    out = []
    for v6 in (False, True):
        for vpce in (None, "vpce-0123456789abcdef0"):
            src = "2001:db8::1" if v6 else "10.0.0.1"
            reply = Reply(
                probe_id=rng.randbytes(16),
                agent_id="server-1",
                recv_ns=rng.randrange(1 << 63),
                src_ip=src,
                src_port=40000,
                local_ip=src,
                local_port=9721,
                vpce_id=vpce,
                proxy_src_ip=src if vpce else None,
                proxy_src_port=1234 if vpce else None,
                proxy_dst_ip=src if vpce else None,
                proxy_dst_port=80 if vpce else None,
            )
            out.append(encode_reply(reply, KEY))
    return out


def _proxies() -> list[bytes]:
    one = [
        build_proxy_v2("10.1.0.10", "10.2.0.20", 40000, 80, vpce_id="vpce-0123456789abcdef0"),
        build_proxy_v2("2001:db8::1", "2001:db8::2", 1, 2, crc=False, noop_pad=36),
        build_proxy_v2(None, None, command="LOCAL"),
        build_proxy_v2("10.0.0.1", "10.0.0.2", 1, 2, command="LOCAL", noop_pad=3),
    ]
    return one + [a + b for a in one for b in one[:2]]


# -------------------------------------------------------------------------------- parsers


@dataclass
class Parser:
    """One fuzz target: ``make`` builds an input, ``run`` feeds it to the code under test."""

    make: Callable[[random.Random], bytes]
    run: Callable[[bytes], object]


def _file_parser(loader: Callable[[Path], object], seeds: list[bytes], workdir: Path) -> Parser:
    path = workdir / "input.yaml"

    def run(data: bytes) -> object:
        path.write_bytes(data)
        return loader(path)

    return Parser(lambda rng: seeds_or_random(rng, seeds, YAML_TOKENS), run)


def _token_run(data: bytes) -> object:
    with contextlib.suppress(PlprobeError):
        token_from_header(data.decode("latin-1"))
    with contextlib.suppress(PlprobeError):
        decode_token(data, b"", insecure=True)
    return decode_token(data, KEY)


def _reply_run(data: bytes) -> object:
    return decode_reply(data, KEY)


def _proxy_run(data: bytes) -> object:
    with contextlib.suppress(PlprobeError):
        parse_proxy_v2(data)
    return parse_proxy_stack(data)


_TAGGER = SynTagger(KEY)


def _syntag_make(rng: random.Random) -> bytes:
    isn = rng.choice((rng.randrange(1 << 32), rng.randrange(-(1 << 40), 1 << 40)))
    now = rng.choice((time.time(), rng.uniform(-1e12, 1e12), 0.0))
    return json.dumps([isn, now]).encode()


def _syntag_run(data: bytes) -> object:
    isn, now = json.loads(data)
    return _TAGGER.verify(isn, now)


class Disagreement(Exception):
    """The chunked stream parse gave another result than the one-shot parse."""


def _frame(data: bytes) -> tuple[int, Token]:
    """One-shot framing of a buffer: (bytes of PROXY headers, the token); raises WireError."""
    _, used = parse_proxy_stack(data)
    token, _ = decode_token(data[used:], KEY)
    return used, token


def _stream_make(rng: random.Random) -> bytes:
    token = rng.choice(_STREAM_TOKENS)
    proxies = rng.sample(_STREAM_PROXIES, rng.randint(0, 2))
    whole = b"".join(proxies) + token + rng.randbytes(rng.randint(0, 8))
    data = whole if rng.random() < 0.2 else mutate(rng, whole)
    inside = range(1, len(data))  # chunk boundaries strictly inside the buffer
    cuts = sorted(rng.sample(inside, min(len(inside), rng.randint(0, 6))))
    return json.dumps({"data": data.hex(), "cuts": cuts}).encode()


def _stream_run(raw: bytes) -> object:
    """Read like the responder: grow the buffer chunk by chunk, retry on TruncatedError."""
    spec = json.loads(raw)
    data = bytes.fromhex(spec["data"])
    expected: object
    try:
        expected = _frame(data)
    except PlprobeError as exc:
        expected = exc
    result: object = None
    for end in [*spec["cuts"], len(data)]:
        try:
            result = _frame(data[:end])
            break
        except TruncatedError as exc:
            result = exc  # read more
        except PlprobeError as exc:
            result = exc
            break

    def outcome(value: object) -> object:
        return type(value).__name__ if isinstance(value, PlprobeError) else value

    if outcome(result) != outcome(expected):
        raise Disagreement(f"chunked {outcome(result)!r} != one-shot {outcome(expected)!r}")
    if isinstance(expected, PlprobeError):
        raise expected
    return expected


_STREAM_TOKENS: list[bytes] = []
_STREAM_PROXIES: list[bytes] = []


def build_parsers(names: list[str], workdir: Path, seed: int) -> dict[str, Parser]:
    rng = random.Random(seed)
    _STREAM_TOKENS[:] = _tokens(rng)
    _STREAM_PROXIES[:] = _proxies()
    tokens, replies, proxies = _tokens(rng), _replies(rng), _proxies()
    header_forms = [token_to_header(t).encode() for t in tokens]
    table = {
        "config": lambda: _file_parser(load_config, _agent_configs(), workdir),
        "topology": lambda: _file_parser(load_topology, _topologies(), workdir),
        "token": lambda: Parser(
            lambda r: seeds_or_random(r, tokens + header_forms, None), _token_run
        ),
        "reply": lambda: Parser(lambda r: seeds_or_random(r, replies, None), _reply_run),
        "proxy": lambda: Parser(lambda r: seeds_or_random(r, proxies, None), _proxy_run),
        "syntag": lambda: Parser(_syntag_make, _syntag_run),
        "stream": lambda: Parser(_stream_make, _stream_run),
    }
    return {name: table[name]() for name in names}


# -------------------------------------------------------------------------------- runner


class InputTimeout(Exception):
    """One input ran longer than ``--input-timeout``."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def expired(signum: int, frame: object) -> None:
        raise InputTimeout(f"input took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Result:
    parser: str
    inputs: int = 0
    accepted: int = 0
    rejected: int = 0
    crashes: int = 0
    seconds: float = 0.0
    #: distinct crash signatures -> one example (exception, where, saved input file)
    crash_kinds: dict[str, dict[str, str]] = field(default_factory=dict)

    def add(self, other: Result) -> None:
        self.inputs += other.inputs
        self.accepted += other.accepted
        self.rejected += other.rejected
        self.crashes += other.crashes
        self.seconds = max(self.seconds, other.seconds)
        for kind, example in other.crash_kinds.items():
            self.crash_kinds.setdefault(kind, example)


def _signature(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = next(
        (
            f"{Path(f.filename).name}:{f.lineno}"
            for f in reversed(frames)
            if "/agent/" in f.filename
        ),
        "?",
    )
    return f"{type(exc).__name__} at {where}"


def fuzz_one(
    name: str, count: int, seconds: float, seed: int, input_timeout: float, crash_dir: Path
) -> Result:
    """Run one parser until ``count`` inputs or ``seconds`` have passed."""
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None  # input files: keep them in RAM
    with tempfile.TemporaryDirectory(prefix="plprobe-fuzz-", dir=shm) as tmp:
        parser = build_parsers([name], Path(tmp), seed)[name]
        rng = random.Random(f"{name}/{seed}")
        result = Result(name)
        start = time.perf_counter()
        deadline = start + seconds
        os.environ.setdefault("PLPROBE_KEY", KEY.decode())
        while result.inputs < count and (result.inputs % 64 or time.perf_counter() < deadline):
            data = parser.make(rng)
            result.inputs += 1
            try:
                with time_limit(input_timeout):
                    parser.run(data)
                result.accepted += 1
            except PlprobeError:
                result.rejected += 1
            except Exception as exc:  # the point: anything else is a crash
                result.crashes += 1
                kind = _signature(exc)
                if kind not in result.crash_kinds:
                    crash_dir.mkdir(parents=True, exist_ok=True)
                    saved = crash_dir / f"{name}-{hashlib.sha256(data).hexdigest()[:16]}.bin"
                    saved.write_bytes(data)
                    result.crash_kinds[kind] = {"message": str(exc)[:300], "input": str(saved)}
                    print(f"{name}: CRASH {kind}: {str(exc)[:200]} ({saved})", file=sys.stderr)
        result.seconds = time.perf_counter() - start
        return result


def _worker(args: tuple[str, int, float, int, float, Path]) -> Result:
    return fuzz_one(*args)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--count", type=int, default=1_000_000, help="inputs per parser")
    ap.add_argument("--seconds", type=float, default=3600.0, help="time bound per parser")
    ap.add_argument("--parsers", default=",".join(PARSERS), help="comma-separated subset")
    ap.add_argument("--jobs", type=int, default=1, help="processes per parser (splits --count)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--input-timeout", type=float, default=5.0, help="seconds; longer = crash")
    ap.add_argument("--crash-dir", type=Path, default=Path("fuzz-crashes"))
    args = ap.parse_args()
    names = [n for n in args.parsers.split(",") if n]
    unknown = sorted(set(names) - set(PARSERS))
    if unknown:
        ap.error(f"unknown parsers {unknown}; known: {', '.join(PARSERS)}")
    results = []
    for name in names:
        shares = [args.count // args.jobs + (i < args.count % args.jobs) for i in range(args.jobs)]
        work = [
            (name, share, args.seconds, args.seed * 1000 + i, args.input_timeout, args.crash_dir)
            for i, share in enumerate(shares)
        ]
        if args.jobs == 1:
            parts = [_worker(work[0])]
        else:
            with multiprocessing.Pool(args.jobs) as pool:
                parts = pool.map(_worker, work)
        total = Result(name)
        for part in parts:
            total.add(part)
        rate = total.inputs / total.seconds if total.seconds else 0.0
        print(
            f"{name}: {total.inputs} inputs, {total.crashes} crashes, {rate:.0f} inputs/s "
            f"({total.accepted} accepted, {total.rejected} rejected)",
            file=sys.stderr,
        )
        results.append({**asdict(total), "inputs_per_s": round(rate, 1)})
    print(json.dumps({"seed": args.seed, "jobs": args.jobs, "parsers": results}, indent=2))
    return 1 if any(r["crashes"] for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
