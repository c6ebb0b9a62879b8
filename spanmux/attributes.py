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

# ---------------------------------------------------------------- written by the otlp/phoenix backends
# OpenTelemetry GenAI (semantic-conventions-genai, "Development"): keys beyond the ones above.
GEN_AI_CONVERSATION_ID: Final = "gen_ai.conversation.id"
GEN_AI_AGENT_NAME: Final = "gen_ai.agent.name"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
"""Includes cached tokens (OTel GenAI)."""
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
"""Includes reasoning tokens (OTel GenAI)."""
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: Final = "gen_ai.usage.cache_creation.input_tokens"
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: Final = "gen_ai.usage.reasoning.output_tokens"
GEN_AI_REQUEST_PARAMETERS: Final[dict[str, str]] = {
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "top_k": "gen_ai.request.top_k",
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "max_output_tokens": "gen_ai.request.max_tokens",
    "num_output": "gen_ai.request.max_tokens",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "stop": "gen_ai.request.stop_sequences",
    "seed": "gen_ai.request.seed",
}
"""Model parameter name (as integrations record them) -> GenAI request attribute."""
GEN_AI_EVALUATION_RESULT: Final = "gen_ai.evaluation.result"
"""Span event name of a score (OTel GenAI evaluation event)."""
GEN_AI_EVALUATION_NAME: Final = "gen_ai.evaluation.name"
GEN_AI_EVALUATION_SCORE_VALUE: Final = "gen_ai.evaluation.score.value"
GEN_AI_EVALUATION_SCORE_LABEL: Final = "gen_ai.evaluation.score.label"
GEN_AI_EVALUATION_EXPLANATION: Final = "gen_ai.evaluation.explanation"
ERROR_TYPE: Final = "error.type"
"""Class of the error of a failed span (OTel, stable)."""

# OpenInference (openinference-semantic-conventions): what Phoenix and Arize render.
OPENINFERENCE_SPAN_KIND: Final = "openinference.span.kind"
OPENINFERENCE_PROJECT_NAME: Final = "openinference.project.name"
"""Resource attribute choosing the Phoenix project."""
LLM_MODEL_NAME: Final = "llm.model_name"
LLM_PROVIDER: Final = "llm.provider"
LLM_INVOCATION_PARAMETERS: Final = "llm.invocation_parameters"
LLM_TOKEN_COUNT_PROMPT: Final = "llm.token_count.prompt"
LLM_TOKEN_COUNT_COMPLETION: Final = "llm.token_count.completion"
LLM_TOKEN_COUNT_TOTAL: Final = "llm.token_count.total"
LLM_TOKEN_COUNT_CACHE_READ: Final = "llm.token_count.prompt_details.cache_read"
LLM_TOKEN_COUNT_CACHE_WRITE: Final = "llm.token_count.prompt_details.cache_write"
LLM_TOKEN_COUNT_REASONING: Final = "llm.token_count.completion_details.reasoning"
LLM_COST_PROMPT: Final = "llm.cost.prompt"
LLM_COST_COMPLETION: Final = "llm.cost.completion"
LLM_COST_TOTAL: Final = "llm.cost.total"
EMBEDDING_MODEL_NAME: Final = "embedding.model_name"
INPUT_MIME_TYPE: Final = "input.mime_type"
OUTPUT_MIME_TYPE: Final = "output.mime_type"
MESSAGE_ROLE: Final = "message.role"
"""Under ``llm.input_messages.{i}.`` / ``llm.output_messages.{i}.`` (OpenInference)."""
MESSAGE_CONTENT: Final = "message.content"
MESSAGE_TOOL_CALLS: Final = "message.tool_calls"
MESSAGE_TOOL_CALL_ID: Final = "message.tool_call_id"
TOOL_CALL_ID: Final = "tool_call.id"
"""Under ``message.tool_calls.{j}.`` (OpenInference)."""
TOOL_CALL_FUNCTION_NAME: Final = "tool_call.function.name"
TOOL_CALL_FUNCTION_ARGUMENTS: Final = "tool_call.function.arguments"
DOCUMENT_ID: Final = "document.id"
"""Under ``retrieval.documents.{i}.`` (OpenInference)."""
DOCUMENT_CONTENT: Final = "document.content"
DOCUMENT_SCORE: Final = "document.score"
DOCUMENT_METADATA: Final = "document.metadata"
TOOL_NAME: Final = "tool.name"
TOOL_ID: Final = "tool.id"
TAG_TAGS: Final = "tag.tags"
GRAPH_NODE_ID: Final = "graph.node.id"

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

EXPERIMENT_NAME: Final = "spanmux.experiment"
"""Trace metadata of an experiment item's trace: the experiment's name (``spanmux.evaluate``)."""
EXPERIMENT_RUN_ID: Final = "spanmux.experiment.run_id"
"""Trace metadata: the experiment run the item belongs to."""
EXPERIMENT_DATASET: Final = "spanmux.experiment.dataset"
"""Trace metadata: the dataset name of the experiment, when it has one."""
EXPERIMENT_ITEM_ID: Final = "spanmux.experiment.item_id"
"""Trace metadata: the dataset item's id (stable across runs: what comparisons join on)."""
