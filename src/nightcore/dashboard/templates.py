"""Jinja2 templates of the report (autoescape on: every ``{{ }}`` is HTML-escaped).

Rules kept here: untrusted values only ever appear as element text or in quoted attribute
values (``data-tenant``, ``title``), after :func:`~nightcore.dashboard.text.clean`; never in
``href``/``src``, ``style``, event handlers or the script. ``|safe`` is used only for the
constant script/stylesheet and for SVG that :mod:`~nightcore.dashboard.charts` built with
:func:`markupsafe.escape` on every text node.
"""

from __future__ import annotations

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{{ csp }}">
<meta name="referrer" content="no-referrer">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="nightcore {{ s.node.versions.nightcore }}">
<title>Night Core · {{ s.node.name|clean(60) }}{% if live %} · live{% endif %}</title>
<link rel="icon" href="{{ icon }}">
<style>{{ css|safe }}</style>
</head>
<body data-live="{{ '1' if live else '0' }}"
  {%- if live and events_token %} data-events-token="1"{% endif %}>
<header class="top">
  <div class="brand">
    <svg viewBox="0 0 32 32" aria-hidden="true"><rect width="32" height="32" rx="7"
      class="c-muted" fill-opacity=".25"/><path d="M20 6a10 10 0 1 0 6 17A8 8 0 0 1 20 6z"
      fill="#7aa7ff"/></svg>
    <span>Night Core</span>
    <small>{{ 'live console' if live else 'runtime report' }}</small>
  </div>
  <div class="ident">
    <span>node <b>{{ s.node.name|clean(60) }}</b></span>
    <span title="{{ s.node.key_id }}">key <b class="mono">{{ s.node.key_id|short(16) or
      'missing' }}</b></span>
    {% if s.node.fips %}<span class="chip">FIPS policy</span>{% endif %}
    <span class="chip">nightcore {{ s.node.versions.nightcore }}</span>
    <span class="chip">wasmtime {{ s.node.versions.wasmtime }}</span>
    <span class="chip">{{ s.node.versions.python }}</span>
  </div>
  <div class="spacer"></div>
  {% if live %}
  <span id="live-state" class="live"><i></i><span>live</span></span>
  <span id="live-stamp" class="muted small"></span>
  {% else %}
  <span class="muted small">generated {{ s.generated|when }}</span>
  {% endif %}
</header>
{% if live %}
<div class="toolbar">
  <form id="token-form" autocomplete="off">
    <input id="token" type="password" placeholder="API token (nightcore serve token create)"
      aria-label="API token">
    <button type="submit">Use token</button>
  </form>
  <span id="token-state" class="muted small">read-only</span>
  <input id="reason" type="text" placeholder="reason (cordon / uncordon)" aria-label="reason">
  <button type="button" data-action="run">Run all tenants</button>
  <button type="button" data-action="checkpoint">Sign checkpoint</button>
  <button type="button" data-action="verify">Verify audit log</button>
  <span id="action-status" class="status" role="status"></span>
</div>
{% endif %}
{% include "content.html" %}
<footer>
  Night Core {{ s.node.versions.nightcore }} · {{ 'live view of' if live else
  'self-contained report of' }} node {{ s.node.name|clean(60) }} ·
  {% if live %}read-only without a token{% else %}no network access; its SHA-256 is printed by
  <span class="mono">nightcore dashboard build</span>{% endif %}
</footer>
<script>{{ js|safe }}</script>
</body>
</html>
"""

CONTENT = """{% macro badge(code) -%}
<span class="badge {{ code|code_class }}">{{ code|clean(40) }}</span>
{%- endmacro %}
{% macro usage(run) -%}
<div class="usage-grid">
{%- for label, value, frac, cls in run.usage() %}
  <span class="l">{{ label }}</span><span>{{ frac|usage_bar(cls) }}</span><span
    class="{{ 'muted' if cls == 'muted' else '' }}">{{ value }}</span>
{%- endfor %}
</div>
{%- endmacro %}
<main id="content" data-version="{{ version }}">
{% for w in s.warnings %}<div class="box warn">{{ w|clean(300) }}</div>{% endfor %}

