"""The report's one stylesheet and one script, and the CSP that pins them by hash.

They are Python constants (not package data files) so that they ship with any install of the
package. The Content-Security-Policy allows exactly these bytes: ``script-src 'sha256-…'`` and
``style-src 'sha256-…'``; no other script, style, connection, frame, form or base URL.
"""

from __future__ import annotations

import base64
import hashlib

CSS = """
:root {
  --bg: #0b1020; --panel: #111a2e; --panel2: #16213a; --border: #233153;
  --text: #e6eaf3; --muted: #8d9ab8; --accent: #7aa7ff;
  --ok: #22c55e; --bad: #ef4444; --warn: #f59e0b; --grey: #64748b;
}
* { box-sizing: border-box; }
html { background: var(--bg); }
body {
  margin: 0; background: var(--bg); color: var(--text);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", sans-serif;
}
a { color: var(--accent); }
.mono, code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.mono { font-size: 12px; }
.muted { color: var(--muted); }
.small { font-size: 12px; }
header.top {
  display: flex; flex-wrap: wrap; align-items: center; gap: 10px 28px;
  padding: 16px 28px; border-bottom: 1px solid var(--border);
  background: linear-gradient(180deg, #121c34 0%, #0d1426 100%);
}
.brand { display: flex; align-items: center; gap: 10px; font-size: 19px; font-weight: 700; }
.brand svg { width: 26px; height: 26px; }
.brand small { font-weight: 500; color: var(--muted); font-size: 13px; }
.ident { display: flex; flex-wrap: wrap; gap: 6px 18px; font-size: 12.5px; color: var(--muted); }
.ident b { color: var(--text); font-weight: 600; }
.chip {
  display: inline-block; padding: 1px 8px; border: 1px solid var(--border); border-radius: 999px;
  background: #0e1630; color: var(--text); font-size: 12px;
}
.spacer { flex: 1; }
main { padding: 18px 28px 36px; max-width: 1560px; margin: 0 auto; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(180px, 1fr)); gap: 14px; }
.card {
  background: var(--panel); border: 1px solid var(--border); border-radius: 10px;
  padding: 12px 16px;
}
.card .k { color: var(--muted); font-size: 11.5px; text-transform: uppercase;
  letter-spacing: .07em; }
.card .v { font-size: 25px; font-weight: 680; margin-top: 2px; }
.card .s { color: var(--muted); font-size: 12px; margin-top: 2px; }
.card.ok { border-top: 3px solid var(--ok); }
.card.bad { border-top: 3px solid var(--bad); }
.card.warn { border-top: 3px solid var(--warn); }
section.panel {
  background: var(--panel); border: 1px solid var(--border); border-radius: 10px;
  margin-top: 18px; padding: 14px 16px 16px;
}
section.panel > h2 {
  display: flex; align-items: baseline; gap: 12px; margin: 0 0 12px;
  font-size: 15px; font-weight: 650;
}
section.panel > h2 .muted { font-size: 12.5px; font-weight: 400; }
h3 { font-size: 13px; margin: 14px 0 8px; color: var(--muted); font-weight: 600;
  text-transform: uppercase; letter-spacing: .06em; }
.grid2 { display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr)); gap: 18px; }
.grid3 { display: grid; grid-template-columns: repeat(auto-fit, minmax(360px, 1fr)); gap: 18px; }
.scroll { overflow-x: auto; }
table { width: 100%; border-collapse: collapse; font-size: 13px; }
th {
  text-align: left; color: var(--muted); font-weight: 600; font-size: 11px;
  text-transform: uppercase; letter-spacing: .06em; padding: 7px 8px;
  border-bottom: 1px solid var(--border); white-space: nowrap;
}
td { padding: 7px 8px; border-bottom: 1px solid #1b2743; vertical-align: top; }
tbody tr:hover td { background: var(--panel2); }
tr.attention td:first-child { box-shadow: inset 3px 0 0 var(--bad); }
tr.cordoned td:first-child { box-shadow: inset 3px 0 0 var(--warn); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.tname { font-weight: 600; word-break: break-all; }
.desc { color: var(--muted); font-size: 12px; margin-top: 2px; max-width: 260px; }
.reason { color: var(--muted); font-size: 12px; margin-top: 3px; max-width: 280px;
  word-break: break-word; }
td.ellipsis { max-width: 0; width: 62%; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }
.badge {
  display: inline-block; padding: 1px 8px; border-radius: 999px; white-space: nowrap;
  font: 650 11px/1.6 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
}
.badge.ok { background: rgba(34, 197, 94, .14); color: #4ade80;
  border: 1px solid rgba(34, 197, 94, .45); }
.badge.bad { background: rgba(239, 68, 68, .14); color: #fb7185;
  border: 1px solid rgba(239, 68, 68, .5); }
.badge.warn { background: rgba(245, 158, 11, .14); color: #fbbf24;
  border: 1px solid rgba(245, 158, 11, .5); }
.badge.muted { background: rgba(100, 116, 139, .16); color: #a3b0c9;
  border: 1px solid rgba(100, 116, 139, .45); }
.usage-grid { display: grid; grid-template-columns: 48px 74px auto; gap: 1px 8px;
  align-items: center; font-size: 11.5px; white-space: nowrap; }
.usage-grid .l { color: var(--muted); }
svg.usage { width: 74px; height: 6px; display: block; }
svg.usage .track { fill: #1d2947; }
pre.out {
  margin: 0; max-width: 240px; max-height: 4.6em; overflow: hidden; white-space: pre-wrap;
  word-break: break-all; font-size: 11.5px; color: #c6d0e6; background: #0c1428;
  border: 1px solid #1b2743; border-radius: 6px; padding: 3px 6px;
}
svg.chart { width: 100%; height: auto; display: block; }
svg .grid { stroke: #1f2b48; stroke-width: 1; }
svg .axis, svg .value { fill: var(--muted); font: 11px system-ui, sans-serif; }
svg .label { fill: var(--text); font: 11.5px ui-monospace, Menlo, Consolas, monospace; }
svg .c-ok { fill: var(--ok); }
svg .c-bad { fill: var(--bad); }
svg .c-warn { fill: var(--warn); }
svg .c-muted { fill: var(--grey); }
svg .dot { fill-opacity: .85; stroke: #0b1020; stroke-width: 1; }
svg .series polyline { fill: none; stroke-width: 2; stroke-linejoin: round; }
svg .series circle.fail { stroke: var(--bad); stroke-width: 2; }
svg .s0 polyline { stroke: #60a5fa; } svg .s0 circle { fill: #60a5fa; }
svg .s1 polyline { stroke: #f472b6; } svg .s1 circle { fill: #f472b6; }
svg .s2 polyline { stroke: #34d399; } svg .s2 circle { fill: #34d399; }
svg .s3 polyline { stroke: #fbbf24; } svg .s3 circle { fill: #fbbf24; }
svg .s4 polyline { stroke: #a78bfa; } svg .s4 circle { fill: #a78bfa; }
svg .s5 polyline { stroke: #22d3ee; } svg .s5 circle { fill: #22d3ee; }
svg .s6 polyline { stroke: #fb923c; } svg .s6 circle { fill: #fb923c; }
svg .s7 polyline { stroke: #e879f9; } svg .s7 circle { fill: #e879f9; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 12px; margin-top: 6px; }
.sw { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 5px; }
.sw.s0 { background: #60a5fa; } .sw.s1 { background: #f472b6; } .sw.s2 { background: #34d399; }
.sw.s3 { background: #fbbf24; } .sw.s4 { background: #a78bfa; } .sw.s5 { background: #22d3ee; }
.sw.s6 { background: #fb923c; } .sw.s7 { background: #e879f9; }
.note { color: var(--muted); font-size: 12.5px; margin: 8px 0 0; }
.box { border-left: 3px solid var(--border); padding: 8px 12px; background: #0e1730;
  border-radius: 0 8px 8px 0; margin: 8px 0; }
.box.ok { border-left-color: var(--ok); }
.box.bad { border-left-color: var(--bad); }
.box.warn { border-left-color: var(--warn); }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 5px 16px; margin: 0;
  font-size: 13px; }
dl.kv dt { color: var(--muted); }
dl.kv dd { margin: 0; word-break: break-all; }
ul.plain { margin: 4px 0; padding-left: 18px; }
.more { color: var(--muted); font-size: 12.5px; padding: 10px 8px 2px; }
.filter { margin-left: auto; display: flex; gap: 8px; align-items: center; }
input[type=search], input[type=password], input[type=text] {
  background: #0c1428; color: var(--text); border: 1px solid var(--border); border-radius: 6px;
  padding: 5px 9px; font-size: 13px; min-width: 200px;
}
button {
  background: #1a2a4d; color: var(--text); border: 1px solid #2c3f6b; border-radius: 6px;
  padding: 4px 11px; font-size: 12.5px; cursor: pointer;
}
button:hover { background: #22365f; }
button.danger { border-color: rgba(239, 68, 68, .6); }
button.danger:hover { background: rgba(239, 68, 68, .2); }
.toolbar { display: flex; flex-wrap: wrap; gap: 8px 12px; align-items: center;
  padding: 10px 28px; background: #0e1730; border-bottom: 1px solid var(--border); }
.toolbar form { display: flex; gap: 6px; align-items: center; }
.status { font-size: 12.5px; color: var(--muted); }
.status.ok { color: #4ade80; }
.status.bad { color: #fb7185; }
.live { display: inline-flex; align-items: center; gap: 7px; font-size: 12.5px; }
.live i { width: 8px; height: 8px; border-radius: 50%; background: var(--ok); display: inline-block;
  box-shadow: 0 0 0 3px rgba(34, 197, 94, .2); }
.live.down i { background: var(--warn); box-shadow: 0 0 0 3px rgba(245, 158, 11, .2); }
footer { color: var(--muted); font-size: 12px; text-align: center; padding: 8px 0 28px; }
[hidden] { display: none !important; }
"""

