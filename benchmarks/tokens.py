"""How far the token estimator is from the real tokenizers, and how fast both are.

The corpus, ``benchmarks/data/corpus.txt``, holds sections of English prose, code, JSON,
German, French, Spanish, Russian, Chinese, Japanese, Arabic, emoji-laden chat, Korean
and Hindi. Each paragraph is one sample, and so is each line of a paragraph that has
several (short texts are what most prompts are). Paragraphs alternate between a
calibration half and a held-out half; errors are reported on the held-out half (the
honest figure) and on all samples.

References, where this machine has them: ``o200k_base`` and ``cl100k_base`` through
tiktoken, and Meta's Llama 3 vocabulary (the ``open`` family) through a tiktoken
``Encoding`` built from ``<tiktoken cache>/llama3.tiktoken``. tiktoken downloads its files
on first use; without network the comparison is skipped with a clear message
(``python benchmarks/tiktoken_files.py`` fills the cache from a PyPI wheel, hash-checked).

    python benchmarks/tokens.py              # error and speed report
    python benchmarks/tokens.py --calibrate  # fit the coefficients; paste into tokens.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiktoken_files import LLAMA3_PATTERN, cache_path

from runtime.accounting.tokens import FEATURES, TokenCounter, features

CORPUS = Path(__file__).resolve().parent / "data" / "corpus.txt"
FAMILY_ENCODINGS = {"o200k": "o200k_base", "cl100k": "cl100k_base", "open": "llama3"}
# Ridge priors: rough tokens per occurrence, used where the corpus says little (rare scripts).
PRIOR = {
    "a": 0.2,
    "A": 0.3,
    "d": 0.5,
    "p": 0.7,
    " ": 0.05,
    "n": 0.5,
    " a": 0.5,
    " A": 0.5,
    "aA": 0.5,
    "pp": -0.2,
    "  ": 0.0,
    "e": 0.5,
    "y": 0.3,
    "r": 0.3,
    "i": 0.5,
    "S": 1.0,
    "k": 0.8,
    "h": 0.9,
    "g": 0.7,
    "w": 1.0,
    "E": 1.5,
    "s": 0.8,
    " y": 0.5,
    " r": 0.5,
    " e": 0.3,
}
RIDGE = 0.5

Sample = tuple[str, str, bool]  # (section, text, held out)


def load_samples() -> list[Sample]:
    """Paragraphs, and the lines of multi-line paragraphs, tagged by section and split."""
    samples: list[Sample] = []
    section = "?"
    paragraphs: dict[str, list[str]] = {}
    current: list[str] = []

    def flush() -> None:
        if current:
            paragraphs.setdefault(section, []).append("\n".join(current))
            current.clear()

    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        if line.startswith("=== ") and line.endswith(" ==="):
            flush()
            section = line[4:-4]
        elif not line.strip():
            flush()
        else:
            current.append(line)
    flush()
    for name, paras in paragraphs.items():
        for i, para in enumerate(paras):
            held_out = i % 2 == 1
            samples.append((name, para, held_out))
            lines = para.split("\n")
            if len(lines) > 1:
                samples.extend((name, line, held_out) for line in lines if line.strip())
    return samples


def reference_encoders() -> tuple[dict[str, Callable[[str], list[int]]], list[str]]:
    """The real tokenizers available offline, by family, and why any are missing."""
    found: dict[str, Callable[[str], list[int]]] = {}
    missing: list[str] = []
    try:
        import tiktoken
        import tiktoken.load
    except ImportError:
        return found, ["tiktoken is not installed: no reference to compare with"]
    for family, name in FAMILY_ENCODINGS.items():
        path = cache_path(name)
        if not path.exists():
            missing.append(f"{family}: {name} is not in tiktoken's cache ({path}); run benchmarks/tiktoken_files.py")
            continue
        if name == "llama3":
            ranks = tiktoken.load.load_tiktoken_bpe(str(path))
            encoding = tiktoken.Encoding(
                name="llama3", pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks, special_tokens={}
            )
        else:
            encoding = tiktoken.get_encoding(name)
        found[family] = encoding.encode_ordinary
    return found, missing


def solve(matrix: list[list[float]], vector: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting (the system is small and well-conditioned)."""
    n = len(vector)
    a = [[*row, vector[i]] for i, row in enumerate(matrix)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        a[col], a[pivot] = a[pivot], a[col]
        for r in range(n):
            if r != col and a[r][col]:
                factor = a[r][col] / a[col][col]
                a[r] = [x - factor * y for x, y in zip(a[r], a[col], strict=True)]
    return [a[i][n] / a[i][i] for i in range(n)]


def fit(samples: list[Sample], encode: Callable[[str], list[int]]) -> dict[str, float]:
    """Ridge-regularised least squares on relative error, over the calibration half."""
    names = [f.decode() for f in FEATURES]
    k = len(names)
    ata = [[0.0] * k for _ in range(k)]
    aty = [0.0] * k
    for _, text, held_out in samples:
        if held_out:
            continue
        y = len(encode(text))
        if y == 0:
            continue
        x = features(text)
        w = 1.0 / (y * y)  # relative error: a short prompt counts as much as a long one
        for i in range(k):
            if x[i]:
                aty[i] += w * x[i] * y
                for j in range(k):
                    ata[i][j] += w * x[i] * x[j]
    for i, name in enumerate(names):
        ata[i][i] += RIDGE
        aty[i] += RIDGE * PRIOR[name]
    coefficients = solve(ata, aty)
    return {name: round(c, 4) for name, c in zip(names, coefficients, strict=True)}


def time_per_call(fn: Callable[[str], object], text: str, budget: float = 0.3) -> float:
    """Seconds per call of ``fn(text)``, best of five runs of about ``budget / 5`` seconds each."""
    n = 1
    while True:
        start = time.perf_counter()
        for _ in range(n):
            fn(text)
        elapsed = time.perf_counter() - start
        if elapsed > budget / 5:
            break
        n *= 4
    best = elapsed / n
    for _ in range(4):
        start = time.perf_counter()
        for _ in range(n):
            fn(text)
        best = min(best, (time.perf_counter() - start) / n)
    return best


def report(samples: list[Sample], refs: dict[str, Callable[[str], list[int]]]) -> None:
    """Error per family and section, then speed.

    ``worst`` is over every held-out sample, where one token off on a two-token line is
    50 %; ``worst≥20`` only over samples of at least 20 real tokens.
    """
    for family, encode in refs.items():
        counter = TokenCounter(family)
        print(f"\n## {family} (estimator vs {FAMILY_ENCODINGS[family]})")
        print(
            f"{'section':<10} {'held-out MAPE':>13} {'worst':>7} {'worst≥20':>9} {'all MAPE':>9}   tokens: real / estimated"
        )
        rows: dict[str, list[tuple[float, int, bool, int]]] = {}
        for section, text, held_out in samples:
            real = len(encode(text))
            est = counter.estimate(text)
            rows.setdefault(section, []).append((abs(est - real) / real, real, held_out, est))
        everything = [row for section_rows in rows.values() for row in section_rows]
        for section, section_rows in [*rows.items(), ("overall", everything)]:
            held = [err for err, _, h, _ in section_rows if h]
            long_held = [err for err, real, h, _ in section_rows if h and real >= 20] or [0.0]
            every = [err for err, *_ in section_rows]
            real_sum = sum(real for _, real, _, _ in section_rows)
            est_sum = sum(est for *_, est in section_rows)
            print(
                f"{section:<10} {100 * statistics.fmean(held):>12.1f}% {100 * max(held):>6.1f}% "
                f"{100 * max(long_held):>8.1f}% {100 * statistics.fmean(every):>8.1f}%   {real_sum:>6} / {est_sum}"
            )
        print(f"({sum(h for *_, h, _ in everything)} held-out samples of {len(everything)})")
    speed(samples, refs)


def speed(samples: list[Sample], refs: dict[str, Callable[[str], list[int]]]) -> None:
    """Microseconds per call and tokens per second, estimator against tiktoken."""
    short = "Summarise the following support ticket in two sentences, please."
    paragraph = next(text for section, text, _ in samples if section == "english" and len(text) > 400)
    corpus = "\n\n".join(text for _, text, _ in samples)
    counter = TokenCounter("o200k")
    print("\n## speed (one core; best of 5)")
    print(
        f"{'':<22} {'short prompt (' + str(len(short)) + ' ch)':>24} {'paragraph (' + str(len(paragraph)) + ' ch)':>22} {'corpus tokens/s':>16}"
    )
    rows: list[tuple[str, Callable[[str], object], Callable[[str], list[int]] | None]] = [
        ("estimator (o200k)", counter.estimate, refs.get("o200k"))
    ]
    for family, encode in refs.items():
        rows.append((f"tiktoken {FAMILY_ENCODINGS[family]}", encode, encode))
    for name, fn, ref in rows:
        t_short = time_per_call(fn, short)
        t_para = time_per_call(fn, paragraph)
        t_corpus = time_per_call(fn, corpus, budget=1.0)
        tokens = len(ref(corpus)) if ref is not None else counter.estimate(corpus)
        print(f"{name:<22} {t_short * 1e6:>21.2f} µs {t_para * 1e6:>19.2f} µs {tokens / t_corpus:>16,.0f}")


def main() -> int:
    """Report (default) or calibrate."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibrate", action="store_true", help="fit the estimator's coefficients and print them")
    args = parser.parse_args()
    samples = load_samples()
    refs, missing = reference_encoders()
    for line in missing:
        print(f"NOTE: {line}")
    if not refs:
        print("No reference tokenizer is available offline: the error comparison is SKIPPED.")
        print("Estimator speed alone follows.")
        speed(samples, refs)
        return 0
    if args.calibrate:
        print("_CALIBRATED: Final[dict[str, dict[str, float]]] = {")
        for family, encode in refs.items():
            print(f"    {family!r}: {fit(samples, encode)!r},")
        print("}")
        return 0
    report(samples, refs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