<div class="cards">
  <div class="card {{ 'bad' if s.verdict_counts.denied else 'ok' }}">
    <div class="k">Tenants</div><div class="v">{{ s.verdict_counts.total|num }}</div>
    <div class="s">{{ s.verdict_counts.ok|num }} verified · {{ s.verdict_counts.denied|num }}
      denied · {{ s.verdict_counts.not_verified|num }} not verified</div>
  </div>
  <div class="card {{ 'warn' if s.verdict_counts.attention else 'ok' }}">
    <div class="k">Need attention</div><div class="v">{{ s.verdict_counts.attention|num }}</div>
    <div class="s">{{ s.verdict_counts.failing|num }} failing their last run · {{
      s.verdict_counts.cordoned|num }} cordoned</div>
  </div>
  <div class="card {{ 'bad' if failed_runs else 'ok' }}">
    <div class="k">Runs</div><div class="v">{{ s.runs.total|num }}</div>
    <div class="s">{{ ok_runs|num }} OK · {{ failed_runs|num }} not OK</div>
  </div>
  <div class="card {{ 'ok' if s.audit.verify.ok else 'bad' if s.audit.verify.ok is false
    else '' }}">
    <div class="k">Audit log</div><div class="v">{{ s.audit.entries|num }}</div>
    <div class="s">{% if s.audit.verify.ok %}verified ({{ s.audit.verify.mode }}){% elif
      s.audit.verify.ok is false %}VERIFICATION FAILED{% else %}not verified here{% endif
      %}</div>
  </div>
  <div class="card {{ 'ok' if s.audit.checkpoint else 'warn' }}">
    <div class="k">Signed checkpoint</div>
    <div class="v">{{ s.audit.checkpoint.size|num if s.audit.checkpoint else '—' }}</div>
    <div class="s">{% if s.audit.checkpoint %}{{ s.audit.checkpoint.behind|num }} line(s)
      since{% else %}none yet{% endif %}</div>
  </div>
  <div class="card {{ 'bad' if s.trust.revocations_error else 'ok' }}">
    <div class="k">Revocations</div><div class="v">{{ s.trust.revoked_total|num }}</div>
    <div class="s">list version {{ s.trust.revocations_version }} · {{ s.trust.keys|length }}
      trusted key(s)</div>
  </div>
</div>

{% if s.diff %}
<section class="panel" id="diff">
  <h2>What changed <span class="muted">{{ s.diff.label|clean(80) }}: {{
    s.diff.events_since|num }} audit events, {{ s.diff.runs_since|num }} runs</span></h2>
  {% if s.diff.empty %}<p class="note">No new tenants, digests or verdicts.</p>{% endif %}
  <div class="grid3">
  {% if s.diff.new_tenants %}<div><h3>New tenants</h3><ul class="plain">
    {% for n in s.diff.new_tenants %}<li class="mono">{{ n|clean(80) }}</li>{% endfor %}
  </ul></div>{% endif %}
  {% if s.diff.changed_digests %}<div><h3>Changed module digests</h3><table><tbody>
    {% for n, old, new in s.diff.changed_digests %}<tr><td class="mono">{{ n|clean(80) }}</td>
    <td class="mono" title="{{ old|clean(64) }} → {{ new|clean(64) }}">{{ old|short(12) }} →
      {{ new|short(12) }}</td></tr>{% endfor %}</tbody></table></div>{% endif %}
  {% if s.diff.changed_verdicts %}<div><h3>Changed verdicts</h3><table><tbody>
    {% for n, old, new in s.diff.changed_verdicts %}<tr><td class="mono">{{ n|clean(80) }}</td>
    <td>{{ badge(old) }} → {{ badge(new) }}</td></tr>{% endfor %}</tbody></table></div>
  {% endif %}
  {% if s.diff.removed_tenants %}<div><h3>No longer under modules/</h3><ul class="plain">
    {% for n in s.diff.removed_tenants %}<li class="mono">{{ n|clean(80) }}</li>{% endfor %}
  </ul></div>{% endif %}
  {% if s.diff.outcomes_since %}<div><h3>Run outcomes since</h3><ul class="plain">
    {% for code, n in s.diff.outcomes_since %}<li>{{ badge(code) }} {{ n|num }}</li>
    {% endfor %}</ul></div>{% endif %}
  </div>
</section>
{% endif %}

