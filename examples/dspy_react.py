"""spanmux with DSPy: trace a ReAct agent with two tools into the built-in store.

    .venv/bin/python examples/dspy_react.py        (from the repository root; `make demo` runs it)

Fully offline: the answers come from DSPy's own DummyLM, scripted step by step, reporting itself
as gpt-4o-mini and returning token usage the way a provider does, so spanmux records the model,
the tokens and a price for every LM call without an API key. One callback traces every module,
LM call, adapter step and tool call.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

# DSPy keeps a disk cache (default ~/.dspy_cache); keep this demo's under .spanmux/ instead.
os.environ.setdefault("DSPY_CACHEDIR", os.path.join(".spanmux", "dspy-cache"))

import dspy
from dspy.clients.engines.dummy_engine import AsyncDummyEngine, DummyEngine
from dspy.lm15 import Usage
from dspy.utils import DummyLM

import spanmux
from spanmux.cli import explore_hint, print_recent
from spanmux.integrations.dspy import Callback

# 1. Where traces go: the observability block, here as a dict (a YAML file works the same).
settings = spanmux.configure({
    "observability": {
        "backends": ["local"],
        "local": {"path": ".spanmux/spanmux.db"},  # relative to the working directory
    }
})
started_ns = time.time_ns()


class ReportingEngine(DummyEngine):
    """DummyLM's engine, plus the token usage a provider would report (about 4 characters a token)."""

    def _complete_messages(self, messages: list[dict[str, Any]]) -> Any:
        response = super()._complete_messages(messages)
        prompt = sum(len(str(m.get("content", ""))) for m in messages) // 4
        completion = max(1, len(response.message.text or "") // 4)
        usage = Usage(input_tokens=prompt, output_tokens=completion, total_tokens=prompt + completion)
        return dataclasses.replace(response, model="gpt-4o-mini", usage=usage)


class DemoLM(DummyLM):
    """DummyLM answering as openai/gpt-4o-mini, so the price table applies to its usage."""

    def __init__(self, answers: list[dict[str, Any]]) -> None:
        super().__init__(answers)
        self.model = "openai/gpt-4o-mini"
        self._engine_spec = ReportingEngine(self)
        self._async_engine_spec = AsyncDummyEngine(self._engine_spec)


# 2. Two tools: plain functions with type hints and docstrings.
def get_weather(city: str) -> str:
    """Current weather of a city, in Celsius."""
    return f"{city}: 18 C, light rain"


def to_fahrenheit(celsius: float) -> float:
    """Convert Celsius to Fahrenheit."""
    return celsius * 9 / 5 + 32


class WeatherQA(dspy.Signature):
    """Answer weather questions with the tools."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


# The scripted LM: each ReAct step picks a tool, then the final step answers.
lm = DemoLM([
    {"next_thought": "Look up the weather.", "next_tool_name": "get_weather", "next_tool_args": {"city": "Bergen"}},
    {"next_thought": "Convert 18 C.", "next_tool_name": "to_fahrenheit", "next_tool_args": {"celsius": 18}},
    {"next_thought": "I have both.", "next_tool_name": "finish", "next_tool_args": {}},
    {"reasoning": "18 C is 64.4 F.", "answer": "Bergen has light rain at 18 C (64.4 F)."},
])

# 3. One line: spanmux's callback in DSPy's settings (or spanmux.instrument("dspy")).
dspy.configure(lm=lm, callbacks=[Callback()])
agent = dspy.ReAct(WeatherQA, tools=[get_weather, to_fahrenheit])

# trace_context adds trace-level fields; the agent's spans land in one trace.
with spanmux.trace_context(user_id="demo-user", session_id="dspy-react", tags=["demo"]):
    result = agent(question="Weather in Bergen, in Fahrenheit too?")
print("agent:", result.answer)

# 4. Spans are written by a background thread; flush before reading the store.
spanmux.flush()

# 5. Print what was recorded with the CLI (the same as `spanmux traces` and `spanmux show ID`).
store = settings.local.path
print()
print_recent(store, since_ns=started_ns)  # `spanmux traces`, then `spanmux show ID` for each

print()
print(explore_hint(str(store)))  # `.venv/bin/spanmux traces` unless the venv is activated
