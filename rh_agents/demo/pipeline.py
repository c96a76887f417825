"""The demo workload: an orchestrator fanning out document agents over stubbed services.

::

    orchestrator                              Agent
      parallel documents (max_workers=4)
        document [doc-N]                      Agent, one per document
          parallel chunks (max_retries=2)     transient LLM errors are retried
            stub-llm [chunk-M]                LLM: summarizes one chunk
          parallel search (breaker search-api)
            search [chunk-M]                  Tool: looks up the chunk's main keyword

Nothing here talks to a network. The LLM stub waits a realistic, seeded latency (tens
to a few hundred milliseconds of the state's clock), reports its token usage with
``record_usage`` as a handler of a real model would, and fails a share of its calls
with a transient error; the search stub goes through a seeded *outage*: the first attempts of
a seeded window of searches (``OUTAGE_CALLS`` consecutive chunks in corpus order) fail,
so the shared ``search-api`` circuit breaker trips, rejects calls during its cooldown,
then probes and closes again.

Every outcome is a pure function of the seed, the document, the chunk and the attempt:
each draw comes from a random source seeded with the invocation's address and attempt,
and the outage is a set of calls, not a moment. The stubs wait on the state's clock; on
a :class:`~rh_agents.demo.PacedClock` (as the demo runs them) the order of every event,
and so which calls meet the open breaker and the retries that follow, is a function of
the seed too: two runs with the same seed give the same summary, at any speed. On the
real clock the per-call outcomes stay the same, but the breaker's rejections depend on
timing.

Results are pydantic models declared as ``output_model``, so replayed results are
re-validated into them when a run is resumed.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

from rh_agents.core.actors import LLM, Agent, Tool, ToolSet
from rh_agents.core.errors import CircuitOpenError
from rh_agents.core.events import ExecutionEvent, ExecutionResult
from rh_agents.core.execution import ExecutionState
from rh_agents.core.usage import record_usage

__all__ = [
    "BREAKER_NAME",
    "LLM_NAME",
    "OUTAGE_CALLS",
    "STUB_MODEL",
    "ChunkPrompt",
    "ChunkSummary",
    "CorpusReport",
    "CorpusRequest",
    "DemoPipeline",
    "DocumentReport",
    "DocumentSpec",
    "ModelOverloadedError",
    "SearchHits",
    "SearchQuery",
    "SearchUnavailableError",
    "Workload",
    "make_corpus",
    "outage_window",
    "run_pipeline",
]

LLM_NAME = "stub-llm"
STUB_MODEL = "stub-llm-2026-01"
"""The model the simulated LLM reports in its (simulated) responses."""
BREAKER_NAME = "search-api"


# --------------------------------------------------------------------------- models


class ChunkPrompt(BaseModel):
    """Input of the LLM stub: one chunk of one document."""

    doc_id: str
    index: int
    text: str


class ChunkSummary(BaseModel):
    """What the LLM stub returns for a chunk."""

    doc_id: str
    index: int
    summary: str
    keywords: list[str]
    model: str = LLM_NAME


class SearchQuery(BaseModel):
    """Input of the search tool."""

    query: str
    doc_id: str
    chunk: int


class SearchHits(BaseModel):
    """What the search stub returns."""

    query: str
    hits: list[str]


class DocumentSpec(BaseModel):
    """Input of a document agent."""

    doc_id: str
    title: str
    chunks: list[str]


class DocumentReport(BaseModel):
    """What a document agent returns."""

    doc_id: str
    title: str
    summary: str
    chunks_summarized: int
    chunks_failed: int
    citations: list[str] = Field(default_factory=list)
    searches_ok: int = 0
    searches_unavailable: int = 0


class CorpusRequest(BaseModel):
    """Input of the orchestrator."""

    documents: list[DocumentSpec]


class CorpusReport(BaseModel):
    """What the orchestrator returns."""

    documents: list[DocumentReport]
    failed_documents: list[str] = Field(default_factory=list)


# ------------------------------------------------------------------------- workload


@dataclass(frozen=True)
class Workload:
    """The knobs of one demo run.

    Attributes:
        documents: documents the orchestrator fans out.
        chunks: chunks per document.
        seed: every random choice derives from it.
        speed: real seconds per simulated second, for the :class:`PacedClock` the demo
            runs on (1.0 is "realistic"; tests use a tiny value). The simulated latencies,
            delays and cooldowns do not depend on it, so neither does any outcome.
    """

    documents: int = 6
    chunks: int = 4
    seed: int = 7
    speed: float = 1.0

    @property
    def retry_delay(self) -> float:
        """First backoff delay of the chunk group's retries (simulated seconds)."""
        return 0.1

    @property
    def breaker_cooldown(self) -> float:
        """Simulated seconds the search-api breaker stays open before it probes."""
        return 1.0