<section class="panel">
  <h2>Tenants <span class="muted">{{ s.verdict_counts.total|num }} total{% if s.hidden %},
    {{ s.shown|length|num }} shown (problems first){% endif %}</span>
    <span class="filter"><span id="filter-count" class="muted small"></span>
    <input id="tenant-filter" type="search" placeholder="filter tenants" aria-label="filter
      tenants"></span></h2>
  <div class="scroll">
  <table id="tenants">
    <thead><tr>
      <th>Tenant</th><th>Verdict</th><th>Signer key</th><th>Module</th><th>Last run</th>
      <th>Last run vs limits</th><th class="num">Runs</th><th>Output (start)</th>
      {% if live %}<th>Action</th>{% endif %}
    </tr></thead>
    <tbody>
    {% for t in s.shown %}
    <tr data-tenant="{{ t.name|clean(80) }}" class="{{ 'cordoned' if t.cordoned else
      'attention' if t.attention else '' }}">
      <td><div class="tname mono">{{ t.name|clean(80) }}</div>
        {% if t.description %}<div class="desc">{{ t.description }}</div>{% endif %}
        {% if not t.present %}<div class="desc">no package under modules/</div>{% endif %}</td>
      <td class="verdict">{{ badge(t.verdict) }}{% if t.cordoned %} {{ badge('CORDONED') }}
        {% endif %}
        {% if t.cordoned %}<div class="reason">{{ t.cordon_reason|clean(160) }}</div>
        {% elif t.verdict != 'OK' and t.verdict_reason %}<div class="reason">{{
          t.verdict_reason|clean(160) }}</div>{% endif %}</td>
      <td class="mono" title="{{ t.key_id|clean(64) }}">{{ t.key_id|short(12) or '—' }}</td>
      <td class="mono" title="{{ t.module_sha256|clean(64) }}">{{ t.module_sha256|short(12) or
        '—' }}</td>
      <td class="last">{% if t.last_run %}{{ badge(t.last_run.code) }}
        <div class="reason">{{ t.last_run.ts|when }}{% if t.last_run.exit_code is not none %} ·
          exit {{ t.last_run.exit_code }}{% endif %}</div>
        {% if t.last_run.code != 'OK' and t.last_run.detail %}<div class="reason">{{
          t.last_run.detail|clean(120) }}</div>{% endif %}
        {% else %}{{ badge('NO_RUNS') }}{% endif %}</td>
      <td>{% if t.last_run %}{{ usage(t.last_run) }}{% else %}<span class="muted">—</span>
        {% endif %}</td>
      <td class="num">{{ t.runs|num }}</td>
      <td>{% if t.output_preview %}<pre class="out">{{ t.output_preview }}</pre>{% else %}<span
        class="muted">—</span>{% endif %}</td>
      {% if live %}<td>{% if t.cordoned %}<button type="button" data-action="uncordon"
        data-tenant="{{ t.name|clean(80) }}">Uncordon</button>{% else %}<button type="button"
        class="danger" data-action="cordon" data-tenant="{{ t.name|clean(80) }}">Cordon</button>
        {% endif %}</td>{% endif %}
    </tr>
    {% endfor %}
    </tbody>
  </table>
  </div>
  {% if s.hidden %}<div class="more">{{ s.hidden|num }} more tenants not shown{% if
    s.hidden_attention %} ({{ s.hidden_attention|num }} of them need attention){% else %} (all
    verified, last run OK){% endif %}{% if live %}: GET /api/tenants?offset={{ s.shown|length }}
    pages through every tenant{% endif %}.</div>{% endif %}
</section>

<div class="grid3">
  <section class="panel">
    <h2>Run outcomes <span class="muted">{{ s.runs.source|clean(80) }}</span></h2>
    {{ outcome_chart|safe }}
    {% if s.runs.index_note %}<p class="note">{{ s.runs.index_note|clean(300) }}</p>{% endif %}
  </section>
  <section class="panel">
    <h2>Wall time (ms) <span class="muted">busiest tenants, last {{ chart_points }} runs
      each</span></h2>
    {{ wall_chart|safe }}
    <div class="legend">{% for name in chart_names %}<span><span class="sw s{{ loop.index0 % 8
      }}"></span><span class="mono">{{ name|clean(40) }}</span></span>{% endfor %}</div>
  </section>
  <section class="panel">
    <h2>Fuel <span class="muted">same tenants and runs</span></h2>
    {{ fuel_chart|safe }}
    <div class="legend">{% for name in chart_names %}<span><span class="sw s{{ loop.index0 % 8
      }}"></span><span class="mono">{{ name|clean(40) }}</span></span>{% endfor %}</div>
  </section>
