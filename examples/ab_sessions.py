"""Two variants of a weather assistant, A and B, each holding a three-turn conversation (one session per
variant), with the user's thumbs on every answer: what `spanmux ui` shows on its Sessions and Compare
pages (and `spanmux stats --by variant` in a terminal). Offline: a scripted LangGraph chat model.

Run with `make demo`, or `python examples/ab_sessions.py`; it writes to .spanmux/spanmux.db.
"""

from __future__ import annotations

import time
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.tools import tool

import spanmux
from spanmux.cli import explore_hint

settings = spanmux.configure({
    "observability": {
        "backends": ["local"],
        "local": {"path": ".spanmux/spanmux.db"},  # relative to the working directory
    }
})
spanmux.instrument("langchain")


class ScriptedChatModel(FakeMessagesListChatModel):
    """Plays its scripted answers in turn; a real model would bind the tools."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedChatModel:
        return self


@tool
def get_weather(city: str) -> str:
    """Current weather of a city, in Celsius."""
    time.sleep(0.02)  # a real lookup takes a moment: it shows on the waterfall
    return f"{city}: 18 C, light rain"


def reply(text: str, model: str, tokens: tuple[int, int], **fields: Any) -> AIMessage:
    usage = {"input_tokens": tokens[0], "output_tokens": tokens[1], "total_tokens": sum(tokens)}
    return AIMessage(text, usage_metadata=usage, response_metadata={"model_name": model}, **fields)


QUESTIONS = ["Weather in Bergen?", "Do I need an umbrella?", "And tomorrow morning?"]
VARIANTS = {
    # A: a small model, short answers; B: a bigger model that writes more
    "A": ("gpt-4o-mini", (60, 14), ["Bergen: 18 C and light rain.", "Yes, take one.", "I only know today's weather."]),
    "B": ("gpt-4o", (75, 40), ["In Bergen it is 18 C with light rain right now.",
                               "Yes: light rain is expected, so an umbrella is a good idea.",
                               "I cannot see forecasts, only the current weather; check again in the morning."]),
}
THUMBS = {"A": [True, True, False], "B": [True, True, True]}

for variant, (model_name, tokens, answers) in VARIANTS.items():
    history: list[BaseMessage | tuple[str, str]] = []
    for turn, (question, answer) in enumerate(zip(QUESTIONS, answers, strict=True)):
        script = [reply(answer, model_name, tokens)]
        if turn == 0:  # the first turn looks the weather up
            call = {"name": "get_weather", "args": {"city": "Bergen"}, "id": f"call_{variant}", "type": "tool_call"}
            script.insert(0, reply("", model_name, tokens, tool_calls=[call]))
        agent = create_agent(ScriptedChatModel(responses=script), tools=[get_weather],
                             system_prompt="You are a weather assistant.")
        with spanmux.trace_context(name="weather assistant", user_id=f"user-{variant.lower()}",
                                   session_id=f"weather-{variant}", tags=["demo", "ab"], metadata={"variant": variant}):
            result = agent.invoke({"messages": [*history, ("user", question)]})
        history = result["messages"]
        print(f"variant {variant}, turn {turn + 1}: {history[-1].content}")

spanmux.flush()

# The user's thumbs, one per answer: scores on the traces (they reach every configured backend).
from spanmux.store import LocalStore  # noqa: E402

with LocalStore(settings.local.path) as db:
    for variant in VARIANTS:
        turns = list(db.iter_traces(session_id=f"weather-{variant}"))[-len(QUESTIONS):]
        for summary, thumb in zip(turns, THUMBS[variant], strict=True):
            spanmux.score(summary.trace_id, "user_feedback", thumb, source="human")
spanmux.flush()

print()
print(explore_hint(str(settings.local.path)))
print("Sessions and the A/B comparison:  spanmux stats --by variant, or the Sessions and Compare pages of spanmux ui")
