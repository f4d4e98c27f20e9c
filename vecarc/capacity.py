"""Measuring how much one set of memory vectors holds, and remembering it per model.

Capacity is an amount of information, not of tokens: calibration finds, for
several sample texts, the longest prefix that still decodes exactly, and records
how many nats of cross-entropy the vectors removed from it (the information
gain). A low percentile of those gains becomes the budget that the capacity plan
cuts chunks by, so most chunks fit at the first try.

Profiles are JSON files in the cache, one per model fingerprint, with one entry
per representation (vectors per chunk, storage dtype, margin), because each of
those changes the capacity. A profile measured for another fingerprint is never
used. Profiles shipped with vecarc (in `vecarc/profiles/`) are read when the
cache has none.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from .config import DEFAULT_FILL, Engine
from .entropy import token_nll
from .errors import VecarcError
from .events import Progress
from .fingerprint import LEGACY, SCHEME
from .format import write_atomic
from .models import LoadedModel, cache_dir
from .plan import MIN_CHUNK_TOKENS, Budget
from .search import CramResult, Job, SearchSettings, chunk_key, cram
from .summary import spread

PROFILE_FORMAT = "vecarc-profile"
PROFILE_VERSION = 1
DEFAULT_SAMPLES = 8
DEFAULT_PERCENTILE = 20.0
SAMPLE_TOKENS = 512  # longest prefix a sample offers; the search doubles up to it


def profile_key(s: SearchSettings) -> str:
    """Profile key: what changes how much a vector holds."""
    return f"k{s.vectors}-{s.vector_dtype}-m{s.margin:g}" + (f"-r{s.rank}" if s.rank else "")


@dataclass
class Sample:
    source: str  # where the sample text came from (file and offset)
    tokens: int = 0  # longest prefix reconstructed exactly
    nats_without: float = 0.0  # cross-entropy of that prefix given only the sink token
    nats_with: float = 0.0  # ... given the memory vectors
    gain: float = 0.0  # nats_without - nats_with: information the vectors supplied
    steps: int = 0  # steps the passing try took
    tries: list[dict] = field(default_factory=list)  # every length tried: tokens, steps, ok


def _percentile(xs: Sequence[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return 0.0
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def builtin_texts() -> list[tuple[str, str]]:
    text = resources.files("vecarc").joinpath("calibration.txt").read_text(encoding="utf-8")
    return [("calibration.txt", text)]


def sample_windows(
    lm: LoadedModel, texts: Sequence[tuple[str, str]], samples: int, length: int
) -> list[tuple[str, list[int]]]:
    """`samples` token windows spread evenly over the texts, each starting at a line start."""
    docs = [(name, text, lm.tokenizer(text, add_special_tokens=False)["input_ids"]) for name, text in texts]
    docs = [d for d in docs if len(d[2]) >= 2 * MIN_CHUNK_TOKENS]
    if not docs:
        raise VecarcError("calibration text is too short (needs at least a few sentences)")
    out = []
    for j in range(samples):
        name, text, ids = docs[j % len(docs)]
        round_ = j // len(docs)
        per_doc = -(-samples // len(docs))
        start = int(len(ids) * round_ / per_doc)
        # Move to the token after the next newline, so samples begin like paragraphs do.
        for i in range(start, min(len(ids), start + 64)):
            if start == 0 or "\n" in lm.tokenizer.decode(ids[i - 1 : i]):
                start = i
                break
        window = ids[start : start + length]
        if len(window) < 2 * MIN_CHUNK_TOKENS:
            window = ids[:length]
        out.append((f"{name}@token{start}", window))
    return out


class _Bisection:
    """Longest exactly-decoded prefix of one sample: double until a failure, then bisect."""

    def __init__(self, tokens: list[int], first: int, tol: float):
        self.tokens, self.tol = tokens, tol
        self.lo, self.hi = 0, None  # longest pass, shortest failure
        self.next = min(first, len(tokens))
        self.best: CramResult | None = None

    def record(self, n: int, ok: bool, r: CramResult) -> int | None:
        if ok:
            self.lo, self.best = n, r
        else:
            self.hi = n
        if self.hi is None:
            if self.lo >= len(self.tokens):
                return None
            return min(2 * self.lo, len(self.tokens))
        if self.hi - self.lo <= max(1, int(self.lo * self.tol)) or self.hi <= MIN_CHUNK_TOKENS:
            return None
        return (self.lo + self.hi) // 2


def calibrate(
    lm: LoadedModel,
    settings: SearchSettings | None = None,
    texts: Sequence[tuple[str, str]] | None = None,
    samples: int = DEFAULT_SAMPLES,
    first_tokens: int = 32,
    sample_tokens: int = SAMPLE_TOKENS,
    tol: float = 0.2,
    percentile: float = DEFAULT_PERCENTILE,
    progress: Progress | None = None,
    engine: Engine | None = None,
) -> dict:
    """Measure capacity on sample texts; returns the profile entry (not yet saved).

    All samples search at once in one continuous batch: each finished try is
    verified by greedy decoding and immediately replaced by the sample's next length.
    An engine (Ray) searches the samples on its workers instead, one sample a shard.
    """
    s = (settings or SearchSettings()).resolved(lm.hidden_size, lm.fast_bf16())
    t0 = time.perf_counter()
    limit = lm.chunk_limit(s.vectors)
    windows = sample_windows(lm, texts or builtin_texts(), samples, min(sample_tokens, limit))
    if engine is None:
        found, searches = search_samples(lm, s, windows, first_tokens, tol, progress)
    else:
        found, searches = engine.calibrate(lm, s, windows, first_tokens, tol, progress)
    _measure_gains(lm, found, searches)
    return _entry(s, found, percentile, time.perf_counter() - t0)


def search_samples(lm: LoadedModel, s: SearchSettings, windows: Sequence[tuple[str, list[int]]], first_tokens: int,
                   tol: float, progress: Progress | None = None) -> tuple[list[Sample], list[_Bisection]]:
    """Each window's longest exactly-decoded prefix, all windows in one continuous batch."""
    found = [Sample(source=src) for src, _ in windows]
    searches = [_Bisection(w, first_tokens, tol) for _, w in windows]

    def job(i: int, n: int) -> Job:
        return Job(searches[i].tokens[:n], chunk_key(i, n, 7), (i, n))

    def on_result(j: Job, r: CramResult) -> list[Job]:
        i, n = j.tag
        ok = r.ok  # cram's own greedy decode gave the tokens back
        found[i].tries.append({"tokens": n, "steps": r.steps, "ok": ok})
        if progress is not None:
            progress({"event": "calibrate", "sample": i, "source": found[i].source, "tokens": n,
                      "steps": r.steps, "ok": ok, "margin": r.search_margin})
        nxt = searches[i].record(n, ok, r)
        return [job(i, nxt)] if nxt else []

    cram(lm, [job(i, sr.next) for i, sr in enumerate(searches)], s, progress, on_result)
    return found, searches


