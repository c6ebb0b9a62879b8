// The span tree beside its waterfall, drawn from /traces/<id>/tree.json (compact rows in tree
// order). Only the rows in view are in the DOM (virtual list), so 10,000 spans open at once;
// collapsing a node hides its subtree. Text goes in with textContent only: never as HTML.
"use strict";
(function () {
  const box = document.getElementById("timeline");
  if (!box) return;
  const ROW = 26;
  const viewport = document.getElementById("viewport");
  const spacer = document.getElementById("spacer");
  const rowsBox = document.getElementById("rows");
  const axis = document.getElementById("time-axis");
  const status = document.getElementById("tree-status");
  const traceId = box.dataset.traceId;
  let rows = [];          // [span_id, parent_index, depth, name, kind, status, start_ms, dur_ms, child_count, model, tokens]
  let visible = [];       // indexes of rows shown (ancestors not collapsed)
  let collapsed = new Set();
  let selected = new URLSearchParams(window.location.search).get("span");
  let total = 1;
  let last = [-1, -1];

  function fmtMs(ms) {
    if (ms >= 60000) return (ms / 60000).toFixed(1) + " min";
    if (ms >= 1000) return (ms / 1000).toFixed(2) + " s";
    return ms >= 10 ? ms.toFixed(0) + " ms" : ms.toFixed(1) + " ms";
  }

  function computeVisible() {
    visible = [];
    let skipDepth = -1;
    for (let i = 0; i < rows.length; i++) {
      const depth = rows[i][2];
      if (skipDepth >= 0) {
        if (depth > skipDepth) continue;
        skipDepth = -1;
      }
      visible.push(i);
      if (collapsed.has(i)) skipDepth = depth;
    }
    spacer.style.height = visible.length * ROW + "px";
    last = [-1, -1];
  }

  function drawAxis() {
    axis.textContent = "";
    const steps = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000,
                   10000, 20000, 60000, 120000, 300000, 600000, 1800000, 3600000];
    let step = steps[steps.length - 1];
    for (const s of steps) { if (total / s <= 6) { step = s; break; } }
    for (let t = 0; t <= total + 1e-9; t += step) {
      const tick = document.createElement("span");
      tick.className = t / total > 0.92 ? "tick end" : "tick";  // a label near the end stays inside
      tick.style.left = (t / total * 100) + "%";
      tick.textContent = fmtMs(t);
      axis.appendChild(tick);
    }
  }

  function makeRow(index) {
    const r = rows[index];
    const node = document.createElement("div");
    node.className = "node kind-" + r[4] + (r[5] === "error" ? " error" : "") + (r[0] === selected ? " selected" : "");
    node.setAttribute("data-testid", "tree-node");
    node.dataset.spanId = r[0];
    node.dataset.kind = r[4];
    node.dataset.status = r[5];
    node.dataset.depth = r[2];
    node.dataset.index = index;
    if (collapsed.has(index)) node.dataset.collapsed = "1";
    node.setAttribute("role", "treeitem");
    node.setAttribute("aria-level", String(r[2] + 1));
    const cell = document.createElement("div");
    cell.className = "tree-cell";
    cell.style.paddingLeft = (4 + Math.min(r[2], 40) * 14) + "px";
    if (r[8] > 0) {
      const toggle = document.createElement("button");
      toggle.type = "button";
      toggle.className = "toggle";
      toggle.setAttribute("data-testid", "toggle");
      toggle.setAttribute("aria-expanded", collapsed.has(index) ? "false" : "true");
      toggle.textContent = collapsed.has(index) ? "▸" : "▾";
      toggle.title = (collapsed.has(index) ? "expand " : "collapse ") + r[8] + " children";
      cell.appendChild(toggle);
    } else {
      const pad = document.createElement("span");
      pad.className = "toggle-pad";
      cell.appendChild(pad);
    }
    const kind = document.createElement("span");
    kind.className = "kind kind-" + r[4];
    kind.textContent = r[4];
    cell.appendChild(kind);
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = (r[5] === "error" ? "✗ " : "") + r[3];
    name.title = r[3] + (r[9] ? " · " + r[9] : "") + (r[10] != null ? " · " + r[10] + " tokens" : "");
    cell.appendChild(name);
    if (collapsed.has(index)) {
      const hidden = document.createElement("span");
      hidden.className = "muted";
      hidden.textContent = " (+" + r[8] + ")";
      cell.appendChild(hidden);
    }
    node.appendChild(cell);
    const lane = document.createElement("div");
    lane.className = "bar-cell";
    const bar = document.createElement("div");
    bar.className = "bar kind-" + r[4] + (r[5] === "error" ? " error" : "");
    bar.setAttribute("data-testid", "bar");
    bar.dataset.spanId = r[0];
    bar.dataset.kind = r[4];
    bar.style.left = Math.min(r[6] / total * 100, 99.8) + "%";
    bar.style.width = Math.max(r[7] / total * 100, 0.2) + "%";
    bar.title = r[3] + ": " + fmtMs(r[7]) + " from +" + fmtMs(r[6]);
    lane.appendChild(bar);
    const label = document.createElement("span");
    label.className = "bar-label";
    label.textContent = fmtMs(r[7]) + (r[10] != null ? " · " + r[10] + " tok" : "");
    lane.appendChild(label);
    node.appendChild(lane);
    return node;
  }

  function draw(force) {
    const first = Math.max(0, Math.floor(viewport.scrollTop / ROW) - 10);
    const end = Math.min(visible.length, Math.ceil((viewport.scrollTop + viewport.clientHeight) / ROW) + 10);
    if (!force && first === last[0] && end === last[1]) return;
    last = [first, end];
    const frag = document.createDocumentFragment();
    for (let i = first; i < end; i++) frag.appendChild(makeRow(visible[i]));
    rowsBox.textContent = "";
    rowsBox.style.transform = "translateY(" + first * ROW + "px)";
    rowsBox.appendChild(frag);
  }

  function select(spanId, push) {
    selected = spanId;
    rowsBox.querySelectorAll(".node.selected").forEach(function (n) { n.classList.remove("selected"); });
    const node = rowsBox.querySelector('.node[data-span-id="' + CSS.escape(spanId) + '"]');
    if (node) node.classList.add("selected");
    const url = "/traces/" + encodeURIComponent(traceId) + "/spans/" + encodeURIComponent(spanId);
    if (window.htmx) window.htmx.ajax("GET", url, { target: "#span-detail", swap: "innerHTML" });
    const field = document.getElementById("feedback-span");
    if (field) field.value = spanId;
    const target = document.getElementById("feedback-target");
    if (target) target.textContent = "on span " + spanId.slice(0, 8);
    if (push) {
      const params = new URLSearchParams(window.location.search);
      params.set("span", spanId);
      window.history.pushState({ span: spanId }, "", window.location.pathname + "?" + params.toString());
    }
  }

  function scrollTo(spanId) {
    const index = rows.findIndex(function (r) { return r[0] === spanId; });
    if (index < 0) return;
    let p = rows[index][1];   // open every collapsed ancestor
    while (p >= 0) { collapsed.delete(p); p = rows[p][1]; }
    computeVisible();
    const at = visible.indexOf(index);
    if (at * ROW < viewport.scrollTop || at * ROW > viewport.scrollTop + viewport.clientHeight - ROW) {
      viewport.scrollTop = Math.max(0, at * ROW - viewport.clientHeight / 3);
    }
    draw(true);
  }

  rowsBox.addEventListener("click", function (event) {
    const node = event.target.closest(".node");
    if (!node) return;
    const index = parseInt(node.dataset.index, 10);
    if (event.target.closest(".toggle")) {
      if (collapsed.has(index)) collapsed.delete(index); else collapsed.add(index);
      computeVisible();
      draw(true);
      return;
    }
    select(node.dataset.spanId, true);
  });
  viewport.addEventListener("scroll", function () { window.requestAnimationFrame(function () { draw(false); }); });
  window.addEventListener("resize", function () { draw(true); });
  window.addEventListener("popstate", function () {
    const span = new URLSearchParams(window.location.search).get("span");
    if (span && span !== selected) { select(span, false); scrollTo(span); return; }
    if (!span && selected && rows.length) {  // back to the trace itself: its root span, scores on the trace
      select(rows[0][0], false);
      selected = null;
      rowsBox.querySelectorAll(".node.selected").forEach(function (n) { n.classList.remove("selected"); });
      const field = document.getElementById("feedback-span");
      if (field) field.value = "";
      const target = document.getElementById("feedback-target");
      if (target) target.textContent = "on the trace";
    }
  });
  document.getElementById("expand-all").addEventListener("click", function () {
    collapsed = new Set(); computeVisible(); draw(true);
  });
  document.getElementById("collapse-all").addEventListener("click", function () {
    collapsed = new Set();
    rows.forEach(function (r, i) { if (r[8] > 0 && r[1] >= 0) collapsed.add(i); });
    computeVisible(); draw(true);
  });

  fetch(box.dataset.treeUrl, { credentials: "same-origin" }).then(function (response) {
    if (!response.ok) throw new Error("HTTP " + response.status);
    return response.json();
  }).then(function (tree) {
    rows = tree.rows;
    total = Math.max((tree.end_ns - tree.start_ns) / 1e6, 0.001);
    computeVisible();
    drawAxis();
    draw(true);
    status.textContent = rows.length + " spans · " + fmtMs(total);
    box.dataset.ready = "1";
    if (selected) scrollTo(selected);
  }).catch(function (err) {
    status.textContent = "could not load the tree: " + err.message;
  });
})();
