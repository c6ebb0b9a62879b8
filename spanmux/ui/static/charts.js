// Charts of the compare, over-time and experiment compare pages, from the JSON the page carries in
// <script type="application/json" id="chart-data"> (data, never executed). Chart.js is vendored.
"use strict";
(function () {
  const holder = document.getElementById("chart-data");
  if (!holder || typeof Chart === "undefined") return;
  const data = JSON.parse(holder.textContent);
  const bar = function (label, values, stack) {
    const set = { label: label, data: values };
    if (stack) set.stack = stack;
    return set;
  };
  const configs = {
    latency: { type: "bar", datasets: [bar("p50 ms", data.p50_ms), bar("p95 ms", data.p95_ms)] },
    tokens: { type: "bar", stacked: true, datasets: [bar("input", data.input_tokens, "t"), bar("output", data.output_tokens, "t")] },
    cost: { type: "bar", money: true, datasets: [bar("mean cost USD", data.cost)] },
    errors: { type: "bar", datasets: [bar("error rate %", data.error_rate)] },
    scores: { type: "bar", datasets: Object.keys(data.scores || {}).map(function (name) { return bar(name, data.scores[name]); }) },
    traces: { type: "bar", datasets: [bar("traces", data.traces), bar("with errors", data.errors)] },
    "time-tokens": { type: "bar", stacked: true, datasets: [bar("input", data.input_tokens, "t"), bar("output", data.output_tokens, "t")] },
    "time-cost": { type: "line", money: true, datasets: [{ label: "cost USD", data: data.cost, tension: 0.2 }] },
    "experiment-means": { type: "bar", datasets: [bar(data.label_a || "A", data.mean_a), bar(data.label_b || "B", data.mean_b)] },
    "experiment-deltas": { type: "bar", datasets: [bar("B - A", data.delta)] },
  };
  document.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
    const spec = configs[canvas.dataset.chart];
    if (!spec) return;
    const chart = new Chart(canvas, {
      type: spec.type,
      data: { labels: data.labels, datasets: spec.datasets },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false,
        scales: { x: { stacked: !!spec.stacked }, y: { stacked: !!spec.stacked, beginAtZero: true } },
        plugins: { legend: { position: "bottom" } },
        ...(spec.money ? { scales: { y: { beginAtZero: true, ticks: { callback: function (v) { return "$" + Number(v).toPrecision(2); } } } } } : {}),
      },
    });
    canvas.dataset.drawn = "1";
    canvas.chart = chart;
  });
})();
