
(() => {
  "use strict";
  const $ = (sel) => document.querySelector(sel);
  let filter = "";

  function applyFilter() {
    const input = $("#tenant-filter");
    if (input && input.value !== filter) input.value = filter;
    const q = filter.trim().toLowerCase();
    let shown = 0;
    for (const row of document.querySelectorAll("#tenants tbody tr[data-tenant]")) {
      const hit = !q || row.dataset.tenant.toLowerCase().includes(q);
      row.hidden = !hit;
      if (hit) shown += 1;
    }
    const count = $("#filter-count");
    if (count) count.textContent = q ? shown + " shown" : "";
  }

  document.addEventListener("input", (e) => {
    if (e.target && e.target.id === "tenant-filter") {
      filter = e.target.value;
      applyFilter();
    }
  });

  if (document.body.dataset.live !== "1") return;

  let token = "";
  const eventsNeedToken = document.body.dataset.eventsToken === "1";
  const say = (msg, cls) => {
    const el = $("#action-status");
    el.textContent = msg;
    el.className = "status " + (cls || "");
  };
  const setLive = (up, why) => {
    const el = $("#live-state");
    el.className = up ? "live" : "live down";
    el.lastElementChild.textContent = up ? "live" : (why || "reconnecting");
  };

  // Actions that need a token are disabled (and aria-disabled) until one is set.
  function applyToken() {
    for (const btn of document.querySelectorAll("button[data-needs-token]")) {
      btn.disabled = !token;
      btn.setAttribute("aria-disabled", token ? "false" : "true");
      btn.title = token ? "" : "needs a token";
    }
  }
  applyToken();

  async function refresh() {
    const res = await fetch("fragment", { cache: "no-store", credentials: "omit" });
    if (!res.ok) return;
    const doc = new DOMParser().parseFromString(await res.text(), "text/html");
    const fresh = doc.getElementById("content");
    const current = $("#content");
    if (!fresh || !current) return;
    current.replaceWith(fresh);
    applyFilter();
    applyToken();
    $("#live-stamp").textContent = "updated " + new Date().toLocaleTimeString();
  }

  let busy = false;
  let again = false;
  async function schedule() {
    if (busy) { again = true; return; }
    busy = true;
    try { await refresh(); } catch (err) { setLive(false); }
    busy = false;
    if (again) { again = false; schedule(); }
  }

  function onUpdate(data) {
    let version = "";
    try { version = JSON.parse(data).version; } catch (err) { version = ""; }
    const current = $("#content");
    if (version && current && current.dataset.version === version) return;
    schedule();
  }

  // Server-sent events read with fetch (not EventSource), so that the stream can carry the
  // bearer token: a console that is not bound to loopback only serves /events with one.
  let stream = null;
  let retryTimer = 0;
  let backoff = 1000;
  async function follow() {
    clearTimeout(retryTimer);
    if (stream) stream.abort();
    stream = null;
    if (eventsNeedToken && !token) { setLive(false, "live updates need a token"); return; }
    const ctl = new AbortController();
    stream = ctl;
    const headers = {};
    if (token) headers["Authorization"] = "Bearer " + token;
    try {
      const res = await fetch("events", {
        headers, cache: "no-store", credentials: "omit", signal: ctl.signal,
      });
      if (!res.ok || !res.body) throw new Error("events: " + res.status);
      setLive(true);
      backoff = 1000;
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let end;
        while ((end = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          let name = "message";
          let data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) name = line.slice(6).trim();
            else if (line.startsWith("data:")) data += line.slice(5).trim();
          }
          if (name === "update") onUpdate(data);
        }
      }
    } catch (err) {
      if (ctl.signal.aborted) return;
      backoff = Math.min(backoff * 2, 30000);
    }
    if (stream !== ctl) return;
    stream = null;
    setLive(false);
    retryTimer = setTimeout(follow, backoff);
  }
  follow();

  $("#token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("#token");
    token = input.value.trim();
    input.value = "";
    $("#token-state").textContent = token ? "token set (this tab, in memory)" : "read-only";
    say(token ? "token set" : "token cleared");
    applyToken();
    if (eventsNeedToken) follow();
  });

  async function post(path, payload, done) {
    const headers = { "Content-Type": "application/json" };
    if (token) headers["Authorization"] = "Bearer " + token;
    let res;
    try {
      res = await fetch(path, {
        method: "POST", headers, body: JSON.stringify(payload || {}),
        credentials: "omit", cache: "no-store",
      });
    } catch (err) {
      say("request failed: " + err, "bad");
      return;
    }
    let body = {};
    try { body = await res.json(); } catch (err) { body = {}; }
    if (res.ok) say(done(body), "ok");
    else say(res.status + " " + (body.code || "") + ": " + (body.error || res.statusText), "bad");
    schedule();
  }

  async function verify() {
    say("verifying the whole audit log…");
    try {
      const res = await fetch("api/audit/verify", { cache: "no-store", credentials: "omit" });
      const body = await res.json();
      if (res.ok && body.ok) say("audit log verified: " + body.entries + " entries", "ok");
      else say("verification failed: " + (body.code || res.status) + ": " + (body.error || ""),
        "bad");
    } catch (err) {
      say("request failed: " + err, "bad");
    }
    schedule();
  }

  document.addEventListener("click", (e) => {
    const btn = e.target.closest("button[data-action]");
    if (!btn || btn.disabled) return;
    const action = btn.dataset.action;
    const tenant = btn.dataset.tenant || "";
    const reason = $("#reason").value.trim();
    const path = "api/tenants/" + encodeURIComponent(tenant) + "/";
    if (action === "cordon") {
      post(path + "cordon", { reason: reason || "cordoned from the Night Core console" },
        () => "cordoned " + tenant);
    } else if (action === "uncordon") {
      post(path + "uncordon", { reason }, () => "uncordoned " + tenant);
    } else if (action === "run") {
      say("running tenants…");
      post("api/run", {}, (b) => "run finished: " + (b.runs || []).length + " tenant(s)");
    } else if (action === "checkpoint") {
      post("api/checkpoint", {}, (b) => "checkpoint signed at size " + (b.checkpoint || {}).size);
    } else if (action === "verify") {
      verify();
    }
  });
})();