_TOPICS = [
    "vector search",
    "retry budgets",
    "circuit breakers",
    "token accounting",
    "prompt caching",
    "span sampling",
    "queue backpressure",
    "schema migration",
    "rate limiting",
    "replay logs",
    "cold starts",
    "tail latency",
]
_VERBS = ["reduces", "explains", "measures", "bounds", "hides", "exposes", "shifts"]
_OBJECTS = [
    "p99 latency",
    "error budgets",
    "operator toil",
    "cost per request",
    "recovery time",
    "duplicate work",
    "cache misses",
]


def make_corpus(workload: Workload) -> CorpusRequest:
    """The documents of a run, generated from the seed (same seed, same corpus)."""
    rng = random.Random(f"corpus|{workload.seed}")
    documents = []
    for d in range(workload.documents):
        topic = rng.choice(_TOPICS)
        chunks = [
            f"{rng.choice(_TOPICS).capitalize()} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
            f"when {topic} is tuned (section {c + 1})."
            for c in range(workload.chunks)
        ]
        documents.append(
            DocumentSpec(doc_id=f"doc-{d + 1}", title=f"Notes on {topic}", chunks=chunks)
        )
    return CorpusRequest(documents=documents)


# ---------------------------------------------------------------------------- stubs


class ModelOverloadedError(RuntimeError):
    """The (simulated) model provider is overloaded; a transient error worth retrying."""


class SearchUnavailableError(ConnectionError):
    """The (simulated) search API is down."""


OUTAGE_CALLS = 6
"""How many searches (consecutive chunks in corpus order) meet the outage."""


def outage_window(workload: Workload) -> frozenset[tuple[str, int]]:
    """The ``(doc_id, chunk)`` searches whose first attempt fails (seeded)."""
    calls = [(f"doc-{d + 1}", c) for d in range(workload.documents) for c in range(workload.chunks)]
    size = min(OUTAGE_CALLS, len(calls))
    start = random.Random(f"outage|{workload.seed}").randint(0, len(calls) - size)
    return frozenset(calls[start : start + size])


@dataclass
class _Stubs:
    """Behaviour of the simulated services, derived from the seed."""

    workload: Workload
    llm_error_rate: float = 0.12
    attempts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    outage: frozenset[tuple[str, int]] = field(init=False)

    def __post_init__(self) -> None:
        self.outage = outage_window(self.workload)

    def attempt(self, address: str) -> tuple[int, random.Random]:
        """The number of this call of the handler at ``address`` (1 for the first) and
        its random source, seeded with the seed, the address and that number."""
        self.attempts[address] += 1
        number = self.attempts[address]
        return number, random.Random(f"{self.workload.seed}|{address}|{number}")

    @staticmethod
    def latency(rng: random.Random, median: float, low: float, high: float) -> float:
        """A log-normal latency in simulated seconds, clipped to [low, high]."""
        value = median * math.exp(rng.gauss(0.0, 0.6))
        return min(high, max(low, value))


_STOPWORDS = {"when", "is", "the", "section", "tuned"}


