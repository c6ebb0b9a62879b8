"""spanmux quick start: trace a LangChain chain and a LangGraph agent into the built-in store.

    .venv/bin/python examples/quickstart.py        (from the repository root; `make demo` runs it)

Fully offline: the chat models are LangChain's own fakes, scripted to answer like gpt-4o-mini and
to report token usage, so spanmux records models, tokens and prices without an API key.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tools import tool

import spanmux
from spanmux.cli import explore_hint, print_recent
from spanmux.integrations.langchain import CallbackHandler

# 1. One YAML block says where traces go. agent.yaml is a SuperOptiX-style playbook whose
#    `spec.observability` block selects the built-in SQLite store at ./.spanmux/spanmux.db.
settings = spanmux.configure(Path(__file__).with_name("agent.yaml"))
started_ns = time.time_ns()


def reply(text: str = "", **fields: Any) -> AIMessage:
    """A model answer carrying what a real provider reports: token usage and the model name."""
    usage = {"input_tokens": 48, "output_tokens": 12, "total_tokens": 60}
    return AIMessage(text, usage_metadata=usage, response_metadata={"model_name": "gpt-4o-mini"}, **fields)


class ScriptedChatModel(FakeMessagesListChatModel):
    """Plays its scripted answers in turn. A real model would bind the tools; this one knows its lines."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedChatModel:
        return self


# 2. A chain: prompt | chat model | parser. Tracing it is one callback in the config.
prompt = ChatPromptTemplate.from_messages([("system", "Answer in one sentence."), ("human", "{question}")])
chain = prompt | ScriptedChatModel(responses=[reply("Oslo is the capital of Norway.")]) | StrOutputParser()
print("chain:", chain.invoke({"question": "What is the capital of Norway?"}, config={"callbacks": [CallbackHandler()]}))


# 3. A LangGraph tool-calling agent with two tools.
@tool
def get_weather(city: str) -> str:
    """Current weather of a city, in Celsius."""
    return f"{city}: 18 C, light rain"


@tool
def to_fahrenheit(celsius: float) -> float:
    """Convert Celsius to Fahrenheit."""
    return celsius * 9 / 5 + 32


model = ScriptedChatModel(responses=[
    # first turn: the model asks for both tools at once (LangGraph runs them in parallel)
    reply(tool_calls=[
        {"name": "get_weather", "args": {"city": "Bergen"}, "id": "call_1", "type": "tool_call"},
        {"name": "to_fahrenheit", "args": {"celsius": 18}, "id": "call_2", "type": "tool_call"},
    ]),
    # second turn: it answers with the tool results
    reply("Bergen has light rain at 18 C (64.4 F)."),
])
agent = create_agent(model, tools=[get_weather, to_fahrenheit], system_prompt="You are a weather assistant.")

# Instead of passing callbacks to each call, attach spanmux to every LangChain/LangGraph run in the
# process (idempotent; spanmux.uninstrument() undoes it). trace_context adds trace-level fields.
spanmux.instrument("langchain")
with spanmux.trace_context(user_id="demo-user", session_id="quickstart", tags=["demo"]):
    result = agent.invoke({"messages": [("user", "Weather in Bergen, in Fahrenheit too?")]})
print("agent:", result["messages"][-1].content)

# 4. Spans are written by a background thread; flush before reading the store.
spanmux.flush()

# 5. Print what was recorded with the CLI (the same as `spanmux traces` and `spanmux show ID`).
store = settings.local.path
print()
print_recent(store, since_ns=started_ns)  # `spanmux traces`, then `spanmux show ID` for each

print()
print(explore_hint(str(store)))  # `.venv/bin/spanmux traces` unless the venv is activated
