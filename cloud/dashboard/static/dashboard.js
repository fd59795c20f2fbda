// wearfed compliance dashboard. Reads the cloud's own API with the user's bearer token (sessionStorage, sent as an
// Authorization header, never in a URL), shows the panels the role's permissions allow (GET /v1/dashboard/session),
// and re-reads a panel's routes when the change feed (GET /v1/dashboard/events, server-sent events read with fetch)
// says its topic changed. Every value from the server is written as text (textContent), never as markup.
"use strict";

(() => {
  const TOKEN_KEY = "wearfed.token";
  const REASON_KEY = "wearfed.signout";
  const $ = (id) => document.getElementById(id);
  const state = {token: null, session: null, perms: new Set(), lastSeq: null, abort: null, loads: 0,
                 rounds: new Map(), loaded: false, dirty: new Set(), flushing: false, drafts: new Map()};
  // read by the browser tests and the latency bench (never the token)
  window.wfDashboard = Object.freeze({
    get loads() { return state.loads; }, get lastChange() { return state.lastChange || null; },
    get lastSeq() { return state.lastSeq; }, get role() { return state.session ? state.session.role : null; },
  });

  // -- helpers ------------------------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") n.className = v;
      else if (k === "text") n.textContent = v;
      else if (k.startsWith("on")) n.addEventListener(k.slice(2), v);
      else if (k.includes("-")) n.setAttribute(k, String(v));
      else n[k] = v;
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      n.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
    }
    return n;
  }
  const can = (action) => state.perms.has(action);
  const num = (v, p = 4) => (v === null || v === undefined || !Number.isFinite(+v)) ? "–" : String(+(+v).toPrecision(p));
  const when = (iso) => iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", " UTC") : "–";
  const short = (h) => h ? `${h.slice(0, 12)}…` : "–";
  const badge = (text, kind) => el("span", {class: `badge ${kind || text}`, text});

  function toast(msg, bad) {
    const t = $("toast");
    t.textContent = msg;
    t.className = bad ? "show bad" : "show";
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.className = ""; }, 8000);
  }

  class ApiError extends Error {
    constructor(status, detail) {
      super(`refused (${status}): ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
      this.status = status;
    }
  }

  async function api(method, path, body, {text = false} = {}) {
    const headers = {"Authorization": `Bearer ${state.token}`};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch(path, {method, headers, cache: "no-store", credentials: "omit",
                                    body: body === undefined ? undefined : JSON.stringify(body)});
    if (!resp.ok) {
      let detail = resp.statusText;
      try { detail = (await resp.json()).detail; } catch (_e) { /* not JSON */ }
      throw new ApiError(resp.status, detail);
    }
    return text ? resp.text() : resp.json();
  }
  const get = (path, opts) => api("GET", path, undefined, opts);

  async function act(label, fn) {
    try {
      const msg = await fn();
      toast(msg || `${label}: done`);
    } catch (e) {
      toast(`${label}: ${e.message}`, true);
    }
  }

  // a reason typed into a row survives the row being redrawn by a live update (and keeps the focus)
  function reasonBox(key, placeholder) {
    const box = el("input", {class: "reason", placeholder: placeholder || "reason", "aria-label": placeholder || "reason",
                             maxLength: 500, "data-draft": key, value: state.drafts.get(key) || "",
                             oninput: () => state.drafts.set(key, box.value)});
    return box;
  }
  function keepFocus(render) {
    const active = document.activeElement;
    const key = active && active.dataset ? active.dataset.draft : undefined;
    render();
    if (key === undefined) return;
    const again = document.querySelector(`input[data-draft="${CSS.escape(key)}"]`);
    if (again) { again.focus(); again.setSelectionRange(again.value.length, again.value.length); }
  }

  // -- panels -------------------------------------------------------------------------------------
  async function loadParticipants() {
    const rows = await get("/v1/dashboard/participants");
    const body = $("participants").querySelector("tbody");
    keepFocus(() => body.replaceChildren(...rows.map((p) => {
      const capped = p.epsilon_cap !== null && p.epsilon_cap !== undefined;
      const share = capped ? Math.min(1, p.epsilon_spent / p.epsilon_cap) : 0;
      const fill = el("div", {class: share >= 1 ? "fill full" : share >= 0.8 ? "fill high" : "fill"});
      fill.style.width = `${(share * 100).toFixed(1)}%`;
      const eps = el("td", {class: "eps-cell", title: `cumulative epsilon ${p.epsilon_spent} (delta ${p.delta}, ` +
                            `per ${p.unit}, ${p.accountant || "no accountant yet"}) of cap ${p.epsilon_cap}`},
                     el("span", {class: "eps", text: num(p.epsilon_spent)}), " / ",
                     el("span", {class: "cap", text: capped ? num(p.epsilon_cap) : "no cap"}),
                     el("div", {class: "meter"}, fill));
      const why = p.halted_reason;
      const status = el("td", {class: "status"}, p.halted ? badge("halted", "bad") : badge("active", "ok"),
                        why ? el("div", {class: "why", text: `${why.reason}` +
                                         (why.requested_by ? ` — requested by ${why.requested_by}` : "") +
                                         (why.approved_by ? `, approved by ${why.approved_by}` : "") +
                                         ` (${why.kind}, ${when(why.at)})`}) : null);
      const cells = [el("td", {class: "pid", text: p.id}), el("td", {text: p.kind}), eps,
                     el("td", {text: p.delta === null ? "–" : String(p.delta)}), el("td", {class: "nowrap", text: `per ${p.unit}`}),
                     el("td", {text: p.accountant || "–"}), el("td", {text: String(p.rounds)}), status];
      if (can("participant.halt")) {
        const verb = p.halted ? "resume" : "halt";
        const reason = reasonBox(`participant:${p.id}`, `reason to ${verb}`);
        const button = el("button", {type: "button", class: `${verb}`, text: p.halted ? "Request resume" : "Request halt",
                                     onclick: () => act(`${verb} ${p.id}`, async () => {
                                       const a = await api("POST", `/v1/participants/${encodeURIComponent(p.id)}/${verb}`,
                                                           {reason: reason.value});
                                       state.drafts.delete(`participant:${p.id}`);
                                       refresh(["approvals"]);
                                       return `${verb} of ${p.id} requested: approval #${a.id} awaits a second person`;
                                     })});
        cells.push(el("td", {class: "act"}, reason, button));
      }
      return el("tr", {"data-participant": p.id, class: p.halted ? "halted" : ""}, ...cells);
    })));
    if (!rows.length) body.replaceChildren(el("tr", {}, el("td", {colSpan: 9, class: "empty", text: "no participant enrolled"})));
  }

  async function loadEpsilon() {
    const accounts = await get("/v1/privacy/ledger");
    const series = accounts.map((a) => ({name: a.participant, points: a.entries.map((e) => [e.round, e.epsilon_recomputed])}));
    const caps = new Map();
    for (const a of accounts) if (a.cap !== null) caps.set(a.cap, [...(caps.get(a.cap) || []), a.participant]);
    const first = accounts.flatMap((a) => a.entries)[0];
    $("epsilon-note").textContent = first ? `Cumulative DP-SGD epsilon after each round, recomputed by the cloud ` +
      `(delta ${first.delta}, per ${accounts[0].unit}, ${first.accountant} accountant); dashed red lines are caps.` : "";
    WFCharts.line($("epsilon-chart"), {series, xLabel: "round", yLabel: "cumulative ε", title: "epsilon over rounds",
                                      hlines: [...caps].map(([cap, who]) => ({y: cap, label: `cap ${cap} (${who.join(", ")})`})),
                                      xTicks: (a, b) => WFCharts.ticks(a, b, 6).filter(Number.isInteger),
                                      empty: "no privacy spend recorded yet"});
  }

  function eventItem(e, text) {
    return el("li", {"data-seq": e.seq}, el("time", {text: when(e.at)}), " ", el("b", {text: e.kind}), " ",
              el("span", {text}));
  }

  async function loadAlerts() {
    const doc = await get("/v1/dashboard/alerts");
    const alerts = doc.alerts.map((a) => el("li", {"data-alert": a.id}, el("time", {text: when(a.at)}), " ",
                                            el("b", {text: a.kind}), " ", el("span", {text: `${a.participant || ""}: ` +
                                              Object.entries(a.detail).map(([k, v]) => `${k} ${typeof v === "number" ? num(v) : v}`).join(", ")})));
    $("alert-list").replaceChildren(...(alerts.length ? alerts : [el("li", {class: "empty", text: "none"})]));
    const refused = doc.refused.map((e) => eventItem(e, `${e.actor}` + (e.detail.round !== undefined ? ` round ${e.detail.round}` : "") +
                                                      `: ${e.detail.reason || ""}` + (e.detail.status ? ` (${e.detail.status})` : "")));
    $("refused-list").replaceChildren(...(refused.length ? refused : [el("li", {class: "empty", text: "none"})]));
    const access = doc.access.map((e) => eventItem(e, e.kind === "access.failures"
      ? `${e.detail.total} refused requests ${JSON.stringify(e.detail.by_status)}`
      : `${e.actor} ${e.detail.status || ""} ${e.detail.action || e.detail.key_kind || ""} ${e.detail.path || ""} ${e.detail.reason || ""}`));
    $("access-list").replaceChildren(...(access.length ? access : [el("li", {class: "empty", text: "none"})]));
  }

  async function loadApprovals() {
    const all = await get("/v1/approvals");
    const pending = all.filter((a) => a.state === "pending");
    const done = all.filter((a) => a.state !== "pending").slice(-20).reverse();
    const me = state.session;
    keepFocus(() => $("approval-table").querySelector("tbody").replaceChildren(...[...pending, ...done].map((a) => {
      const params = Object.entries(a.params).filter(([k]) => !k.includes("sha256"))
        .map(([k, v]) => `${k}: ${v}`).join(", ");
      const cells = [el("td", {text: `#${a.id}`}), el("td", {text: a.action}), el("td", {text: params}),
                     el("td", {text: a.requested_by}), el("td", {}, badge(a.state)), el("td", {text: a.decided_by || "–"})];
      if (can("approval.decide")) {
        const approvers = me.approvers[a.action] || [];
        if (a.state !== "pending") cells.push(el("td", {text: a.reason || ""}));
        else if (a.requested_by === me.name) cells.push(el("td", {class: "muted", text: "you requested this: another person decides"}));
        else if (!approvers.includes(me.role)) cells.push(el("td", {class: "muted", text: `approvers: ${approvers.join(", ")}`}));
        else {
          const reason = reasonBox(`approval:${a.id}`, "reason to reject");
          cells.push(el("td", {class: "act"},
            el("button", {type: "button", class: "approve", text: "Approve", onclick: () => act(`approve #${a.id}`, async () => {
              await api("POST", `/v1/approvals/${a.id}/approve`);
              return `approval #${a.id} (${a.action}) approved`;
            })}), reason,
            el("button", {type: "button", class: "reject", text: "Reject", onclick: () => act(`reject #${a.id}`, async () => {
              await api("POST", `/v1/approvals/${a.id}/reject`, {reason: reason.value});
              return `approval #${a.id} rejected`;
            })})));
        }
      }
      return el("tr", {"data-approval": a.id, class: a.state}, ...cells);
    })));
  }

  function gateList(r) {
    const check = r.gate_checks[r.gate_checks.length - 1];
    const items = [];
    for (const [src, m] of Object.entries(r.metrics_by_source || {})) {
      const shown = ["rmse30", "persistence_rmse30", "rmse60", "clarke_ab30"].filter((k) => m[k] !== undefined)
        .map((k) => `${k} ${num(m[k])}`).join(", ");
      items.push(el("li", {class: "src", text: `${src}: ${shown || Object.keys(m).length + " metrics"}`}));
    }
    const gate = (g) => el("li", {class: g.passed ? "pass" : "fail", title: g.detail,
                                  text: `${g.passed ? "✓" : "✗"} ${g.gate}${g.source ? ` (${g.source})` : ""}`});
    if (check) {
      const failed = check.results.filter((g) => !g.passed);
      items.push(el("li", {class: check.passed ? "pass" : "fail",
                           text: check.passed ? `✓ all ${check.results.length} gates passed (${check.action} by ${check.actor})`
                             : `✗ ${failed.length} of ${check.results.length} gates failed (${check.action} by ${check.actor})`}));
      items.push(...failed.map(gate));
      items.push(el("li", {}, el("details", {}, el("summary", {text: "every gate"}),
                                el("ul", {class: "gates"}, check.results.map(gate)))));
    }
    return el("ul", {class: "gates"}, items.length ? items : [el("li", {class: "muted", text: "no gate check yet"})]);
  }

  function roundActions(r) {
    const out = [];
    if (can("round.approve") && r.state === "evaluated") {
      out.push(el("button", {type: "button", class: "approve", text: "Approve", onclick: () => act(`approve round ${r.round}`, async () => {
        await api("POST", `/v1/rounds/${r.round}/approve`);
        return `round ${r.round} approved (staged)`;
      })}));
    }
    if (can("round.reject") && ["completed", "evaluated", "staged"].includes(r.state)) {
      const reason = reasonBox(`round:${r.round}`, "reason to reject");
      out.push(reason, el("button", {type: "button", class: "reject", text: "Reject", onclick: () => act(`reject round ${r.round}`, async () => {
        await api("POST", `/v1/rounds/${r.round}/reject`, {reason: reason.value});
        return `round ${r.round} rejected`;
      })}));
    }
    if (can("model.promote") && r.state === "staged") {
      out.push(el("button", {type: "button", class: "promote", text: "Deploy", onclick: () => act(`deploy round ${r.round}`, async () => {
        await api("POST", `/v1/rounds/${r.round}/promote`);
        return `round ${r.round}'s model v${r.result_model_version} deployed`;
      })}));
    }
    return out;
  }

  async function loadRounds() {
    const rounds = await get("/v1/dashboard/rounds?limit=100");
    state.rounds = new Map(rounds.map((r) => [r.round, r]));
    const body = $("round-table").querySelector("tbody");
    keepFocus(() => body.replaceChildren(...rounds.map((r) => {
      const who = r.contributors || r.updates;
      const refusals = Object.entries(r.refusals || {}).map(([p, why]) => `${p} refused: ${why}`);
      const decided = r.decided_by ? `${r.state === "rejected" ? "rejected" : "deployed"} by ${r.decided_by}` : "–";
      return el("tr", {"data-round": r.round},
        el("td", {text: String(r.round)}),
        el("td", {}, badge(r.state), r.secagg_phase ? el("div", {class: "muted", text: `secure aggregation: ${r.secagg_phase}`}) : null,
           r.failure_reason ? el("div", {class: "why", text: r.failure_reason}) : null),
        el("td", {class: "contributors"}, el("div", {text: who && who.length ? who.join(", ") : "–"}),
           el("div", {class: "muted", text: `expected ${r.expected.length}, quorum ${r.quorum}`}),
           ...refusals.map((t) => el("div", {class: "why", text: t}))),
        el("td", {text: r.opened_by}), el("td", {text: r.evaluated_by || "–"}), el("td", {text: r.approved_by || "–"}),
        el("td", {text: decided}), el("td", {text: r.duration_s === null ? "–" : `${num(r.duration_s, 3)} s`}),
        el("td", {}, gateList(r)), el("td", {class: "act"}, ...roundActions(r)));
    })));
    if (!rounds.length) body.replaceChildren(el("tr", {}, el("td", {colSpan: 10, class: "empty", text: "no round yet"})));
    const series = [];
    const pick = (src, key, name, dashed) => {
      const pts = rounds.filter((r) => r.metrics_by_source[src] && Number.isFinite(r.metrics_by_source[src][key]))
        .map((r) => [r.round, r.metrics_by_source[src][key]]);
      if (pts.length) series.push({name, points: pts, dashed});
    };
    pick("posted", "rmse30", "model (posted held-out)");
    pick("posted", "persistence_rmse30", "persistence (posted held-out)", true);
    pick("validation", "rmse30", "model (cloud validation set)");
    pick("federated", "rmse30", "model (hospitals' held-out)");
    WFCharts.line($("rmse-chart"), {series, xLabel: "round", yLabel: "RMSE@30 (mg/dL)", title: "RMSE per round",
                                   xTicks: (a, b) => WFCharts.ticks(a, b, 6).filter(Number.isInteger),
                                   empty: "no metrics posted yet"});
  }

  async function showCard(version) {
    const box = $("card");
    box.hidden = false;
    box.replaceChildren(el("p", {class: "muted", text: `loading the card of v${version}…`}));
    try {
      const md = await get(`/v1/models/${version}/card?format=md`, {text: true});
      box.replaceChildren(el("h3", {text: `Model card v${version}`}), el("pre", {text: md}));
    } catch (e) {
      box.replaceChildren(el("p", {class: "error", text: e.message}));
    }
  }

  async function loadModels() {
    const [models, release] = await Promise.all([get("/v1/models"), get("/v1/releases/tflite-status").catch(() => null)]);
    $("model-table").querySelector("tbody").replaceChildren(...models.slice().reverse().map((m) => {
      const r = m.round !== null ? state.rounds.get(m.round) : null;
      const lineage = [r ? `trained from v${r.base_model_version}` : m.round === null ? "initial" : "",
                       m.replaced_version !== null && m.replaced_version !== undefined ? `replaced v${m.replaced_version}` : ""]
        .filter(Boolean).join("; ");
      return el("tr", {"data-model": m.version},
        el("td", {text: `v${m.version}`}), el("td", {}, badge(m.status)), el("td", {text: m.round === null ? "–" : String(m.round)}),
        el("td", {text: lineage || "–"}), el("td", {class: "mono", title: m.hash, text: short(m.hash)}),
        el("td", {text: when(m.created_at)}), el("td", {text: m.participants.join(", ") || "–"}),
        el("td", {}, el("button", {type: "button", class: "card-btn", text: "card", onclick: () => showCard(m.version)})));
    }));
    const rel = $("release");
    if (!release) rel.textContent = "release status unavailable";
    else if (!release.head) rel.textContent = `TFLite releases: none yet (export ${release.enabled ? "on" : "off"}, ${release.exporter})`;
    else rel.textContent = `Devices' release serial ${release.head.serial}: model v${release.head.version}, ${release.state}`;
  }

  async function loadDrift() {
    const [hist, alerts] = await Promise.all([get("/v1/drift/history"), get("/v1/drift/alerts")]);
    const series = Object.entries(hist.participants).map(([pid, pts]) => ({
      name: pid, points: pts.filter((p) => p.kl_nats !== null).map((p) => [p.t_end, p.kl_nats, p.alert])}));
    const fmtT = (t) => new Date(t * 1000).toISOString().slice(5, 16).replace("T", " ");
    WFCharts.line($("drift-chart"), {series, hlines: [{y: hist.threshold_nats, label: `alert threshold ${hist.threshold_nats} nats`}],
                                    xLabel: "end of reading window (UTC, simulated time)", yLabel: "KL (nats)",
                                    xFormat: fmtT, title: "drift KL over time",
                                    empty: "no drift report scored yet (a reference needs a day of readings)"});
    $("drift-alerts").replaceChildren(...alerts.map((a) => el("li", {}, el("time", {text: when(a.at)}), " ",
      el("b", {text: "drift alert"}), " ", el("span", {text: `${a.participant}: KL ${num(a.detail.kl_nats)} nats`}))));
  }

  async function loadAudit() {
    const cp = await get("/v1/audit/checkpoint");
    $("ledger-size").textContent = String(cp.tree_size);
    $("checkpoint").textContent = `${cp.body.trim()}\n— signature ${short(cp.signature)} by key ${cp.public_key}`;
    const start = Math.max(0, cp.tree_size - 30);
    const entries = await get(`/v1/audit/entries?start=${start}&limit=30`);
    $("audit-table").querySelector("tbody").replaceChildren(...entries.reverse().map((e) => el("tr", {"data-seq": e.seq},
      el("td", {text: String(e.seq)}), el("td", {text: when(e.at)}), el("td", {text: e.kind}), el("td", {text: e.actor}),
      el("td", {class: "detail", text: JSON.stringify(e.detail)}))));
  }

  const PANELS = [
    {id: "privacy", topics: ["participants", "privacy"], load: loadParticipants},
    {id: "epsilon", topics: ["privacy"], load: loadEpsilon},
    {id: "alerts", topics: ["alerts"], load: loadAlerts},
    {id: "approvals", topics: ["approvals"], load: loadApprovals},
    {id: "rounds", topics: ["rounds"], load: loadRounds},
    {id: "models", topics: ["models"], load: loadModels},
    {id: "explanations", topics: ["models"], load: () => WFExplanations.load({get, el, num})},  // explanations.js
    {id: "drift", topics: ["drift"], load: loadDrift},
    {id: "audit", topics: ["audit"], load: loadAudit},
  ];

  async function loadPanel(p) {
    const section = $(p.id);
    if (section.hidden) return;
    try {
      await p.load();
      section.classList.remove("failed");
      section.dataset.loaded = String(Date.now());
    } catch (e) {
      section.classList.add("failed");
      if (e.status === 401) return signOut("your token is no longer accepted");
      toast(`${p.id}: ${e.message}`, true);
    }
  }

  // re-read the panels of the dirty topics, coalescing bursts of events
  function refresh(topics) {
    for (const t of topics) state.dirty.add(t);
    if (state.flushing) return;
    state.flushing = true;
    setTimeout(async () => {
      const topicsNow = new Set(state.dirty);
      state.dirty.clear();
      const panels = PANELS.filter((p) => p.topics.some((t) => topicsNow.has(t)));
      // rounds before models: the model table names the round each version was trained from
      await Promise.all(panels.filter((p) => p.id !== "models").map(loadPanel));
      if (panels.some((p) => p.id === "models")) await loadPanel(PANELS.find((p) => p.id === "models"));
      state.loads += 1;
      state.flushing = false;
      if (state.dirty.size) refresh([]);
    }, 0);
  }
  const refreshAll = () => refresh(PANELS.flatMap((p) => p.topics));

  // -- live feed ----------------------------------------------------------------------------------
  function setLive(on, text) {
    const live = $("live");
    live.className = on ? "live on" : "live off";
    live.textContent = text || (on ? "live" : "reconnecting");
  }

  function onEvent(block) {
    let event = "message", data = "", id = null;
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
      if (field === "event") event = value;
      else if (field === "data") data += (data ? "\n" : "") + value;
      else if (field === "id") id = value;
    }
    if (id !== null && /^-?\d+$/.test(id)) state.lastSeq = parseInt(id, 10);
    const doc = data ? JSON.parse(data) : {};
    if (event === "hello") {
      setLive(true);
      if (!state.loaded || state.lastSeq === null) { state.loaded = true; refreshAll(); }
    } else if (event === "change") {
      state.lastChange = {seq: doc.seq, topics: doc.topics, at: Date.now()};
      refresh(doc.truncated ? PANELS.flatMap((p) => p.topics) : doc.topics);
    } else if (event === "bye" && doc.reconnect === false) {
      signOut(doc.reason);
    }
  }

  async function follow() {
    const ctrl = new AbortController();
    state.abort = ctrl;
    while (state.token && !ctrl.signal.aborted) {
      try {
        const headers = {"Authorization": `Bearer ${state.token}`, "Accept": "text/event-stream"};
        if (state.lastSeq !== null) headers["Last-Event-ID"] = String(state.lastSeq);
        const resp = await fetch("/v1/dashboard/events", {headers, cache: "no-store", credentials: "omit",
                                                          signal: ctrl.signal});
        if (resp.status === 401 || resp.status === 403) return signOut("the live feed refused this token");
        if (!resp.ok || !resp.body) throw new Error(`feed answered ${resp.status}`);
        const reader = resp.body.getReader();
        const decoder = new TextDecoder();
        let buf = "";
        for (;;) {
          const {value, done} = await reader.read();
          if (done) break;
          buf += decoder.decode(value, {stream: true}).replace(/\r\n/g, "\n");
          let cut;
          while ((cut = buf.indexOf("\n\n")) >= 0) {
            onEvent(buf.slice(0, cut));
            buf = buf.slice(cut + 2);
          }
        }
      } catch (e) {
        if (ctrl.signal.aborted) return;
        setLive(false);
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  }

  // -- session ------------------------------------------------------------------------------------
  function showFor(perms) {
    for (const n of document.querySelectorAll("[data-perm]")) n.hidden = !perms.has(n.dataset.perm);
  }

  async function start() {
    try {
      state.session = await get("/v1/dashboard/session");
    } catch (e) {
      const why = e.status === 401 ? "this token is not accepted" : e.status === 403 ?
        "this role has no dashboard (it may " + "read metrics only)" : e.message;
      return signOut(why);
    }
    state.perms = new Set(state.session.permissions);
    $("login").hidden = true;
    $("panels").hidden = false;
    $("who").hidden = false;
    $("user").textContent = state.session.name;
    $("role").textContent = state.session.role.replace("_", " ");
    showFor(state.perms);
    document.body.dataset.role = state.session.role;
    follow();
  }

  // signing out reloads the page, so nothing one user was shown stays in the document for the next
  function signOut(reason) {
    if (state.abort) state.abort.abort();
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    if (reason) sessionStorage.setItem(REASON_KEY, reason);
    location.replace(location.pathname);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const token = $("token").value.trim();
      $("token").value = "";
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      state.token = token;
      $("login-error").textContent = "";
      start();
    });
    $("signout").addEventListener("click", () => signOut("signed out"));
    $("verify").addEventListener("click", () => act("verify", async () => {
      $("verify-result").textContent = "verifying…";
      const v = await api("POST", "/v1/audit/verify");
      const out = $("verify-result");
      out.className = v.ok ? "ok" : "bad";
      out.textContent = v.ok
        ? `✓ ${v.entries} entries and ${v.checkpoints} signed checkpoints verified against the pinned key ` +
          `(root ${short(v.root)}, ${num(v.seconds, 2)} s)`
        : `✗ ledger does not verify: first bad entry ${v.first_bad_seq}: ${v.error}`;
      return v.ok ? "audit ledger verified" : "audit ledger does NOT verify";
    }));
    $("rollback").addEventListener("click", () => act("rollback", async () => {
      const r = await api("POST", "/v1/models/rollback", {reason: $("rollback-reason").value});
      return `rolled back from v${r.rolled_back} to v${r.promoted}`;
    }));
    $("login-error").textContent = sessionStorage.getItem(REASON_KEY) || "";
    sessionStorage.removeItem(REASON_KEY);
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) { state.token = saved; start(); }
  });
})();