</div>

<section class="panel" id="timeline">
  <h2>Timeline <span class="muted">the last {{ s.runs.recent|length }} runs (of {{
    s.runs.total|num }})</span></h2>
  {{ timeline|safe }}
  <h3>Recent runs</h3>
  <div class="scroll"><table id="runs">
    <thead><tr><th>Time</th><th>Tenant</th><th>Outcome</th><th class="num">Exit</th>
      <th class="num">Wall</th><th class="num">Fuel</th><th class="num">Memory</th>
      <th class="num">Output</th><th>Detail</th><th class="num">Audit seq</th></tr></thead>
    <tbody>
    {% for r in recent_rows %}
    <tr data-run="{{ r.run_id|clean(120) }}">
      <td class="mono">{{ r.ts|when }}</td><td class="mono">{{ r.tenant|clean(80) }}</td>
      <td>{{ badge(r.code) }}</td>
      <td class="num">{{ '—' if r.exit_code is none else r.exit_code }}</td>
      <td class="num">{{ r.wall_ms|millis }}</td><td class="num">{{ r.fuel_used|num }}</td>
      <td class="num">{{ r.memory_bytes|size }}</td>
      <td class="num">{{ r.output_bytes|size }}{% if r.output_truncated %} (cut){% endif %}</td>
      <td class="reason">{{ r.detail|clean(120) }}</td>
      <td class="num mono">{{ r.seq if r.seq is not none else '—' }}</td>
    </tr>
    {% else %}<tr><td colspan="10" class="muted">no runs yet</td></tr>
    {% endfor %}
    </tbody>
  </table></div>
  {% if s.runs.recent|length > recent_rows|length %}<div class="more">{{ (s.runs.recent|length
    - recent_rows|length)|num }} older runs are in the timeline above; older history is
    summarised in the charts (nightcore runs --limit N lists them).</div>{% endif %}
</section>

<div class="grid2">
<section class="panel" id="audit">
  <h2>Audit log <span class="muted">state/audit/audit.jsonl · {{ s.audit.size_bytes|size
    }}</span></h2>
  {% set v = s.audit.verify %}
  <div class="box {{ 'ok' if v.ok else 'bad' if v.ok is false else 'warn' }}">
    {% if v.ok %}<b>Verified</b>{% elif v.ok is false %}<b>Verification failed</b> {{
    badge(v.code or 'FAILED') }}{% else %}<b>Not verified in this {{ 'view' if live else
    'report' }}</b>{% endif %}
    <span class="muted">· {{ v.mode }} check of {{ v.entries|num }} entries · {{ v.at|when
      }}</span>
    {% if v.message %}<div class="reason">{{ v.message|clean(300) }}</div>{% endif %}
    {% if v.checks %}<ul class="plain small">{% for c in v.checks %}<li>{{ c }}</li>{% endfor
      %}</ul>{% endif %}
    {% for w in v.warnings %}<div class="reason">{{ w|clean(300) }}</div>{% endfor %}
    {% set f = s.audit.last_full %}
    {% if f %}<div class="reason">Full verification at {{ f.at|when }}: {% if f.ok %}<b>OK</b>,
      {{ f.entries|num }} entries{% else %}<b>FAILED</b> {{ f.code|clean(40) }}: {{
      f.message|clean(200) }}{% endif %}</div>
    {% elif v.mode != 'full' %}<div class="reason">Full verification (chain, canonical form,
      Merkle tree, every checkpoint): <span class="mono">nightcore audit verify</span>{% if live
      %} or the “Verify audit log” button{% endif %}.</div>{% endif %}
  </div>
  <dl class="kv">
    <dt>entries</dt><dd>{{ s.audit.entries|num }}</dd>
    <dt>head</dt><dd class="mono">{{ s.audit.head|clean(64) }}</dd>
    {% if s.audit.checkpoint %}{% set cp = s.audit.checkpoint %}
    <dt>latest checkpoint</dt><dd>size {{ cp.size|num }} · {{ cp.behind|num }} line(s) since ·
      {% if cp.verified %}signature verified with node.pub.pem{% else %}<b>signature not
      checked</b>{% endif %}</dd>
    <dt>checkpoint root</dt><dd class="mono">{{ cp.root|clean(64) }}</dd>
    <dt>origin / key</dt><dd class="mono">{{ cp.origin|clean(80) }} · {{ cp.key_name|clean(60)
      }}</dd>
    {% else %}<dt>latest checkpoint</dt><dd>{% if s.audit.checkpoint_error %}<span
      class="badge bad">ERROR</span> {{ s.audit.checkpoint_error|clean(300) }}{% else %}none
      signed yet (nightcore audit checkpoint){% endif %}</dd>{% endif %}
    <dt>checkpoint events</dt><dd>{{ s.audit.checkpoint_events|num }}</dd>
    {% if s.audit.torn_bytes %}<dt>tail</dt><dd>{{ s.audit.torn_bytes|num }} bytes after the
      last newline (write in progress or torn tail)</dd>{% endif %}
  </dl>
  <h3>Events by type</h3>
  <div class="legend">{% for name, n in s.audit.event_counts[:16] %}<span class="chip"><span
    class="mono">{{ name|clean(40) }}</span> {{ n|num }}</span>{% endfor %}</div>
