// shoal console: optional enhancements. Pages work without it.
// 1. Live refresh: a <main data-refresh="N"> is fetched again every N seconds, only while the
//    tab is visible (no viewer, no request), and swapped in place.
// 2. Pull into cache: the button posts to /act/pull and draws the JSON-lines progress stream.
"use strict";
(function () {
  const main = document.getElementById("main");
  const every = main && Number(main.dataset.refresh);
  if (every > 0) {
    let busy = false;
    const tick = async () => {
      if (busy || document.visibilityState !== "visible") return;
      if (document.activeElement && document.activeElement.tagName === "INPUT") return;
      busy = true;
      try {
        const resp = await fetch(location.href, { headers: { "Accept": "text/html" }, cache: "no-store" });
        if (resp.ok) {
          const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
          const next = doc.getElementById("main");
          if (next) main.replaceChildren(...next.childNodes);
        }
      } catch (e) { /* the daemon restarts: try again next time */ }
      busy = false;
    };
    setInterval(tick, every * 1000);
    document.addEventListener("visibilitychange", tick);
  }

  const status = document.getElementById("pull-status");
  const text = document.getElementById("pull-text");
  const bar = document.getElementById("pull-progress");
  const list = document.getElementById("pull-blobs");
  const human = (n) => {
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + u[i];
  };
  document.addEventListener("click", async (ev) => {
    const btn = ev.target.closest(".pull-btn");
    if (!btn || !status) return;
    ev.preventDefault();
    const form = btn.closest("form");
    const body = new URLSearchParams({ image: btn.dataset.image, platform: form.elements.platform.value });
    status.hidden = false;
    list.replaceChildren();
    text.textContent = "Pulling " + btn.dataset.image + " …";
    bar.value = 0;
    const blobs = new Map();
    const draw = () => {
      let size = 0, done = 0;
      for (const b of blobs.values()) { size += b.size || 0; done += b.done || 0; }
      bar.max = Math.max(size, 1);
      bar.value = done;
      return [done, size];
    };
    const row = (ev) => {
      let b = blobs.get(ev.digest);
      if (!b) {
        b = { li: document.createElement("li"), size: ev.size, done: 0 };
        list.append(b.li);
        blobs.set(ev.digest, b);
      }
      if (ev.size) b.size = ev.size;
      if (ev.state === "done") b.done = b.size;
      else if (ev.done) b.done = ev.done;
      b.li.textContent = (ev.kind || "blob") + " " + ev.digest.slice(0, 19) + ": " + ev.state +
        (ev.source ? " from " + ev.source : "") + (ev.error ? " — " + ev.error : "") +
        (b.size ? " (" + human(b.done) + " of " + human(b.size) + ")" : "");
    };
    try {
      const resp = await fetch("/act/pull", { method: "POST", body });
      if (!resp.ok) throw new Error(await resp.text());
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          if (!line) continue;
          const e = JSON.parse(line);
          if (e.type === "blob") { row(e); const [d, s] = draw(); text.textContent = "Pulling " + btn.dataset.image + ": " + human(d) + " of " + human(s); }
          if (e.type === "done") {
            draw();
            status.classList.toggle("failed", e.errors > 0);
            text.textContent = e.errors > 0
              ? "Pull of " + btn.dataset.image + " failed: " + (e.error || e.errors + " errors")
              : "Pulled " + btn.dataset.image + " into the cache: " + e.blobs + " blobs, " + human(e.bytes || 0) + ".";
          }
        }
      }
    } catch (e) {
      status.classList.add("failed");
      text.textContent = "Pull failed: " + e.message;
    }
  });
})();
