"""Attribute keys spanmux writes into ``Span.attributes`` and that backends map: the one vocabulary.

OpenTelemetry GenAI names (``gen_ai.*``) and OpenInference names are used where they exist, so
mapping to MLflow, Langfuse and OTLP is a table lookup. The conventions are still marked
"Development" upstream, hence the strings live here, once; a key nothing writes or reads is not
kept. Span kinds are ``spanmux.model.SpanKind``.
"""

from typing import Final

GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
"""chat, text_completion, embeddings, retrieval, execute_tool, invoke_agent (OTel GenAI)."""
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
"""The model provider, e.g. ``openai`` (OTel GenAI)."""
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
"""Model name requested by the caller (OTel GenAI)."""
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
"""Model name reported in the response (OTel GenAI)."""
GEN_AI_TOOL_NAME: Final = "gen_ai.tool.name"
"""Name of the tool executed (OTel GenAI)."""
GEN_AI_TOOL_CALL_ID: Final = "gen_ai.tool.call.id"
"""Provider's id of the tool call (OTel GenAI)."""
GEN_AI_INPUT_MESSAGES: Final = "gen_ai.input.messages"
"""Content: the chat history sent to the model, for callers who set it (OTel GenAI)."""
GEN_AI_OUTPUT_MESSAGES: Final = "gen_ai.output.messages"
"""Content: the messages the model returned (OTel GenAI)."""
GEN_AI_SYSTEM_INSTRUCTIONS: Final = "gen_ai.system_instructions"
"""Content: the system prompt (OTel GenAI)."""
GEN_AI_TOOL_CALL_ARGUMENTS: Final = "gen_ai.tool.call.arguments"
"""Content: the arguments a tool was called with (OTel GenAI)."""
GEN_AI_TOOL_CALL_RESULT: Final = "gen_ai.tool.call.result"
"""Content: what a tool returned (OTel GenAI)."""

INPUT_VALUE: Final = "input.value"
"""Content: a span's input, OpenInference's name (for attributes copied from OpenInference code)."""
OUTPUT_VALUE: Final = "output.value"
"""Content: a span's output (OpenInference)."""
LLM_INPUT_MESSAGES: Final = "llm.input_messages"
"""Content: prompt messages, OpenInference's name (also flattened as ``llm.input_messages.0...``)."""
LLM_OUTPUT_MESSAGES: Final = "llm.output_messages"
"""Content: completion messages (OpenInference)."""

SESSION_ID: Final = "session.id"
"""Conversation/session the trace belongs to (OpenInference, Langfuse, MLflow)."""
USER_ID: Final = "user.id"
"""End user of the agent (OpenInference, Langfuse, MLflow)."""
TAGS: Final = "tags"
"""Framework tags of a span (LangChain run tags, DSPy module tags)."""
METADATA: Final = "metadata"
"""Free metadata dict handed to the framework for this span."""
VARIANT: Final = "variant"
"""A/B variant key, conventionally set via ``trace_context(metadata={"variant": ...})``."""
PROMPT_NAME: Final = "prompt.name"
"""Name of a managed prompt used by a generation (links to Langfuse prompts)."""
PROMPT_VERSION: Final = "prompt.version"
"""Version of that prompt."""
RETRIEVAL_DOCUMENTS: Final = "retrieval.documents"
"""Content: documents returned by a retriever or reranker: list of {id, score, content, metadata}."""
STREAMING: Final = "llm.streaming"
"""True when the model call streamed its output."""
TIME_TO_FIRST_TOKEN_MS: Final = "llm.time_to_first_token_ms"
"""Milliseconds from call start to the first streamed token."""
LANGGRAPH_NODE: Final = "langgraph.node"
"""LangGraph node that ran this span."""
RUN_ID: Final = "langchain.run_id"
"""Original LangChain run id (UUID) of the span."""
FRAMEWORK_EVENT: Final = "event"
"""Custom events recorded on a span: list of {name, time_ns, data}. Content: ``data`` holds tool
inputs (LangChain agent actions), agent logs and custom event payloads."""
DELEGATES: Final = "spanmux.delegates"
"""True on an llm/embedding span that only wraps another one of its kind (LlamaIndex ``predict``
over ``complete``, ``achat`` over ``chat``): it is not a model call, so it carries no usage and no
cost and is not counted as an LLM call (see ``spanmux.usage.is_model_call``)."""

CONTENT_ATTRIBUTES: Final[frozenset[str]] = frozenset({
    RETRIEVAL_DOCUMENTS, FRAMEWORK_EVENT, GEN_AI_INPUT_MESSAGES, GEN_AI_OUTPUT_MESSAGES,
    GEN_AI_SYSTEM_INSTRUCTIONS, GEN_AI_TOOL_CALL_ARGUMENTS, GEN_AI_TOOL_CALL_RESULT, INPUT_VALUE,
    OUTPUT_VALUE, LLM_INPUT_MESSAGES, LLM_OUTPUT_MESSAGES,
})
"""Every key above marked "Content": prompts, messages, documents, tool arguments and results.
``capture_content: false`` removes them (and their flattened ``<key>.<...>`` forms) on the worker,
before any backend sees the span; ``event`` keeps each event's name and time, not its data."""


def is_content_key(key: str) -> bool:
    """Whether an attribute key holds content (itself or flattened under a content key)."""
    if key in CONTENT_ATTRIBUTES:
        return True
    head = key
    while "." in head:
        head = head.rsplit(".", 1)[0]
        if head in CONTENT_ATTRIBUTES:
            return True
    return False