</section>

<section class="panel" id="cordons">
  <h2>Cordons <span class="muted">{{ s.cordons|length }} active</span></h2>
  {% if s.cordons_error %}<div class="box bad">{{ s.cordons_error|clean(300) }}</div>{% endif %}
  <table><thead><tr><th>Tenant</th><th>Reason</th><th>Since</th></tr></thead><tbody>
  {% for c in s.cordons %}<tr><td class="mono">{{ c.tenant|clean(80) }}</td>
    <td class="reason">{{ c.reason|clean(200) }}</td><td class="mono">{{ c.ts|when }}</td></tr>
  {% else %}<tr><td colspan="3" class="muted">no tenant is cordoned</td></tr>{% endfor %}
  </tbody></table>
  {% if s.cordon_events %}<h3>History</h3><table><tbody>
  {% for e in s.cordon_events[:12] %}<tr><td class="mono">{{ e.ts|when }}</td>
    <td>{{ badge('CORDONED' if e.event == 'cordon' else 'OK') }} <span class="mono">{{
      e.event|clean(20) }}</span></td><td class="mono">{{ e.tenant|clean(60) }}</td>
    <td class="mono">{{ e.actor|clean(60) }}</td></tr>{% endfor %}
  </tbody></table>{% endif %}
</section>

</div>

<section class="panel" id="events">
  <h2>Recent audit events <span class="muted">newest first</span></h2>
  <div class="scroll"><table>
    <thead><tr><th class="num">Seq</th><th>Time</th><th>Event</th><th>Tenant</th>
      <th>Data</th></tr></thead>
    <tbody>
    {% for e in s.audit.recent[:30] %}
    <tr data-event="{{ e.event|clean(40) }}">
      <td class="num mono">{{ e.seq if e.seq is not none else '—' }}</td>
      <td class="mono">{{ e.ts|when }}</td><td class="mono">{{ e.event|clean(40) }}</td>
      <td class="mono">{{ e.tenant|clean(60) }}</td>
      <td class="reason ellipsis" title="{{ e.summary }}">{{ e.summary }}</td>
    </tr>
    {% else %}<tr><td colspan="5" class="muted">the audit log is empty</td></tr>
    {% endfor %}
    </tbody>
  </table></div>
</section>

<div class="grid2">
<section class="panel" id="revocations">
  <h2>Revocations <span class="muted">list version {{ s.trust.revocations_version }}{% if
    s.trust.revocations_issued %} · issued {{ s.trust.revocations_issued|when }}{% endif
    %}</span></h2>
  {% if s.trust.revocations_error %}<div class="box bad">{{ s.trust.revocations_error|clean(300)
    }}</div>{% endif %}
  {% if s.trust.revocations_signer %}<p class="note">signed by key <span class="mono">{{
    s.trust.revocations_signer|short(16) }}</span></p>{% endif %}
  <table><thead><tr><th>Kind</th><th>Subject</th><th>Reason</th><th>Revoked</th></tr></thead>
  <tbody>
  {% for r in s.trust.revoked %}<tr><td>{{ r.kind }}</td>
    <td class="mono" title="{{ r.subject|clean(64) }}">{{ r.subject|short(16) }}</td>
    <td class="reason">{{ r.reason|clean(160) }}</td><td class="mono">{{ r.revoked_at|when
      }}</td></tr>
  {% else %}<tr><td colspan="4" class="muted">nothing is revoked</td></tr>{% endfor %}
  </tbody></table>
  {% if s.trust.revoked_total > s.trust.revoked|length %}<div class="more">{{
    (s.trust.revoked_total - s.trust.revoked|length)|num }} more</div>{% endif %}
