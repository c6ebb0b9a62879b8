// spanmux UI: the token header on htmx requests and live rows on the traces list. No inline script
// anywhere (the Content-Security-Policy forbids it); this file is served by the app itself.
"use strict";
(function () {
  const tokenMeta = document.querySelector('meta[name="spanmux-token"]');
  const token = tokenMeta ? tokenMeta.content : "";
  document.addEventListener("htmx:configRequest", function (event) {
    event.detail.headers["X-Spanmux-Token"] = token;
  });

  // A refused or failed htmx request (403 without the token, a server error) says so where its answer
  // would have gone, instead of nothing happening.
  document.addEventListener("htmx:responseError", function (event) {
    const target = event.detail.target;
    if (!target) return;
    const note = document.createElement("p");
    note.className = "problem";
    note.setAttribute("data-testid", "request-error");
    note.textContent = "The server refused this (" + event.detail.xhr.status + "): " +
      (event.detail.xhr.responseText || "").slice(0, 200);
    target.prepend(note);
  });

  // Back/forward: the browser may put back what was typed in a form; the page's URL is the state,
  // and the server wrote it into the fields' default values, so show those.
  window.addEventListener("pageshow", function () {
    document.querySelectorAll("form.filters").forEach(function (form) { form.reset(); });
  });

  // Live: ask for traces that arrived after the newest one shown, with the page's own filters,
  // and put them on top without moving what the reader is looking at.
  const live = document.querySelector("[data-live-url]");
  if (live) {
    let after = live.dataset.afterSeq || "0";
    const every = Math.max(500, parseInt(live.dataset.pollMs || "2000", 10));
    let busy = false;
    const poll = async function () {
      if (busy || document.hidden) return;
      busy = true;
      try {
        const base = live.dataset.liveUrl;
        const url = base + (base.indexOf("?") >= 0 ? "&" : "?") + "after_seq=" + encodeURIComponent(after);
        const response = await fetch(url, { headers: { "HX-Request": "true" }, credentials: "same-origin" });
        if (!response.ok) return;
        const seq = response.headers.get("X-Spanmux-Seq");
        const html = (await response.text()).trim();
        if (seq) after = seq;
        if (html) {
          const body = document.getElementById("trace-rows");
          const height = document.documentElement.scrollHeight;
          body.insertAdjacentHTML("afterbegin", html);
          if (window.scrollY > 0) window.scrollBy(0, document.documentElement.scrollHeight - height);
          const empty = document.querySelector('[data-testid="no-traces"]');
          if (empty) empty.remove();
          live.textContent = "live: new traces appear at the top (last at " + new Date().toLocaleTimeString() + ")";
        }
      } catch (err) {
        live.textContent = "live: the server does not answer";
      } finally {
        busy = false;
      }
    };
    window.setInterval(poll, every);
  }
})();
