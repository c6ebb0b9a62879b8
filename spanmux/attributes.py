"""Attribute keys spanmux writes into ``Span.attributes`` and that backends map.

OpenTelemetry GenAI names (``gen_ai.*``) and OpenInference names are used where they exist, so
mapping to MLflow, Langfuse and OTLP is a table lookup. The conventions are still marked
"Development" upstream, hence the strings live here, once.
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
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
"""Prompt tokens (OTel GenAI)."""
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
"""Completion tokens (OTel GenAI)."""
GEN_AI_TOOL_NAME: Final = "gen_ai.tool.name"
"""Name of the tool executed (OTel GenAI)."""
GEN_AI_TOOL_CALL_ID: Final = "gen_ai.tool.call.id"
"""Provider's id of the tool call (OTel GenAI)."""

OPENINFERENCE_SPAN_KIND: Final = "openinference.span.kind"
"""CHAIN, LLM, TOOL, RETRIEVER, EMBEDDING, AGENT, RERANKER, GUARDRAIL, EVALUATOR."""

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
"""Documents returned by a retriever: list of {id, score, content, metadata}."""
STREAMING: Final = "llm.streaming"
"""True when the model call streamed its output."""
TIME_TO_FIRST_TOKEN_MS: Final = "llm.time_to_first_token_ms"
"""Milliseconds from call start to the first streamed token."""
LANGGRAPH_NODE: Final = "langgraph.node"
"""LangGraph node that ran this span."""
RUN_ID: Final = "langchain.run_id"
"""Original LangChain run id (UUID) of the span."""
FRAMEWORK_EVENT: Final = "event"
"""Custom events recorded on a span: list of {name, time_ns, data}."""

OPENINFERENCE_KIND_BY_SPAN_KIND: Final[dict[str, str]] = {
    "agent": "AGENT",
    "chain": "CHAIN",
    "llm": "LLM",
    "embedding": "EMBEDDING",
    "retriever": "RETRIEVER",
    "reranker": "RERANKER",
    "tool": "TOOL",
    "parser": "CHAIN",
    "evaluator": "EVALUATOR",
    "guardrail": "GUARDRAIL",
    "span": "CHAIN",
}
