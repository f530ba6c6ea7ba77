"""Put tiktoken's BPE files into its cache on a machine that cannot download them.

tiktoken fetches ``cl100k_base`` and ``o200k_base`` from a blob store on first use; a
machine that reaches only package registries cannot. The ``quicktok-v1`` wheel on PyPI
ships the same vocabularies (and Meta's Llama 3 vocabulary) in a compact binary form.
This script downloads that wheel with pip (nothing is installed), rebuilds the
``.tiktoken`` text files from it, and checks each against the SHA-256 its publisher
states: tiktoken's own expected hashes for cl100k/o200k, Meta's published hash of
Llama 3's ``tokenizer.model``. A file whose hash differs is refused. The files go into
tiktoken's cache directory (``$TIKTOKEN_CACHE_DIR``, else ``$DATA_GYM_CACHE_DIR``, else
``<tmp>/data-gym-cache``) under the names tiktoken looks for, so ``tiktoken.get_encoding``
works offline afterwards; the Llama 3 file goes beside them as ``llama3.tiktoken``.

This is a development tool for ``benchmarks/tokens.py``; the runtime never depends on it.

    python benchmarks/tiktoken_files.py
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "quicktok-v1==0.4.0"
BLOB = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
# name in the wheel -> (file name tiktoken reads, expected SHA-256 of the .tiktoken text)
FILES = {
    "cl100k": ("cl100k_base", "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"),
    "o200k": ("o200k_base", "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"),
    "llama3": ("llama3", "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55"),
}
# Llama 3's pre-tokenizer (Meta's llama-models tokenizer.py); tiktoken knows the other two.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def cache_dir() -> Path:
    """The directory tiktoken reads cached BPE files from."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if os.environ.get(var):
            return Path(os.environ[var])
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def cache_path(name: str) -> Path:
    """Where tiktoken (or, for llama3, this project's benchmark) expects the file ``name``."""
    if name == "llama3":
        return cache_dir() / "llama3.tiktoken"
    return cache_dir() / hashlib.sha1(BLOB.format(name=name).encode()).hexdigest()


def rebuild(vocab: bytes) -> bytes:
    """The ``.tiktoken`` text (base64 token, space, rank; by rank) of a quicktok ``.vocab``.

    The binary layout is a little-endian u32 count, then per token a u16 length, the
    token's bytes and a u32 rank.
    """
    (count,) = struct.unpack_from("<I", vocab, 0)
    offset = 4
    ranks: list[tuple[int, bytes]] = []
    for _ in range(count):
        (length,) = struct.unpack_from("<H", vocab, offset)
        token = vocab[offset + 2 : offset + 2 + length]
        (rank,) = struct.unpack_from("<I", vocab, offset + 2 + length)
        offset += 6 + length
        ranks.append((rank, token))
    if offset != len(vocab):
        raise ValueError("trailing bytes: not a quicktok vocabulary")
    ranks.sort()
    return b"".join(base64.b64encode(token) + b" " + str(rank).encode() + b"\n" for rank, token in ranks)


def main() -> int:
    """Download the wheel, rebuild and verify the files, write them into the cache."""
    missing = [name for name, (file, _) in FILES.items() if not cache_path(file).exists()]
    if not missing:
        print(f"all encodings already cached in {cache_dir()}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, WHEEL]
        if subprocess.run(cmd, check=False).returncode != 0:
            print(f"could not download {WHEEL} from the package registry", file=sys.stderr)
            return 1
        (wheel,) = Path(tmp).glob("*.whl")
        target = cache_dir()
        target.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            for name in missing:
                file, expected = FILES[name]
                text = rebuild(archive.read(f"quicktok/data/{name}.vocab"))
                actual = hashlib.sha256(text).hexdigest()
                if actual != expected:
                    print(f"{file}: SHA-256 {actual} is not the published {expected}; refused", file=sys.stderr)
                    return 1
                cache_path(file).write_bytes(text)
                print(f"{file}: verified, written to {cache_path(file)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
