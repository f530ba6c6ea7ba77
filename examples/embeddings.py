"""Embeddings with failover: a tiny semantic search that survives a replica going down.

Vectors from different embedding models cannot be compared, so failover for embeddings
means replicas of the *same* model: here one embedding model (``nomic-embed-text``)
served twice, by an OpenAI-compatible server and by Ollama. Requests route by model
name (``model="nomic-embed-text"``), so only those two are candidates; the chat model
in the same runtime is never asked (nor would an Anthropic endpoint ever be: it has no
embeddings API, and the runtime skips it for ``embed``).

Runs against local fault-injecting endpoints, with no network and no API key::

    python examples/embeddings.py
"""

from __future__ import annotations

import math

import anyio

from runtime import Runtime
from runtime.testing import FaultyEndpoint, LocalEndpoints

MODEL = "nomic-embed-text"
DOCUMENTS = [
    "Circuit breakers stop calls to an endpoint that keeps failing.",
    "A retry budget keeps an outage from turning into a retry storm.",
    "Health probes notice when a provider has recovered.",
    "Rate limits are enforced on the client before the provider says 429.",
]


def cosine(a: list[float], b: list[float]) -> float:
    """Cosine similarity of two vectors."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


async def search(rt: Runtime, index: list[list[float]], query: str) -> tuple[str, float, str]:
    """The document closest to ``query``, its score, and the endpoint that embedded the query."""
    embedded = await rt.embed(query, model=MODEL, timeout=10)
    scores = [cosine(embedded.vectors[0], vector) for vector in index]
    best = max(range(len(scores)), key=scores.__getitem__)
    return DOCUMENTS[best], scores[best], embedded.endpoint


async def main() -> int:
    """Index the documents, search, take a replica down, search again; 0 when all went well."""
    async with LocalEndpoints(
        FaultyEndpoint("anthropic", name="chat"),
        FaultyEndpoint("openai", name="replica-a", model=MODEL, dimensions=32),
        FaultyEndpoint("ollama", name="replica-b", model=MODEL, dimensions=32),
    ) as fleet:
        endpoints = [ep.endpoint(priority=i, timeout=5.0) for i, ep in enumerate(fleet, 1)]
        async with Runtime(endpoints) as rt:
            indexed = await rt.embed(DOCUMENTS, model=MODEL)
            print(f"indexed {len(indexed.vectors)} documents ({len(indexed.vectors[0])} dimensions) via {indexed.endpoint}")
            index = indexed.vectors

            # The local endpoints' vectors are hashes of the text, so only an exact
            # match scores 1.0; a real model would also rank paraphrases.
            query = DOCUMENTS[1]
            doc, score, via = await search(rt, index, query)
            print(f"best match {score:.2f} via {via}: {doc}")

            fleet["replica-a"].faults.refuse()
            print("-- replica-a stops accepting connections --")
            doc2, score2, via2 = await search(rt, index, query)
            print(f"best match {score2:.2f} via {via2}: {doc2}")

        ok = via == "replica-a" and via2 == "replica-b" and doc == doc2 == query and fleet["chat"].stats.requests == 0
        print("same answer from either replica" if ok else "unexpected result")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(anyio.run(main))
