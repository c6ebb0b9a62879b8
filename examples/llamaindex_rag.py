"""spanmux with LlamaIndex: trace a small RAG program into the built-in store.

    .venv/bin/python examples/llamaindex_rag.py    (from the repository root; `make demo` runs it)

Fully offline: embeddings come from LlamaIndex's MockEmbedding and answers from a MockLLM that
reports itself as gpt-4o-mini, so spanmux records a model, (estimated) tokens and a price without
an API key. One `instrument()` call traces every LlamaIndex component of the process.
"""

from __future__ import annotations

import time

from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.llms.types import LLMMetadata
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM

import spanmux
from spanmux.cli import explore_hint, print_recent
from spanmux.integrations.llamaindex import instrument

# 1. Where traces go: the observability block, here as a dict (a YAML file works the same).
settings = spanmux.configure({
    "observability": {
        "backends": ["local"],
        "local": {"path": ".spanmux/spanmux.db"},  # relative to the working directory
    }
})
started_ns = time.time_ns()

# 2. One line: a span handler and an event handler on LlamaIndex's root dispatcher.
instrument()


class DemoLLM(MockLLM):
    """LlamaIndex's MockLLM, answering under a real model name so the price table applies."""

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(num_output=self.max_tokens or -1, model_name="gpt-4o-mini")


documents = [
    Document(text="Bergen is the rainiest city in Norway, with about 230 days of rain a year.", id_="bergen"),
    Document(text="Oslo is the capital of Norway and lies at the end of the Oslofjord.", id_="oslo"),
    Document(text="Tromso is known for the northern lights and the midnight sun.", id_="tromso"),
    Document(text="Stavanger is the centre of Norway's oil industry.", id_="stavanger"),
]

# 3. A RAG pipeline under one manual span: LlamaIndex's own spans (splitting, embedding, the query
#    engine's retrieval and synthesis, the LLM calls) nest under it, in one trace.
with spanmux.trace_context(user_id="demo-user", session_id="llamaindex-rag", tags=["demo"]), \
        spanmux.span("norway-guide", kind="chain", input={"question": "Which city is the rainiest?"}) as root:
    index = VectorStoreIndex.from_documents(documents, embed_model=MockEmbedding(embed_dim=16))
    engine = index.as_query_engine(llm=DemoLLM(max_tokens=12), similarity_top_k=2)
    answer = engine.query("Which city in Norway is the rainiest?")
    root.set_output(str(answer))
print("answer:", answer)

# 4. A streaming query: its LLM span stays open until the last token and records time to first token.
streaming = index.as_query_engine(llm=DemoLLM(max_tokens=8), similarity_top_k=1, streaming=True)
print("streamed:", "".join(streaming.query("Where can I see the northern lights?").response_gen))

# 5. Spans are written by a background thread; flush before reading the store.
spanmux.flush()

# 6. Print what was recorded with the CLI (the same as `spanmux traces` and `spanmux show ID`).
store = settings.local.path
print()
print_recent(store, since_ns=started_ns)  # `spanmux traces`, then `spanmux show ID` for each

print()
print(explore_hint(str(store)))  # `.venv/bin/spanmux traces` unless the venv is activated