JS = """
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

  async function refresh() {
    const res = await fetch("fragment", { cache: "no-store", credentials: "omit" });
    if (!res.ok) return;
    const doc = new DOMParser().parseFromString(await res.text(), "text/html");
    const fresh = doc.getElementById("content");
    const current = $("#content");
    if (!fresh || !current) return;
    current.replaceWith(fresh);
    applyFilter();
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
        while ((end = buf.indexOf("\\n\\n")) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          let name = "message";
          let data = "";
          for (const line of block.split("\\n")) {
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
    if (!btn) return;
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
"""

ICON = (
    "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 32 32'%3E"
    "%3Crect width='32' height='32' rx='7' fill='%23111a2e'/%3E%3Cpath d='M20 6a10 10 0 1 0 6 "
    "17A8 8 0 0 1 20 6z' fill='%237aa7ff'/%3E%3C/svg%3E"
)


def sha256_source(source: str) -> str:
    """The CSP hash-source of an inline script or style: ``'sha256-<base64>'``."""
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


SCRIPT_HASH = sha256_source(JS)
STYLE_HASH = sha256_source(CSS)


def csp(*, live: bool, header: bool = False) -> str:
    """The Content-Security-Policy of the report (``live``: the console may also connect back
    to its own origin for server-sent events and the API). ``frame-ancestors`` only works as
    an HTTP header (browsers ignore it, and warn, in a meta tag)."""
    parts = [
        "default-src 'none'",
        f"script-src {SCRIPT_HASH}",
        f"style-src {STYLE_HASH}",
        "img-src data:",
        "connect-src 'self'" if live else "connect-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
    ]
    if header:
        parts.append("frame-ancestors 'none'")
    return "; ".join(parts)