def _measure_gains(lm: LoadedModel, found: Sequence[Sample], searches: Sequence[_Bisection]) -> None:
    """Fill in each solved sample's cross-entropy without and with its vectors."""
    solved = [(x, sr) for x, sr in zip(found, searches) if sr.best is not None]
    prefixes = [sr.tokens[: sr.lo] for _, sr in solved]
    without = token_nll(lm, prefixes)  # one batched pass each, not two per sample
    with_ = token_nll(lm, prefixes, [sr.best.vectors for _, sr in solved])
    for (sample, sr), a, b in zip(solved, without, with_):
        sample.tokens, sample.nats_without, sample.nats_with = sr.lo, sum(a), sum(b)
        sample.gain, sample.steps = sum(a) - sum(b), sr.best.steps


def _entry(s: SearchSettings, found: Sequence[Sample], percentile: float, seconds: float) -> dict:
    """The profile entry: the budget is a low percentile of the gains, so most chunks planned at it solve."""
    held = [x for x in found if x.tokens > 0]
    if not held:
        raise VecarcError("calibration failed: no sample was reconstructed even at the shortest length")
    gains = [x.gain for x in held]
    tokens = [x.tokens for x in held]
    return {
        "representation": profile_key(s),
        "budget_nats": _percentile(gains, percentile),
        "percentile": percentile,
        "gain_nats": spread(gains),
        "tokens": spread(tokens),
        "samples": [asdict(x) for x in found],
        "failed_samples": len(found) - len(held),
        "margin": s.margin,
        "settings": s.record(),
        "seconds": round(seconds, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# ---- profiles on disk ---------------------------------------------------------------


def profiles_dir() -> Path:
    return cache_dir() / "profiles"


def _builtin_dir() -> Path:
    return Path(str(resources.files("vecarc").joinpath("profiles")))


def profile_path(fingerprint: str, folder: Path | None = None) -> Path:
    return (folder or profiles_dir()) / f"{fingerprint.split(':')[-1][:32]}.json"


def _read_profile(path: Path) -> dict:
    """A profile file, or VecarcError saying why it is unusable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VecarcError(f"profile {path} is unreadable ({type(e).__name__})") from None
    ok = (isinstance(data, dict) and data.get("format") == PROFILE_FORMAT and data.get("version") == PROFILE_VERSION
          and isinstance(data.get("model"), dict) and isinstance(data.get("entries"), dict))
    if not ok:
        raise VecarcError(f"profile {path} is not a vecarc profile version {PROFILE_VERSION}")
    for key, e in data["entries"].items():
        good = isinstance(e, dict) and isinstance(e.get("budget_nats"), (int, float)) and e["budget_nats"] > 0
        good = good and isinstance(e.get("tokens"), dict) and isinstance(e["tokens"].get("max"), int)
        if not good:
            raise VecarcError(f"profile {path} has a malformed entry {key!r}")
    return data


def load_entry(lm: LoadedModel, rep: str, warn: Callable[[str], None] | None = None) -> tuple[dict, Path] | None:
    """The stored entry for this exact model and representation, or None.

    A corrupt file is reported through `warn` and treated as missing, so the
    caller recalibrates instead of crashing. Profiles saved under the model's
    scheme-1 fingerprint (before scheme 2) are found too: calibrating takes hours.
    """
    for scheme in (SCHEME, LEGACY):  # scheme 1 hashed only when scheme 2 finds nothing
        fingerprint = lm.fingerprint_as(scheme)
        for folder in (profiles_dir(), _builtin_dir()):
            found = _entry_in(profile_path(fingerprint, folder), fingerprint, rep, warn)
            if found is not None:
                return found
    return None


def _entry_in(path: Path, fingerprint: str, rep: str, warn: Callable[[str], None] | None) -> tuple[dict, Path] | None:
    if not path.is_file():
        return None
    try:
        data = _read_profile(path)
    except VecarcError as e:
        if warn:
            warn(f"{e}; ignoring it")
        return None
    if data["model"].get("fingerprint") != fingerprint or rep not in data["entries"]:
        return None
    return data["entries"][rep], path


def save_entry(lm: LoadedModel, entry: dict) -> Path:
    """Add or replace one representation's entry in this model's profile (atomic)."""
    path = profile_path(lm.fingerprint)
    try:
        data = _read_profile(path) if path.is_file() else None
    except VecarcError:
        data = None  # a corrupt profile is replaced
    if data is None or data["model"].get("fingerprint") != lm.fingerprint:
        data = {"format": PROFILE_FORMAT, "version": PROFILE_VERSION, "entries": {}}
    data["model"] = {"name": lm.name, "source": lm.source, "fingerprint": lm.fingerprint}
    data["entries"][entry["representation"]] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(data, indent=1) + "\n").encode(), force=True)
    return path


def list_profiles(warn: Callable[[str], None] | None = None) -> list[dict]:
    """One row per (model, representation) across the cache and the built-in profiles."""
    rows, seen = [], set()
    for folder, where in ((profiles_dir(), "cache"), (_builtin_dir(), "built-in")):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            try:
                data = _read_profile(path)
            except VecarcError as e:
                if warn:
                    warn(str(e))
                continue
            m = data["model"]
            for rep, e in sorted(data["entries"].items()):
                if (m.get("fingerprint"), rep) in seen:
                    continue
                seen.add((m.get("fingerprint"), rep))
                rows.append({"model": m.get("name"), "fingerprint": m.get("fingerprint"), "representation": rep,
                             "budget_nats": e["budget_nats"], "tokens": e["tokens"], "where": where,
                             "path": str(path), "created": e.get("created")})
    return rows


def budget_for(lm: LoadedModel, entry: dict, s: SearchSettings, fill: float = DEFAULT_FILL) -> Budget:
    """Planning budget from a profile entry. Chunks stay within twice the longest
    calibrated one: beyond that the budget says nothing."""
    if not 0 < fill <= 4:
        raise VecarcError(f"--fill must be in (0, 4], got {fill}")
    longest = min(lm.chunk_limit(s.vectors), 2 * entry["tokens"]["max"])
    return Budget(nats=float(entry["budget_nats"]), max_tokens=max(MIN_CHUNK_TOKENS, longest), fill=fill)


def capacity_budget(lm: LoadedModel, s: SearchSettings, fill: float = DEFAULT_FILL, progress: Progress | None = None,
                    warn: Callable[[str], None] | None = None, engine: Engine | None = None) -> Budget:
    """The planning budget from this model's profile; calibrates (and stores) when there is none.

    A model that cannot hold even the shortest calibration sample stops the pack with what to do
    instead: packing on would spend every step and store everything as literals.
    """
    rep = profile_key(s)
    found = load_entry(lm, rep, warn)
    if found is None:
        if warn:
            warn(f"no capacity profile for {lm.name} ({rep}); calibrating first (vecarc calibrate)")
        try:
            entry = calibrate(lm, s, progress=progress, engine=engine)
        except VecarcError as e:
            raise VecarcError(f"{e}, so {lm.name} cannot be planned at these settings: pack with --chunk-tokens N "
                              f"(chunks that fail are kept losslessly), or calibrate on your own text first "
                              f"(vecarc calibrate --model ... --text FILE)") from None
        save_entry(lm, entry)
    else:
        entry = found[0]
    return budget_for(lm, entry, s, fill)
