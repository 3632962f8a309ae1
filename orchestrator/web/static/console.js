// nnmd console: plain JavaScript, no build step. Each page's server-rendered shell says
// which page it is (body[data-page]); this script fills it from the console's JSON API.
"use strict";

(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const TERMINAL = new Set(["finished", "stopped", "failed"]);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function fmt(x, digits) {
    if (x === null || x === undefined || typeof x !== "number" || !isFinite(x)) return "–";
    return digits === undefined ? String(x) : x.toFixed(digits);
  }

  function clock(t) {
    if (!t) return "";
    return new Date(t * 1000).toLocaleTimeString([], { hour12: false });
  }

  function loginRedirect() {
    location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
  }

  async function api(path, options) {
    const r = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
    if (r.status === 401) {
      loginRedirect();
      throw new Error("not logged in");
    }
    let body = null;
    try {
      body = await r.json();
    } catch (e) {
      body = { error: "HTTP " + r.status + " " + r.statusText };
    }
    if (!r.ok) {
      const err = new Error((body && body.error) || "HTTP " + r.status);
      err.body = body || {};
      err.status = r.status;
      throw err;
    }
    return body;
  }

  function showBox(box, message) {
    if (!box) return;
    box.textContent = message || "";
    box.hidden = !message;
  }

  function stateBadge(state) {
    return el("span", { class: "state " + (state || ""), text: state || "?" });
  }

  // ------------------------------------------------------------------ campaigns list
  function initList() {
    const tbody = $("#campaigns tbody");
    const errorBox = $("#list-error");
    const status = $("#list-status");

    function render(campaigns) {
      tbody.replaceChildren();
      if (!campaigns.length) {
        tbody.append(el("tr", {}, el("td", { colspan: 8, class: "muted" },
          "No campaigns yet: ", el("a", { href: "/new", text: "start one" }), ".")));
        return;
      }
      for (const c of campaigns) {
        const link = el("a", { href: "/campaigns/" + encodeURIComponent(c.campaign),
                               text: c.campaign });
        tbody.append(el("tr", { "data-campaign": c.campaign },
          el("td", {}, link), el("td", {}, stateBadge(c.state)),
          el("td", { class: "num", text: fmt(c.n_chains) }),
          el("td", { class: "num", text: fmt(c.steps_done) + " / " + fmt(c.steps_total) }),
          el("td", { class: "num", text: fmt(c.acceptance, 3) }),
          el("td", { class: "num", text: fmt(c.n_labels) }),
          el("td", { class: "num", text: c.model_version ? "v" + c.model_version : "–" }),
          el("td", { text: c.reference || "" })));
      }
    }

    async function refresh() {
      try {
        const body = await api("/api/campaigns");
        render(body.campaigns || []);
        showBox(errorBox, "");
        status.textContent = "Updated " + new Date().toLocaleTimeString([], { hour12: false }) + ".";
      } catch (e) {
        showBox(errorBox, e.message);
      } finally {
        setTimeout(refresh, 3000);
      }
    }
    refresh();
  }

  // ------------------------------------------------------------------ new campaign
  function initNew() {
    const form = $("#new-campaign");
    const generalBox = $("#form-error");
    const status = $("#form-status");
    const choice = $("#f-reference-choice");
    const reference = $("#f-reference");

    choice.addEventListener("change", () => {
      if (!choice.value) return;
      reference.value = choice.value;
      reference.focus();
      reference.dispatchEvent(new Event("change"));
    });

    function fieldBox(name) {
      return document.getElementById("err-" + name);
    }

    function setFieldError(name, message) {
      const box = fieldBox(name);
      if (!box) return false;
      showBox(box, message);
      const field = box.closest(".field");
      if (field) field.classList.toggle("invalid", Boolean(message));
      return true;
    }

    function clearErrors() {
      for (const box of form.querySelectorAll(".field-error")) {
        setFieldError(box.id.slice(4), "");
      }
      showBox(generalBox, "");
    }

    function message(body) {
      let text = body.error || "failed";
      if (body.hint && text.indexOf(body.hint) < 0) text += " (" + body.hint + ")";
      return text;
    }

    function showError(body) {
      const name = body.form_field;
      if (name && setFieldError(name, message(body))) {
        const input = document.getElementById("f-" + name);
        if (input) {
          input.focus();
          input.scrollIntoView({ block: "center" });
        }
        return name;
      }
      showBox(generalBox, message(body));
      generalBox.scrollIntoView({ block: "center" });
      return null;
    }

    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      clearErrors();
      const button = $("#start-button");
      button.disabled = true;
      status.textContent = "Starting...";
      try {
        const body = await api("/api/campaigns", { method: "POST", body: new FormData(form) });
        status.textContent = "Started " + body.campaign + ".";
        location.href = "/campaigns/" + encodeURIComponent(body.campaign);
      } catch (e) {
        status.textContent = "";
        showError(e.body || { error: e.message });
      } finally {
        button.disabled = false;
      }
    });

    // Validation on leaving a field: the coordinator checks the whole spec
    // (validate_only) and an error about this field is shown beside it.
    let pending = null;
    form.addEventListener("change", (ev) => {
      const name = ev.target && ev.target.name;
      if (!name || !fieldBox(name)) return;
      clearTimeout(pending);
      pending = setTimeout(async () => {
        const data = new FormData(form);
        data.set("validate_only", "1");
        try {
          const body = await api("/api/campaigns", { method: "POST", body: data });
          if (body.valid === false && body.form_field === name) setFieldError(name, message(body));
          else setFieldError(name, "");
        } catch (e) {
          // the coordinator could not check (unavailable): say so at submit time
        }
      }, 250);
    });
  }

  // ------------------------------------------------------------------ a campaign, live
  const PLOT_CONFIG = { displaylogo: false, responsive: true };
  const COLORS = ["#2f6fde", "#e8710a", "#1e8e3e", "#d93025", "#9334e6", "#12b5cb", "#e52592",
                  "#7cb342", "#f9ab00", "#5f6368"];

  function baseLayout(xTitle, yTitle, extra) {
    return Object.assign({
      margin: { l: 60, r: 15, t: 10, b: 45 }, height: 280,
      xaxis: { title: { text: xTitle }, automargin: true },
      yaxis: { title: { text: yTitle }, automargin: true },
      legend: { orientation: "h", y: 1.12, x: 0 }, uirevision: "keep",
      hovermode: "closest", font: { size: 11 },
    }, extra || {});
  }

  function initCampaign() {
    const name = document.body.dataset.campaign;
    const base = "/api/campaigns/" + encodeURIComponent(name);
    window.nnmdStepLags = [];
    const S = {
      liveStepTimes: [],
      offset: 0, limit: 20, hist: null, loading: false, again: false, pending: [],
      liveAgg: new Map(), aggLast: -Infinity, aggCut: 0, latest: {}, failed: {}, labels: { t: [], n: [] },
      models: [], events: [], eventKeys: new Set(), state: "", message: "", version: null,
      dirty: true, revision: 0, es: null, opened: false, ended: false, timer: null,
    };
    const errorBox = $("#page-error");

    // ---------------------------------------------------------------- data
    function eventKey(e) {
      return [e.kind, e.time, e.chain || "", e.message || "", e.state || "",
              e.model_version || ""].join("|");
    }

    function addEvent(e) {
      const key = eventKey(e);
      if (S.eventKeys.has(key)) return;
      S.eventKeys.add(key);
      S.events.push(e);
      if (S.events.length > 400) {
        const old = S.events.splice(0, S.events.length - 300);
        for (const o of old) S.eventKeys.delete(eventKey(o));
      }
    }

    function pageChains() {
      const names = (S.hist && S.hist.chain_names) || [];
      return names.slice(S.offset, S.offset + S.limit);
    }

    function applyStep(d) {
      const c = S.hist.chains && S.hist.chains[d.chain];
      if (c) {
        const last = c.step.length ? c.step[c.step.length - 1] : -Infinity;
        if (d.step > last) {
          c.step.push(d.step);
          c.energy_ref.push(d.energy_ref);
          c.volume.push(d.volume);
          c.accepted.push(d.accepted ? 1 : 0);
          c.acceptance_rate.push(d.acceptance_rate);
          c.n_md_steps.push(d.n_md_steps);
          c.phase.push(d.phase);
        }
      }
      const prev = S.latest[d.chain];
      if (!prev || d.step >= prev.step) S.latest[d.chain] = d;
      if (d.step > S.aggLast) {
        let a = S.liveAgg.get(d.step);
        if (!a) {
          a = { n: 0, acc: 0, nacc: 0, min: Infinity, max: -Infinity, nmd: 0, nnmd: 0,
                e: 0, ne: 0, v: 0, nv: 0 };
          S.liveAgg.set(d.step, a);
        }
        a.n += 1;
        if (typeof d.acceptance_rate === "number" && isFinite(d.acceptance_rate)) {
          a.acc += d.acceptance_rate; a.nacc += 1;
          a.min = Math.min(a.min, d.acceptance_rate); a.max = Math.max(a.max, d.acceptance_rate);
        }
        if (typeof d.n_md_steps === "number") { a.nmd += d.n_md_steps; a.nnmd += 1; }
        if (typeof d.energy_ref === "number" && isFinite(d.energy_ref)) { a.e += d.energy_ref; a.ne += 1; }
        if (typeof d.volume === "number" && isFinite(d.volume)) { a.v += d.volume; a.nv += 1; }
      }
      const lastN = S.labels.n.length ? S.labels.n[S.labels.n.length - 1] : -1;
      if (typeof d.n_labels === "number" && d.n_labels > lastN) {
        S.labels.t.push(d.time);
        S.labels.n.push(d.n_labels);
      }
    }

    function apply(kind, d) {
      d.kind = d.kind || kind;
      if (kind === "step") {
        applyStep(d);
      } else if (kind === "model_published") {
        if (!S.models.some((m) => m.version === d.model_version)) {
          S.models.push({ version: d.model_version, n_labels: d.n_labels,
                          energy_rmse_mev_per_atom: d.energy_rmse_mev_per_atom,
                          force_rmse_mev_per_angstrom: d.force_rmse_mev_per_angstrom,
                          history: [] });
        }
        addEvent(d);
        scheduleHistory(1500); // its learning curve and held-out errors
      } else if (kind === "chain_failed") {
        S.failed[d.chain] = d.message || "failed";
        addEvent(d);
      } else if (kind === "state") {
        S.state = d.state || S.state;
        if (d.message) S.message = d.message;
        addEvent(d);
      } else {
        if (kind === "log" && d.message) S.message = d.message;
        addEvent(d);
      }
      S.dirty = true;
    }

    function onEvent(kind, ev) {
      let d;
      try {
        d = JSON.parse(ev.data);
      } catch (e) {
        return;
      }
      if (S.loading || !S.hist) S.pending.push([kind, d]);
      if (S.hist) {
        apply(kind, d);
        if (kind === "step" && !S.loading && typeof d.time === "number") {
          S.liveStepTimes.push(d.time);
        }
      }
    }

    function scheduleHistory(delay) {
      clearTimeout(S.timer);
      S.timer = setTimeout(loadHistory, delay);
    }

    async function loadHistory() {
      if (S.loading) {
        S.again = true;
        return;
      }
      S.loading = true;
      try {
        const h = await api(base + "/history?offset=" + S.offset + "&limit=" + S.limit +
                            "&max_points=1000");
        S.hist = h;
        S.state = h.state || S.state;
        S.message = h.message || "";
        // Steps that not every chain has reached yet are summed on here as their events
        // come in: seeded from the history's partial means (chains that reached them).
        const agg = h.aggregate || { step: [] };
        const steps = agg.step || [];
        const reached = agg.n_chains || [];
        let cut = steps.length;
        if (reached.length === steps.length) {
          while (cut > 0 && reached[cut - 1] < (h.n_chains || 0)) cut -= 1;
        }
        S.aggCut = cut;
        S.aggLast = cut > 0 ? steps[cut - 1] : -Infinity;
        S.liveAgg = new Map();
        const num = (v) => typeof v === "number" && isFinite(v);
        for (let i = cut; i < steps.length; i += 1) {
          const n = reached[i] || 0;
          const m = (key) => (agg[key] ? agg[key][i] : null);
          S.liveAgg.set(steps[i], {
            n, acc: num(m("acceptance_mean")) ? m("acceptance_mean") * n : 0,
            nacc: num(m("acceptance_mean")) ? n : 0,
            min: num(m("acceptance_min")) ? m("acceptance_min") : Infinity,
            max: num(m("acceptance_max")) ? m("acceptance_max") : -Infinity,
            nmd: num(m("n_md_mean")) ? m("n_md_mean") * n : 0, nnmd: num(m("n_md_mean")) ? n : 0,
            e: num(m("energy_ref_mean")) ? m("energy_ref_mean") * n : 0,
            ne: num(m("energy_ref_mean")) ? n : 0,
            v: num(m("volume_mean")) ? m("volume_mean") * n : 0, nv: num(m("volume_mean")) ? n : 0,
          });
        }
        S.labels = { t: (h.labels && h.labels.time || []).slice(),
                     n: (h.labels && h.labels.n_labels || []).slice() };
        S.models = (h.models || []).slice();
        S.latest = {};
        for (const [chain, c] of Object.entries(h.chains || {})) {
          const i = c.step.length - 1;
          if (i >= 0) {
            S.latest[chain] = { chain, step: c.step[i], acceptance_rate: c.acceptance_rate[i],
                                n_md_steps: c.n_md_steps[i], phase: c.phase[i],
                                energy_ref: c.energy_ref[i], volume: c.volume[i],
                                accepted: c.accepted[i] };
          }
        }
        for (const e of h.events || []) addEvent(e);
        const pending = S.pending;
        S.pending = [];
        for (const [kind, d] of pending) apply(kind, d);
        showBox(errorBox, "");
        S.dirty = true;
      } catch (e) {
        showBox(errorBox, e.message);
        if (!S.hist && e.status !== 404 && e.status !== 400) S.retry = true;
      } finally {
        S.loading = false;
        if (S.retry) {
          S.retry = false;
          scheduleHistory(2000); // nothing shown yet: try again soon
        }
        if (S.again) {
          S.again = false;
          scheduleHistory(300);
        }
      }
    }

    function openEvents() {
      const es = new EventSource(base + "/events");
      S.es = es;
      for (const kind of ["step", "model_published", "chain_failed", "log", "state"]) {
        es.addEventListener(kind, (ev) => onEvent(kind, ev));
      }
      es.addEventListener("end", () => {
        es.close();
        S.ended = true;
        scheduleHistory(200);
      });
      es.addEventListener("watch_error", (ev) => {
        es.close();
        try {
          showBox(errorBox, JSON.parse(ev.data).error);
        } catch (e) {
          showBox(errorBox, "the live stream failed");
        }
      });
      es.addEventListener("resync", () => scheduleHistory(0));
      es.addEventListener("shutdown", () => {
        es.close();
        showBox(errorBox, "The console is stopping; reload the page when it is back.");
      });
      es.addEventListener("open", () => {
        if (S.opened) scheduleHistory(0); // reconnected: fetch what was missed
        S.opened = true;
      });
      es.addEventListener("error", () => {
        if (es.readyState === EventSource.CLOSED && !S.ended) {
          api(base + "/history?limit=1&max_points=10").catch((e) => showBox(errorBox, e.message));
        }
      });
    }

    // ---------------------------------------------------------------- rendering
    function aggregate() {
      const a = (S.hist && S.hist.aggregate) || {};
      const cut = (key) => (a[key] || []).slice(0, S.aggCut);
      const out = {
        step: cut("step"), mean: cut("acceptance_mean"), min: cut("acceptance_min"),
        max: cut("acceptance_max"), nmd: cut("n_md_mean"), e: cut("energy_ref_mean"),
        v: cut("volume_mean"),
      };
      const live = Array.from(S.liveAgg.entries()).sort((p, q) => p[0] - q[0]);
      for (const [step, x] of live) {
        out.step.push(step);
        out.mean.push(x.nacc ? x.acc / x.nacc : null);
        out.min.push(x.nacc ? x.min : null);
        out.max.push(x.nacc ? x.max : null);
        out.nmd.push(x.nnmd ? x.nmd / x.nnmd : null);
        out.e.push(x.ne ? x.e / x.ne : null);
        out.v.push(x.nv ? x.v / x.nv : null);
      }
      return out;
    }

    function chainTraces(key, scale) {
      const traces = [];
      pageChains().forEach((chain, i) => {
        const c = S.hist.chains && S.hist.chains[chain];
        if (!c) return;
        traces.push({
          type: "scatter", mode: "lines", name: chain, x: c.step.slice(),
          y: scale ? c[key].map((y) => (y === null ? null : y * scale)) : c[key].slice(),
          line: { width: 1, color: COLORS[i % COLORS.length] }, opacity: 0.55,
          showlegend: false, hovertemplate: chain + " step %{x}: %{y}<extra></extra>",
        });
      });
      return traces;
    }

    function meanTrace(x, y, label) {
      return { type: "scatter", mode: "lines", name: label, x, y,
               line: { width: 2.5, color: "#1d2430" } };
    }

    function react(id, traces, layout) {
      const div = document.getElementById("chart-" + id);
      if (!div || typeof Plotly === "undefined") return;
      layout.datarevision = S.revision;
      Plotly.react(div, traces, layout, PLOT_CONFIG);
    }

    function renderCharts() {
      const a = aggregate();
      const n = (S.hist && S.hist.n_chains) || 0;
      const meanLabel = n > 1 ? "mean of " + n + " chains" : "mean";
      react("acceptance", [
        { type: "scatter", mode: "lines", x: a.step, y: a.min, line: { width: 0 },
          showlegend: false, hoverinfo: "skip", name: "min" },
        { type: "scatter", mode: "lines", x: a.step, y: a.max, fill: "tonexty",
          fillcolor: "rgba(47,111,222,0.18)", line: { width: 0 }, name: "min–max, all chains" },
        meanTrace(a.step, a.mean, meanLabel),
        ...chainTraces("acceptance_rate"),
      ], baseLayout("MC step", "acceptance rate", { yaxis: { range: [0, 1.02], title: { text: "acceptance rate" } } }));
      react("nmd", [meanTrace(a.step, a.nmd, meanLabel), ...chainTraces("n_md_steps")],
            baseLayout("MC step", "n_md"));
      react("energy", [meanTrace(a.step, a.e, meanLabel), ...chainTraces("energy_ref")],
            baseLayout("MC step", "E_ref (eV)"));
      react("volume", [meanTrace(a.step, a.v, meanLabel), ...chainTraces("volume")],
            baseLayout("MC step", "V (Å³)"));
      react("labels", [{ type: "scatter", mode: "lines+markers", name: "labels",
                         x: S.labels.t.map((t) => new Date(t * 1000)), y: S.labels.n.slice(),
                         line: { shape: "hv", color: "#1e8e3e" }, marker: { size: 4 } }],
            baseLayout("time", "labels", { xaxis: { type: "date", title: { text: "time" } } }));
      const model = S.models.find((m) => m.version === S.version) || S.models[S.models.length - 1];
      const rows = (model && model.history) || [];
      const col = (j) => rows.map((r) => (r[j] === null || r[j] === undefined ? null : r[j] * 1000));
      const epochs = rows.map((r) => r[0]);
      const label = model ? " v" + model.version : "";
      react("learning-energy", [
        { type: "scatter", mode: "lines", name: "train" + label, x: epochs, y: col(1) },
        { type: "scatter", mode: "lines", name: "validation" + label, x: epochs, y: col(2) },
      ], baseLayout("epoch", "meV/atom", { yaxis: { type: "log", title: { text: "meV/atom" } } }));
      react("learning-forces", [
        { type: "scatter", mode: "lines", name: "train" + label, x: epochs, y: col(3) },
        { type: "scatter", mode: "lines", name: "validation" + label, x: epochs, y: col(4) },
      ], baseLayout("epoch", "meV/Å", { yaxis: { type: "log", title: { text: "meV/Å" } } }));
    }

    function metric(value, label) {
      return el("div", { class: "metric" }, el("b", { text: value }), el("span", { text: label }));
    }

    function renderSummary() {
      const h = S.hist;
      const settings = h.settings || {};
      const a = aggregate();
      const lastMean = a.mean.length ? a.mean[a.mean.length - 1] : null;
      let maxStep = 0;
      for (const d of Object.values(S.latest)) maxStep = Math.max(maxStep, d.step || 0);
      if (a.step.length) maxStep = Math.max(maxStep, a.step[a.step.length - 1]);
      const version = S.models.length ? Math.max(...S.models.map((m) => m.version || 0)) : 0;
      const labels = S.labels.n.length ? S.labels.n[S.labels.n.length - 1] : 0;
      const failed = Object.keys(S.failed).length;
      $("#summary").replaceChildren(
        metric(fmt(h.n_chains), "chains"),
        metric(fmt(maxStep) + (settings.steps ? " / " + settings.steps : ""), "MC step"),
        metric(fmt(lastMean, 3), "acceptance (mean)"),
        metric(fmt(labels), "labels"),
        metric(version ? "v" + version : "–", "model"),
        metric(fmt(failed), "failed chains"));
      const badge = $("#state");
      badge.textContent = S.state || "?";
      badge.className = "state " + (S.state || "");
      $("#message").textContent = S.message || "";
      $("#stop-button").disabled = !S.state || TERMINAL.has(S.state) || S.state === "stopping";
      const hasModel = S.models.length > 0;
      for (const fmtName of ["nnmd", "sannp", "lammps"]) {
        const link = document.getElementById("export-" + fmtName);
        if (hasModel && link.classList.contains("disabled")) {
          link.href = link.dataset.href;
          link.classList.remove("disabled");
          link.removeAttribute("aria-disabled");
        }
      }
      $("#export-note").textContent = hasModel ? "latest model, v" + version
                                               : "models appear after the first training";
    }

    function renderChains() {
      const h = S.hist;
      const total = h.n_chains || (h.chain_names || []).length;
      const pages = Math.max(1, Math.ceil(total / S.limit));
      const page = Math.floor(S.offset / S.limit) + 1;
      $("#page-info").textContent = total
        ? "chains " + (S.offset + 1) + "–" + Math.min(total, S.offset + S.limit) + " of " +
          total + " (page " + page + " of " + pages + ")"
        : "no chains yet";
      $("#page-prev").disabled = S.offset <= 0;
      $("#page-next").disabled = S.offset + S.limit >= total;
      const tbody = $("#chains tbody");
      tbody.replaceChildren();
      for (const chain of pageChains()) {
        const d = S.latest[chain] || {};
        const failed = S.failed[chain];
        tbody.append(el("tr", { "data-chain": chain },
          el("td", { text: chain }), el("td", { class: "num", text: fmt(d.step) }),
          el("td", { class: "num", text: fmt(d.acceptance_rate, 3) }),
          el("td", { class: "num", text: fmt(d.n_md_steps) }),
          el("td", { text: failed ? "failed: " + failed : d.phase || "" }),
          el("td", { class: "num", text: fmt(d.energy_ref, 4) }),
          el("td", { class: "num", text: fmt(d.volume, 2) }),
          el("td", { text: d.step === undefined ? "" : d.accepted ? "accepted" : "rejected" })));
      }
    }

    function renderModels() {
      const tbody = $("#models tbody");
      tbody.replaceChildren();
      const models = S.models.slice().sort((p, q) => q.version - p.version);
      for (const m of models) {
        const ho = m.holdout || {};
        tbody.append(el("tr", {},
          el("td", { text: "v" + m.version }), el("td", { class: "num", text: fmt(m.n_labels) }),
          el("td", { class: "num", text: fmt(m.n_structures) }),
          el("td", { class: "num", text: fmt(m.train_seconds, 1) }),
          el("td", { class: "num", text: fmt(m.energy_rmse_mev_per_atom, 2) }),
          el("td", { class: "num", text: fmt(m.force_rmse_mev_per_angstrom, 1) }),
          el("td", { class: "num", text: fmt(ho.n) }),
          el("td", { class: "num", text: fmt(ho.energy_rmse_mev_per_atom, 2) }),
          el("td", { class: "num", text: fmt(ho.force_rmse_mev_per_angstrom, 1) })));
      }
      const select = $("#model-select");
      const want = models.map((m) => String(m.version)).join(",");
      if (select.dataset.versions !== want) {
        select.dataset.versions = want;
        select.replaceChildren(...models.map((m) => el("option", { value: m.version,
                                                                  text: "v" + m.version })));
        if (S.version !== null && models.some((m) => m.version === S.version)) {
          select.value = String(S.version);
        }
      }
    }

    function renderSettings() {
      const tbody = $("#settings tbody");
      if (tbody.dataset.done === "1" || !S.hist.settings) return;
      tbody.dataset.done = "1";
      for (const [k, v] of Object.entries(S.hist.settings)) {
        tbody.append(el("tr", {}, el("th", { text: k }),
                        el("td", { text: typeof v === "object" ? JSON.stringify(v) : String(v) })));
      }
    }

    function describe(e) {
      if (e.kind === "state") return "state " + e.state + (e.message ? ": " + e.message : "");
      if (e.kind === "model_published") {
        return "model v" + e.model_version + " published" +
          (e.n_labels !== undefined ? " (" + e.n_labels + " labels" +
            (e.energy_rmse_mev_per_atom !== undefined && e.energy_rmse_mev_per_atom !== null
              ? ", E " + fmt(e.energy_rmse_mev_per_atom, 2) + " meV/atom" : "") +
            (e.force_rmse_mev_per_angstrom !== undefined && e.force_rmse_mev_per_angstrom !== null
              ? ", F " + fmt(e.force_rmse_mev_per_angstrom, 1) + " meV/Å" : "") + ")" : "");
      }
      if (e.kind === "chain_failed") {
        return e.chain + " failed at step " + e.step + ": " + (e.message || "");
      }
      return e.message || e.kind;
    }

    function renderEvents() {
      const list = $("#events");
      const shown = S.events.slice(-300).reverse();
      list.replaceChildren(...shown.map((e) => el("li", {
        class: e.kind === "chain_failed" || e.state === "failed" ? "failed"
          : e.kind === "model_published" ? "model" : "",
      }, el("span", { class: "muted", text: clock(e.time) + " " }), describe(e))));
    }

    function render() {
      if (!S.dirty || !S.hist) return;
      S.dirty = false;
      S.revision += 1;
      renderSummary();
      renderChains();
      renderModels();
      renderSettings();
      renderEvents();
      renderCharts();
      // how long after the coordinator recorded them the live steps reached the screen
      // (seconds; window.nnmdStepLags, the last 500): the console's latency, for tests
      // and for a curious user's devtools
      const now = Date.now() / 1000;
      for (const t of S.liveStepTimes) window.nnmdStepLags.push(now - t);
      window.nnmdStepLags.splice(0, Math.max(0, window.nnmdStepLags.length - 500));
      S.liveStepTimes = [];
    }

    // ---------------------------------------------------------------- controls
    $("#stop-button").addEventListener("click", async () => {
      const button = $("#stop-button");
      button.disabled = true;
      try {
        const body = await api(base + "/stop", { method: "POST" });
        S.state = body.state;
        S.dirty = true;
      } catch (e) {
        showBox(errorBox, e.message);
        button.disabled = false;
      }
    });
    $("#page-prev").addEventListener("click", () => {
      S.offset = Math.max(0, S.offset - S.limit);
      loadHistory();
    });
    $("#page-next").addEventListener("click", () => {
      S.offset += S.limit;
      loadHistory();
    });
    $("#model-select").addEventListener("change", (ev) => {
      S.version = Number(ev.target.value);
      S.dirty = true;
    });

    openEvents();
    loadHistory();
    setInterval(render, 500); // charts are redrawn at most twice a second
    setInterval(() => {
      if (!S.ended && !TERMINAL.has(S.state)) scheduleHistory(0); // reconcile aggregates
    }, 20000);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const page = document.body.dataset.page;
    if (page === "list") initList();
    else if (page === "new") initNew();
    else if (page === "campaign") initCampaign();
  });
})();