def _keywords(text: str) -> list[str]:
    words = [w.strip(".,()").lower() for w in text.split()]
    seen: list[str] = []
    for word in words:
        if len(word) > 3 and word not in _STOPWORDS and not word.isdigit() and word not in seen:
            seen.append(word)
    return seen[:3]


# ------------------------------------------------------------------------- pipeline


class DemoPipeline:
    """The actors of the demo and their handlers.

    Example::

        workload = Workload(documents=2, chunks=2, speed=0.01)
        async with PacedClock(workload.speed) as clock:
            state = ExecutionState(clock=clock)
            result = await run_pipeline(DemoPipeline(workload), state)
    """

    def __init__(self, workload: Workload) -> None:
        self.workload: Workload = workload
        self._stubs = _Stubs(workload)
        self.llm: LLM[ChunkPrompt, ChunkSummary] = LLM(
            name=LLM_NAME,
            description="Summarizes one chunk of a document (simulated model).",
            input_model=ChunkPrompt,
            output_model=ChunkSummary,
            handler=self._complete,
        )
        self.search: Tool[SearchQuery, SearchHits] = Tool(
            name="search",
            description="Looks a keyword up in the (simulated) search API.",
            input_model=SearchQuery,
            output_model=SearchHits,
            handler=self._search,
        )
        self.document: Agent[DocumentSpec, DocumentReport] = Agent(
            name="document",
            description="Summarizes a document chunk by chunk and finds citations.",
            input_model=DocumentSpec,
            output_model=DocumentReport,
            handler=self._document,
            tools=ToolSet(tools=[self.search]),
            llm=self.llm,
        )
        self.orchestrator: Agent[CorpusRequest, CorpusReport] = Agent(
            name="orchestrator",
            description="Processes a corpus of documents in parallel.",
            input_model=CorpusRequest,
            output_model=CorpusReport,
            handler=self._orchestrate,
        )

    # ---------------------------------------------------------------- stubs

    async def _complete(
        self, prompt: ChunkPrompt, extra: dict[str, Any], state: ExecutionState
    ) -> ChunkSummary:
        stubs = self._stubs
        _, rng = stubs.attempt(state.get_current_address())
        await state.clock.sleep(stubs.latency(rng, median=0.15, low=0.03, high=0.6))
        if rng.random() < stubs.llm_error_rate:
            raise ModelOverloadedError(
                "The model provider is overloaded (HTTP 529); the call can be retried."
            )
        words = prompt.text.split()
        # What a provider's response reports, through the API a real handler uses.
        record_usage(
            input_tokens=int(len(words) * 1.3) + 24,
            output_tokens=rng.randint(16, 96),
            response_model=STUB_MODEL,
            finish_reasons=["stop"],
        )
        return ChunkSummary(
            doc_id=prompt.doc_id,
            index=prompt.index,
            summary=" ".join(words[:6]) + " ...",
            keywords=_keywords(prompt.text),
        )

    async def _search(
        self, query: SearchQuery, extra: dict[str, Any], state: ExecutionState
    ) -> SearchHits:
        stubs = self._stubs
        attempt, rng = stubs.attempt(state.get_current_address())
        await state.clock.sleep(stubs.latency(rng, median=0.04, low=0.01, high=0.15))
        if attempt == 1 and (query.doc_id, query.chunk) in stubs.outage:
            raise SearchUnavailableError(
                "search-api answered HTTP 503 Service Unavailable (simulated outage)."
            )
        slug = query.query.replace(" ", "-")
        count = rng.randint(1, 3)
        return SearchHits(
            query=query.query,
            hits=[f"https://docs.example.com/{slug}#{n + 1}" for n in range(count)],
        )

    # --------------------------------------------------------------- agents

    async def _document(
        self, spec: DocumentSpec, extra: dict[str, Any], state: ExecutionState
    ) -> DocumentReport:
        w = self.workload
        prompts = [
            ChunkPrompt(doc_id=spec.doc_id, index=i, text=t) for i, t in enumerate(spec.chunks)
        ]

        async with state.parallel(
            max_workers=2,
            name="chunks",
            max_retries=2,
            retry_delay=w.retry_delay,
            rng=random.Random(f"chunks|{w.seed}|{spec.doc_id}"),
        ) as chunks:
            for prompt in prompts:
                chunks.add(self._call(self.llm, prompt, extra, state), name=f"chunk-{prompt.index}")
            chunk_results = await chunks.gather()

        summaries: list[ChunkSummary] = [
            r.result for r in chunk_results if r.ok and isinstance(r.result, ChunkSummary)
        ]
        queries = []
        for prompt, result in zip(prompts, chunk_results, strict=True):
            if result.ok and isinstance(result.result, ChunkSummary) and result.result.keywords:
                keyword = result.result.keywords[0]
            else:
                keyword = (_keywords(prompt.text) or [spec.title])[0]
            queries.append(SearchQuery(query=keyword, doc_id=spec.doc_id, chunk=prompt.index))

        async with state.parallel(
            max_workers=2,
            name="search",
            circuit_breaker=BREAKER_NAME,
            circuit_breaker_threshold=3,
            circuit_breaker_timeout=w.breaker_cooldown,
            # A call rejected by the open breaker waits out the cooldown once; outage
            # errors are not retried (the breaker is there to stop hammering the API).
            max_retries=2,
            retry_delay=1.2 * w.breaker_cooldown,
            retry_on=(CircuitOpenError,),
            rng=random.Random(f"search|{w.seed}|{spec.doc_id}"),
        ) as searches:
            for query in queries:
                searches.add(
                    self._call(self.search, query, extra, state), name=f"chunk-{query.chunk}"
                )
            search_results = await searches.gather()

        citations = [
            hit
            for r in search_results
            if r.ok and isinstance(r.result, SearchHits)
            for hit in r.result.hits
        ]
        ok_searches = sum(1 for r in search_results if r.ok)
        return DocumentReport(
            doc_id=spec.doc_id,
            title=spec.title,
            summary=" / ".join(s.summary for s in summaries) or "(no chunk could be summarized)",
            chunks_summarized=len(summaries),
            chunks_failed=len(prompts) - len(summaries),
            citations=citations,
            searches_ok=ok_searches,
            searches_unavailable=len(search_results) - ok_searches,
        )

    async def _orchestrate(
        self, request: CorpusRequest, extra: dict[str, Any], state: ExecutionState
    ) -> CorpusReport:
        async with state.parallel(max_workers=4, name="documents") as documents:
            for spec in request.documents:
                documents.add(self._call(self.document, spec, extra, state), name=spec.doc_id)
            results = await documents.gather()
        reports = [r.result for r in results if r.ok and isinstance(r.result, DocumentReport)]
        failed = [
            spec.doc_id
            for spec, r in zip(request.documents, results, strict=True)
            if not (r.ok and isinstance(r.result, DocumentReport))
        ]
        return CorpusReport(documents=reports, failed_documents=failed)

    @staticmethod
    def _call(
        actor: LLM | Tool | Agent, data: BaseModel, extra: dict[str, Any], state: ExecutionState
    ) -> Any:
        """A factory for one parallel item: a fresh ExecutionEvent call per attempt."""
        tag = _tag_of(data)

        def factory() -> Any:
            event: ExecutionEvent[Any] = ExecutionEvent(actor=actor, tag=tag)
            return event(data, extra, state)

        return factory


def _tag_of(data: BaseModel) -> str:
    if isinstance(data, ChunkPrompt):
        return f"chunk-{data.index}"
    if isinstance(data, SearchQuery):
        return f"chunk-{data.chunk}"
    if isinstance(data, DocumentSpec):
        return data.doc_id
    return ""


async def run_pipeline(
    pipeline: DemoPipeline, state: ExecutionState
) -> ExecutionResult[CorpusReport]:
    """Run the orchestrator over the workload's corpus in ``state``."""
    event: ExecutionEvent[CorpusReport] = ExecutionEvent(actor=pipeline.orchestrator)
    return await event(make_corpus(pipeline.workload), {}, state)
