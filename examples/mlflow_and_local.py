"""One agent run, two destinations: spanmux's built-in store and MLflow, at the same time.

    .venv/bin/python examples/mlflow_and_local.py       (from the repository root)

Offline: the "LLM" is a scripted fake that reports token usage like gpt-4o-mini, so spanmux prices
it from its bundled table. MLflow data goes to ``sqlite:///.spanmux/mlflow.db`` unless
``MLFLOW_TRACKING_URI`` points at a tracking server (see examples/mlflow_agent.yaml).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # MLflow must not fetch litellm prices

import spanmux
from spanmux.backends.local import LocalStore

settings = spanmux.configure(Path(__file__).with_name("mlflow_agent.yaml"))


def fake_llm(messages: list[dict[str, str]], temperature: float = 0.2) -> str:
    """A chat model stand-in: answers from a script and reports usage like a real provider."""
    with spanmux.span("ChatOpenAI", kind="llm", input=messages) as call:
        call.set_model("gpt-4o-mini", "openai", temperature=temperature, max_tokens=256)
        question = messages[-1]["content"]
        answer = "4" if "2+2" in question else "I would need a calculator for that."
        call.set_usage(input_tokens=12 * len(messages) + len(question) // 4, output_tokens=len(answer) // 2 + 3)
        call.set_output({"role": "assistant", "content": answer})
        return answer


@spanmux.observe(kind="tool")
def calculator(expression: str) -> Any:
    """A tool: evaluates ``a+b`` (a stand-in for something real)."""
    left, _, right = expression.partition("+")
    return int(left) + int(right)


@spanmux.observe(kind="retriever", name="lookup_notes")
def lookup_notes(question: str) -> list[dict[str, Any]]:
    return [{"id": "note-1", "content": "Addition combines two numbers.", "score": 0.82}]


def tutor(question: str) -> tuple[str, str]:
    """The agent: retrieve, ask the model, maybe call the tool, answer. Returns (answer, trace id)."""
    with spanmux.span("math_tutor", kind="agent", input={"question": question}) as agent:
        notes = lookup_notes(question)
        messages = [
            {"role": "system", "content": f"Use these notes: {notes[0]['content']}"},
            {"role": "user", "content": question},
        ]
        answer = fake_llm(messages)
        if "calculator" in answer:
            expression = question.rstrip("?").split()[-1]
            answer = str(calculator(expression))
        agent.set_output(answer)
        return answer, agent.trace_id


questions = [("What is 2+2?", "A", "4"), ("What is 19+23?", "B", "42"), ("What is 7+5?", "B", "13")]
trace_ids = []
for question, variant, expected in questions:
    with spanmux.trace_context(user_id="student-7", session_id="lesson-1", tags=["demo"],
                               metadata={"variant": variant}):
        answer, trace_id = tutor(question)
    trace_ids.append(trace_id)
    # scores become MLflow feedback on the trace (and score.* metrics of the session run)
    spanmux.score(trace_id, "correct", answer == expected, comment=f"expected {expected}", source="code")
    spanmux.score(trace_id, "clarity", 0.8, source="human")
    print(f"{question} -> {answer}  (variant {variant})")

spanmux.flush(timeout=60)
print()

# The same traces in both places.
with LocalStore(settings.local.path) as store:
    local = store.list_traces(limit=50)
    print(f"built-in store {settings.local.path}: {len(local)} traces")
    for row in local[:3]:
        print(f"  {row.trace_id}  {row.name:<10} {row.total_tokens:>4} tokens  ${row.cost_total or 0:.6f}")

mlflow_section = settings.mlflow
tracking_uri = (mlflow_section.tracking_uri if mlflow_section else None) or "sqlite:///mlflow.db"
stats = spanmux.stats()["backends"]["mlflow"]
spanmux.shutdown()  # ends the MLflow session run (status FINISHED, totals, summary table)
print(f"MLflow {tracking_uri}: {stats['exported_spans']} spans, {stats['exported_scores']} scores exported,"
      f" {stats['spool_pending_batches']} batches waiting in the spool")

from mlflow.tracing.client import TracingClient  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

client = MlflowClient(tracking_uri)
experiment = client.get_experiment_by_name(mlflow_section.experiment_name if mlflow_section else "spanmux")
if experiment is not None:
    for trace_id in trace_ids:
        trace = TracingClient(tracking_uri).get_trace(f"tr-{trace_id}")
        info = trace.info
        feedback = {a.name: a.value for a in info.assessments}
        print(f"  tr-{trace_id}  {info.tags.get('mlflow.traceName')}  {len(trace.data.spans)} spans"
              f"  tokens={info.token_usage['total_tokens']}  variant={info.tags.get('variant')}  {feedback}")
    run = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    print(f"  run {run.info.run_name}: params={sorted(run.data.params)}")
    print(f"  metrics: { {k: round(v, 6) for k, v in sorted(run.data.metrics.items())} }")
if tracking_uri.startswith("sqlite:"):
    print(f"\nOpen the MLflow UI:  mlflow ui --backend-store-uri {tracking_uri} --port 5001")
else:
    print(f"\nOpen the MLflow UI:  {tracking_uri}")