</section>

<section class="panel" id="trust">
  <h2>Trusted keys <span class="muted">trust/registry.json</span></h2>
  {% if s.trust.keys_error %}<div class="box bad">{{ s.trust.keys_error|clean(300) }}</div>
  {% endif %}
  <table><thead><tr><th>Key id</th><th>Name</th><th>Role</th><th>Scope</th><th>Expires</th>
  </tr></thead><tbody>
  {% for k in s.trust.keys %}<tr><td class="mono" title="{{ k.key_id|clean(64) }}">{{
    k.key_id|short(16) }}</td><td>{{ k.name|clean(60) }}</td><td>{{ k.role|clean(20) }}</td>
    <td class="mono">{{ k.scope|clean(60) }}</td><td class="mono">{{ k.expires or '—' }}</td>
  </tr>{% else %}<tr><td colspan="5" class="muted">no trusted keys</td></tr>{% endfor %}
  </tbody></table>
</section>
</div>

<div class="grid2">
<section class="panel" id="invalid">
  <h2>Refused packages <span class="muted">directory names that are not tenant ids</span></h2>
  <table><thead><tr><th>Name (as found)</th><th>Code</th><th>Reason</th><th>Name SHA-256</th>
    <th>When</th></tr></thead><tbody>
  {% for i in s.invalid[:50] %}<tr><td class="mono">{{ i.name|clean(80) if i.name else
    '(in the audit log by hash only)' }}</td><td>{{ badge(i.code or 'DENIED') }}</td>
    <td class="reason">{{ i.reason|clean(160) }}</td><td class="mono">{{ i.name_sha256|short(16)
    }}</td><td class="mono">{{ i.ts|when if i.ts else 'now' }}</td></tr>
  {% else %}<tr><td colspan="5" class="muted">none</td></tr>{% endfor %}
  </tbody></table>
</section>

<section class="panel" id="aufs">
  {% set u = s.aufs %}
  <h2>Updates (AUFS) <span class="muted">TUF metadata under state/aufs/</span></h2>
  <dl class="kv"><dt>status</dt><dd>{% if u.status == 'configured' %}{{ badge('OK') }}
    configured{% elif u.status == 'error' %}{{ badge('ERROR') }} {{ u.error|clean(300) }}{% else
    %}not configured{% endif %}</dd>
    {% if u.metadata_versions %}<dt>trusted metadata</dt><dd class="mono">{% for role, v in
      u.metadata_versions.items() %}{{ role|clean(20) }} v{{ v }}{% if not loop.last %} · {%
      endif %}{% endfor %}</dd>{% endif %}
    {% if u.runtime %}<dt>runtime installed</dt><dd class="mono">{{ u.runtime|clean(64) }}</dd>
    {% endif %}
    {% for name, v in u.trust.items() %}<dt>{{ name|clean(30) }}</dt><dd class="mono">{{
      v|clean(64) or '—' }}</dd>{% endfor %}
    {% if u.tenants_total %}<dt>tenants installed</dt><dd>{{ u.tenants_total|num }}: {% for t, v
      in u.tenants[:12] %}<span class="mono">{{ t|clean(64) }} {{ v|clean(32) }}</span>{% if
      not loop.last %}, {% endif %}{% endfor %}{% if u.tenants_total > 12 %}, …{% endif %}</dd>
    {% endif %}
    <dt>this node</dt><dd>nightcore {{ s.node.versions.nightcore }} · wasmtime {{
      s.node.versions.wasmtime }} · {{ s.node.versions.python }}</dd>
    <dt>node key</dt><dd class="mono">{{ s.node.key_id or 'missing' }}</dd>
    <dt>checkpoint origin</dt><dd class="mono">{{ s.node.origin }}</dd>
  </dl>
  {% if u.status == 'not configured' %}<p class="note">Signed updates of the runtime, tenants
    and trust material (TUF) are not configured on this node.</p>{% endif %}
</section>
</div>
</main>
"""
