// The offload dashboard: a page over the task HTTP API. Plain JavaScript,
// no dependencies. Every value from the API is put in the page as text
// (textContent, or attributes whose values the page builds itself), never
// as HTML.
"use strict";

(() => {
  const meta = (name) => {
    const el = document.querySelector(`meta[name="${name}"]`);
    return el ? el.getAttribute("content") : "";
  };
  const API = meta("offload-api") || "/tasks/";
  const REFRESH_MS = Math.max(250, Number(meta("offload-refresh-ms")) || 2000);

  const STATUSES = ["Enqueued", "Running", "Retrying", "Succeeded", "Failed", "Stopping", "Stopped", "Expired", "Invalid"];
  const STOPPABLE = new Set(["Enqueued", "Running", "Retrying"]);
  const RETRYABLE = new Set(["Failed", "Stopped", "Expired", "Invalid"]);
  const RANGES = { "5m": 5 * 60e3, "1h": 3600e3, "24h": 24 * 3600e3, "168h": 7 * 24 * 3600e3 };
  const FILTER_KEYS = ["status", "target", "prefix", "range", "since", "until", "order", "limit"];
  const DEFAULT_LIMIT = "50";

  const $ = (id) => document.getElementById(id);
  const TITLE = document.title;

  // h builds an element. Attributes are set with setAttribute (the page
  // chooses their names); children are nodes or strings, added as text.
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) {
      if (c === undefined || c === null || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  // ---- formatting ----

  const pad = (n, w = 2) => String(n).padStart(w, "0");
  function fmtTime(iso, withMs) {
    if (!iso) return "—";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    let s = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    if (withMs) s += `.${pad(d.getMilliseconds(), 3)}`;
    return s;
  }
  function timeEl(iso, withMs) {
    if (!iso) return h("span", { class: "muted" }, "—");
    return h("time", { datetime: iso, title: iso }, fmtTime(iso, withMs));
  }
  function fmtDuration(ms) {
    if (ms === undefined || ms === null || Number.isNaN(ms)) return "—";
    if (ms < 1000) return `${Math.round(ms)} ms`;
    const s = ms / 1000;
    if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${Math.floor(s % 60)} s`;
    return `${Math.floor(m / 60)} h ${m % 60} min`;
  }
  function fmtBytes(n) {
    if (!n) return "0 B";
    if (n < 1024) return `${n} B`;
    if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
    if (n < 1 << 30) return `${(n / (1 << 20)).toFixed(1)} MiB`;
    return `${(n / (1 << 30)).toFixed(1)} GiB`;
  }
  const fmtCount = (n) => Number(n).toLocaleString("en-US");
  const badge = (status) => h("span", { class: `badge s-${String(status).toLowerCase()}` }, status);
  const taskHref = (id) => `#/task/${encodeURIComponent(id)}`;

  // ---- status messages (aria-live) ----

  function say(msg, kind) {
    const el = $("status");
    if (el.textContent === msg && el.dataset.kind === (kind || "")) return; // do not announce again
    el.textContent = msg;
    el.dataset.kind = kind || "";
    // Errors show in a banner; other news is for screen readers only, so
    // that no stale line stays on screen.
    el.className = kind === "error" ? "status error" : "status visually-hidden";
  }

  // ---- the API ----

  class APIError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
    toString() {
      return this.code ? `${this.message} (${this.status} ${this.code})` : `${this.message} (${this.status})`;
    }
  }

  async function call(method, path, signal) {
    let res;
    try {
      res = await fetch(API + path, {
        method,
        headers: { Accept: "application/json" },
        credentials: "same-origin",
        cache: "no-store",
        signal,
      });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new APIError(0, "", "the server cannot be reached");
    }
    const text = await res.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = null;
    }
    if (!res.ok) {
      const msg = body && typeof body.message === "string" ? body.message : res.statusText || "request failed";
      throw new APIError(res.status, body && typeof body.code === "string" ? body.code : "", msg);
    }
    if (body === null) throw new APIError(res.status, "", "the answer is not JSON");
    return body;
  }
  const errText = (err) => (err instanceof APIError ? err.toString() : String(err && err.message ? err.message : err));

  // ---- state ----

  const state = {
    view: "list", // or "detail"
    filters: {}, // from the location hash
    cursors: [""], // cursors[i] reads page i
    page: 0,
    next: "",
    shown: 0,
    taskId: "",
    task: null,
    listHash: "#/",
    listCtl: null,
    listGen: 0,
    detailGen: 0,
    timer: 0,
    live: true,
    cameFrom: "", // the task whose detail was open, to focus its row again
    after: null, // {id, kind, status}: the last stop or retry, until it settles
  };

  // ---- routing: #/?filters for the list, #/task/ID for a task ----

  function parseHash() {
    const raw = location.hash.replace(/^#/, "");
    const m = raw.match(/^\/task\/(.+)$/);
    if (m) {
      let id = m[1];
      try {
        id = decodeURIComponent(id);
      } catch {
        /* keep it raw */
      }
      return { view: "detail", id };
    }
    const q = raw.indexOf("?");
    const params = new URLSearchParams(q >= 0 ? raw.slice(q + 1) : "");
    const filters = {};
    for (const k of FILTER_KEYS) {
      const v = params.get(k);
      if (v) filters[k] = v;
    }
    return { view: "list", filters };
  }

  function filtersHash(filters) {
    const p = new URLSearchParams();
    for (const k of FILTER_KEYS) if (filters[k]) p.set(k, filters[k]);
    const s = p.toString();
    return s ? `#/?${s}` : "#/";
  }

  function route(userAction) {
    const r = parseHash();
    if (r.view === "detail") {
      const changed = state.view !== "detail" || state.taskId !== r.id;
      state.view = "detail";
      state.taskId = r.id;
      showView();
      if (changed) {
        state.task = null;
        state.after = null;
        clearDetail();
        loadDetail(true);
        if (userAction) $("detail-heading").focus();
      }
      return;
    }
    const same = JSON.stringify(r.filters) === JSON.stringify(state.filters);
    const wasDetail = state.view === "detail";
    state.view = "list";
    state.listHash = location.hash || "#/";
    $("back").setAttribute("href", state.listHash);
    showView();
    if (!same || state.listGen === 0) {
      state.filters = r.filters;
      state.cursors = [""];
      state.page = 0;
      fillFilterForm();
      loadList(true);
    } else {
      loadList(false);
    }
    loadCounts();
    if (wasDetail && userAction) {
      const link = state.cameFrom && document.querySelector(`#tasks-body tr[data-id="${CSS.escape(state.cameFrom)}"] a`);
      (link || $("tasks-heading")).focus();
    }
  }

  function showView() {
    $("list-view").hidden = state.view !== "list";
    $("detail-view").hidden = state.view !== "detail";
    const send = $("send-section");
    if (send) send.hidden = state.view !== "list";
    $("counts-section").hidden = state.view !== "list";
  }

  // ---- filters ----

  function fillFilterForm() {
    const f = state.filters;
    const status = $("f-status");
    status.value = f.status || "";
    if (status.value !== (f.status || "")) {
      // a status set not among the options: add it, so the form says what is shown
      status.append(h("option", { value: f.status }, f.status.split(",").join(", ")));
      status.value = f.status;
    }
    $("f-target").value = f.target || "";
    $("f-prefix").value = f.prefix || "";
    $("f-range").value = f.range && (RANGES[f.range] || f.range === "custom") ? f.range : f.since || f.until ? "custom" : "";
    $("f-since").value = f.since || "";
    $("f-until").value = f.until || "";
    $("f-order").value = f.order === "asc" ? "asc" : "desc";
    $("f-limit").value = ["20", "50", "100"].includes(f.limit) ? f.limit : DEFAULT_LIMIT;
    showCustomRange();
  }

  function showCustomRange() {
    const custom = $("f-range").value === "custom";
    for (const el of document.querySelectorAll(".custom-range")) el.hidden = !custom;
  }

  function readFilterForm() {
    const f = {};
    const set = (k, v) => {
      if (v) f[k] = v;
    };
    set("status", $("f-status").value);
    set("target", $("f-target").value.trim());
    set("prefix", $("f-prefix").value.trim());
    const range = $("f-range").value;
    set("range", range);
    if (range === "custom") {
      set("since", $("f-since").value);
      set("until", $("f-until").value);
    }
    if ($("f-order").value === "asc") f.order = "asc";
    if ($("f-limit").value !== DEFAULT_LIMIT) f.limit = $("f-limit").value;
    return f;
  }

  function applyFilters(f) {
    const hash = filtersHash(f);
    if (hash === (location.hash || "#/")) {
      state.cursors = [""];
      state.page = 0;
      loadList(true); // the same filters again: reload from the first page
      return;
    }
    location.hash = hash; // hashchange loads the list
  }

  // listQuery turns the filters into the API's query parameters.
  function listQuery(cursor) {
    const f = state.filters;
    const p = new URLSearchParams();
    if (f.status) p.set("status", f.status);
    if (f.target) p.set("target", f.target);
    if (f.prefix) p.set("prefix", f.prefix);
    if (RANGES[f.range]) {
      p.set("since", new Date(Date.now() - RANGES[f.range]).toISOString());
    } else if (f.range === "custom" || f.since || f.until) {
      const since = f.since ? new Date(f.since) : null;
      const until = f.until ? new Date(f.until) : null;
      if (since && !Number.isNaN(since.getTime())) p.set("since", since.toISOString());
      if (until && !Number.isNaN(until.getTime())) p.set("until", until.toISOString());
    }
    if (f.order === "asc") p.set("order", "asc");
    p.set("limit", String(pageLimit()));
    if (cursor) p.set("cursor", cursor);
    return `?${p}`;
  }

  const pageLimit = () => Number(["20", "50", "100"].includes(state.filters.limit) ? state.filters.limit : DEFAULT_LIMIT);

  // ---- the list ----

  async function loadList(announce) {
    if (state.listCtl) state.listCtl.abort();
    const ctl = new AbortController();
    state.listCtl = ctl;
    const gen = ++state.listGen;
    const table = $("tasks");
    table.setAttribute("aria-busy", "true");
    try {
      const page = await call("GET", listQuery(state.cursors[state.page]), ctl.signal);
      if (gen !== state.listGen) return;
      renderList(page.tasks || [], page.nextCursor || "");
      stamp();
      if (announce) {
        const n = (page.tasks || []).length;
        say(n === 0 ? "No task matches these filters." : `Showing ${n} task${n === 1 ? "" : "s"}, page ${state.page + 1}.`);
      } else if ($("status").dataset.kind === "error") {
        say("");
      }
    } catch (err) {
      if (err.name === "AbortError" || gen !== state.listGen) return;
      say(`Could not load tasks: ${errText(err)}`, "error");
    } finally {
      if (gen === state.listGen) table.removeAttribute("aria-busy");
    }
  }

  function renderList(tasks, next) {
    state.next = next;
    state.shown = tasks.length;
    // Keep the keyboard focus on the same task across a refresh.
    const active = document.activeElement;
    const focusedRow = active && active.closest ? active.closest("#tasks-body tr") : null;
    const focusedId = focusedRow ? focusedRow.dataset.id : "";

    const rows = tasks.map(taskRow);
    $("tasks-body").replaceChildren(...rows);
    $("tasks-empty").hidden = tasks.length > 0;
    $("tasks").classList.toggle("is-empty", tasks.length === 0);

    if (focusedId) {
      // The task may have left the page (its status changed): then the
      // focus goes to the list's heading, not to the top of the page.
      const link = document.querySelector(`#tasks-body tr[data-id="${CSS.escape(focusedId)}"] a`);
      (link || $("tasks-heading")).focus();
    }
    const first = state.page * pageLimit() + 1;
    $("page-info").textContent =
      tasks.length === 0 ? `Page ${state.page + 1}` : `Page ${state.page + 1} · tasks ${fmtCount(first)}–${fmtCount(first + tasks.length - 1)}`;
    $("prev").disabled = state.page === 0;
    $("next").disabled = !next;
  }

  function taskRow(t) {
    const req = t.request || {};
    const reqText = `${req.method || ""} ${req.url || ""}`.trim();
    let last;
    if (t.progress && (t.status === "Running" || t.status === "Stopping")) {
      const pct = Math.round(Number(t.progress.percent) || 0);
      last = h(
        "span",
        { class: "row-progress" },
        h("progress", { max: "100", value: String(pct), "aria-label": `Progress of task ${t.id}` }),
        ` ${pct}%`,
        t.progress.message ? h("span", { class: "muted" }, ` ${t.progress.message}`) : null,
      );
    } else if (t.lastError) {
      last = h("span", { class: "error-text", title: t.lastError }, t.lastError);
    } else if (t.status === "Retrying" && t.nextAttemptTime) {
      last = h("span", { class: "muted" }, "next attempt ", timeEl(t.nextAttemptTime));
    } else if (t.status === "Enqueued" && t.nextAttemptTime && new Date(t.nextAttemptTime).getTime() > Date.now() + 1000) {
      last = h("span", { class: "muted" }, "delayed until ", timeEl(t.nextAttemptTime));
    } else {
      last = "";
    }
    let duration;
    if (t.durationMs !== undefined) duration = fmtDuration(t.durationMs);
    else if (t.startedTime && (t.status === "Running" || t.status === "Stopping"))
      duration = h("span", { class: "muted" }, fmtDuration(Date.now() - new Date(t.startedTime).getTime()));
    else duration = "—";

    const tr = h(
      "tr",
      { "data-id": t.id, "data-status": t.status },
      h("td", { class: "id" }, h("a", { href: taskHref(t.id), class: "mono" }, t.id)),
      h("td", {}, t.target),
      h("td", {}, badge(t.status)),
      h("td", { class: "nowrap" }, timeEl(t.createdTime)),
      h("td", { class: "num" }, String(t.invocationCount ?? 0)),
      h("td", { class: "num nowrap" }, duration),
      h("td", { class: "req", title: reqText }, h("span", { class: "mono" }, reqText)),
      h("td", { class: "last" }, last),
    );
    tr.addEventListener("click", (ev) => {
      if (ev.target.closest("a, button") || (window.getSelection && String(window.getSelection()))) return;
      location.hash = taskHref(t.id);
    });
    return tr;
  }

  // ---- counts ----

  let countsGen = 0;
  async function loadCounts() {
    const gen = ++countsGen;
    try {
      const body = await call("GET", "-/counts");
      if (gen !== countsGen) return;
      renderCounts(body.counts || []);
    } catch (err) {
      if (gen !== countsGen) return;
      say(`Could not load counts: ${errText(err)}`, "error");
    }
  }

  function renderCounts(counts) {
    const byTarget = new Map();
    const totals = Object.fromEntries(STATUSES.map((s) => [s, 0]));
    for (const c of counts) {
      if (!byTarget.has(c.target)) byTarget.set(c.target, Object.fromEntries(STATUSES.map((s) => [s, 0])));
      byTarget.get(c.target)[c.status] = (byTarget.get(c.target)[c.status] || 0) + c.count;
      totals[c.status] = (totals[c.status] || 0) + c.count;
    }
    $("counts-head").replaceChildren(
      h("th", { scope: "col" }, "Target"),
      ...STATUSES.map((s) => h("th", { scope: "col", class: "num" }, badge(s))),
      h("th", { scope: "col", class: "num" }, "Total"),
    );
    const row = (target, per, isTotal) => {
      const sum = STATUSES.reduce((a, s) => a + (per[s] || 0), 0);
      const label = isTotal ? "All targets" : target;
      return h(
        "tr",
        { class: isTotal ? "total" : "" },
        h("th", { scope: "row" }, label),
        ...STATUSES.map((s) => h("td", { class: "num" }, countCell(per[s] || 0, isTotal ? "" : target, s, label))),
        h("td", { class: "num" }, countCell(sum, isTotal ? "" : target, "", label)),
      );
    };
    const rows = [...byTarget.keys()].sort().map((t) => row(t, byTarget.get(t), false));
    if (byTarget.size > 1) rows.push(row("", totals, true));
    $("counts-body").replaceChildren(...rows);
    $("counts").hidden = byTarget.size === 0;
    $("counts-empty").hidden = byTarget.size > 0;
    $("targets").replaceChildren(...[...byTarget.keys()].sort().map((t) => h("option", { value: t })));
  }

  function countCell(n, target, status, label) {
    if (!n) return h("span", { class: "zero" }, h("span", { "aria-hidden": "true" }, "·"), h("span", { class: "visually-hidden" }, "0"));
    const what = `${status || "all"} tasks of ${target ? `target ${label}` : "all targets"}`;
    const b = h("button", { type: "button", class: "count", "aria-label": `${fmtCount(n)} ${what}: list them` }, fmtCount(n));
    b.addEventListener("click", () => {
      const f = {};
      if (target) f.target = target;
      if (status) f.status = status;
      applyFilters(f);
    });
    return b;
  }

  // ---- the detail view ----

  function clearDetail() {
    $("d-id").textContent = state.taskId;
    $("d-status").textContent = "";
    $("d-status").className = "badge";
    $("d-action-result").textContent = "";
    $("d-missing").hidden = true;
    $("d-body").hidden = false;
    $("d-payload").hidden = true;
    $("d-payload").textContent = "";
    $("d-payload-btn").textContent = "Show request body";
    for (const id of ["d-summary", "d-request", "d-req-headers", "d-response", "d-res-headers", "d-return", "d-events", "d-logs", "d-dest"])
      $(id).replaceChildren();
    document.title = `Task ${state.taskId} · ${TITLE}`;
  }

  async function loadDetail(announce) {
    const id = state.taskId;
    const gen = ++state.detailGen;
    try {
      const t = await call("GET", encodeURIComponent(id));
      if (gen !== state.detailGen || state.view !== "detail") return;
      renderDetail(t);
      stamp();
      if (announce) say(`Task ${t.id} is ${t.status}.`);
      else if ($("status").dataset.kind === "error") say("");
    } catch (err) {
      if (gen !== state.detailGen || state.view !== "detail") return;
      if (err instanceof APIError && (err.status === 404 || err.status === 400)) {
        $("d-missing").hidden = false;
        $("d-missing").textContent = err.status === 404 ? `No task has the ID ${id}.` : `Not a task ID: ${err.message}`;
        $("d-body").hidden = true;
        setActions(null);
        say(err.status === 404 ? "Task not found." : "Invalid task ID.", "error");
        return;
      }
      say(`Could not load the task: ${errText(err)}`, "error");
    }
  }

  function kv(dl, pairs) {
    dl.replaceChildren();
    for (const [k, v] of pairs) {
      if (v === undefined || v === null || v === "") continue;
      dl.append(h("dt", {}, k), h("dd", {}, v));
    }
  }

  function headerRows(tbody, headers) {
    const names = Object.keys(headers || {}).sort((a, b) => a.localeCompare(b));
    tbody.replaceChildren(
      ...names.map((k) => {
        const vals = [].concat(headers[k]).join(", ");
        return h("tr", {}, h("th", { scope: "row", class: "mono" }, k), h("td", { class: vals === "[redacted]" ? "mono muted" : "mono" }, vals));
      }),
    );
    if (names.length === 0) tbody.append(h("tr", {}, h("td", { class: "muted" }, "none")));
  }

  function setActions(t) {
    const stop = $("d-stop");
    const retry = $("d-retry");
    const canStop = !!t && STOPPABLE.has(t.status);
    const canRetry = !!t && RETRYABLE.has(t.status);
    stop.setAttribute("aria-disabled", String(!canStop));
    retry.setAttribute("aria-disabled", String(!canRetry));
    stop.title = canStop ? "Stop this task: no further attempt runs" : "Only an Enqueued, Running or Retrying task can be stopped";
    retry.title = canRetry ? "Run this task again with a fresh retry budget" : "Only a Failed, Stopped, Expired or Invalid task can be retried";
  }

  function renderDetail(t) {
    state.task = t;
    // Say where a stop or a retry asked from this page has led.
    const after = state.after;
    if (after && after.id === t.id && t.status !== after.status) {
      const out = $("d-action-result");
      if (after.kind === "stop" && t.status === "Stopped") {
        out.textContent = "Stopped: the handler has returned and no retry follows.";
        state.after = null;
      } else if (after.kind === "retry" && (t.status === "Succeeded" || RETRYABLE.has(t.status))) {
        out.className = t.status === "Succeeded" ? "action-result ok" : "action-result error";
        out.textContent = `The retried task ran again: ${t.status} after attempt ${t.invocationCount}.`;
        state.after = null;
      }
    }
    $("d-id").textContent = t.id;
    $("d-status").replaceWith(Object.assign(badge(t.status), { id: "d-status" }));
    setActions(t);
    $("d-missing").hidden = true;
    $("d-body").hidden = false;

    let duration = t.durationMs !== undefined ? fmtDuration(t.durationMs) : "";
    if (!duration && t.startedTime && (t.status === "Running" || t.status === "Stopping"))
      duration = `${fmtDuration(Date.now() - new Date(t.startedTime).getTime())} so far`;
    kv($("d-summary"), [
      ["Target", t.target],
      ["Created", timeEl(t.createdTime, true)],
      ["Started", t.startedTime ? timeEl(t.startedTime, true) : ""],
      ["Ended", t.endTime ? timeEl(t.endTime, true) : ""],
      ["Duration", duration],
      ["Attempts", String(t.invocationCount ?? 0)],
      ["Retries", String(t.alreadyRetriedTimes ?? 0)],
      ["Next attempt", t.nextAttemptTime && !RETRYABLE.has(t.status) && t.status !== "Succeeded" ? timeEl(t.nextAttemptTime, true) : ""],
      ["Last error", t.lastError ? h("span", { class: "error-text" }, t.lastError) : ""],
    ]);

    const p = t.progress;
    $("d-progress-box").hidden = !p;
    if (p) {
      const pct = Math.max(0, Math.min(100, Number(p.percent) || 0));
      $("d-progress").value = pct;
      $("d-progress").textContent = `${pct}%`;
      $("d-progress-text").textContent = `${Math.round(pct * 10) / 10}%${p.message ? ` · ${p.message}` : ""} · updated ${fmtTime(p.updatedAt)}`;
    }

    const req = t.request || {};
    kv($("d-request"), [
      ["Method", h("span", { class: "mono" }, req.method || "")],
      ["URL", h("span", { class: "mono break" }, req.url || "")],
      ["Host", req.host],
      ["Remote address", req.remoteAddr],
      ["Body size", fmtBytes(req.bodySize || 0)],
    ]);
    headerRows($("d-req-headers"), req.headers);
    $("d-req-headers-n").textContent = String(Object.keys(req.headers || {}).length);
    const pb = $("d-payload-btn");
    pb.hidden = !req.bodySize;

    const res = t.response;
    $("d-no-response").hidden = !!res;
    for (const id of ["d-response", "d-res-headers-h", "d-return-h", "d-return"]) $(id).hidden = !res;
    $("d-res-headers").closest("table").hidden = !res;
    if (res) {
      kv($("d-response"), [
        ["Status code", res.statusCode
          ? h("span", { class: res.statusCode >= 400 ? "mono error-text" : "mono" }, String(res.statusCode))
          : "none: the attempt was cut short before it answered"],
        ["Body size", `${fmtBytes(res.bodySize || 0)}${res.truncated ? " (truncated: only the start was kept)" : ""}`],
        ["Encoding", t.returnPayloadEncoding === "base64" ? "binary, shown as base64" : ""],
      ]);
      headerRows($("d-res-headers"), res.headers);
      $("d-return").textContent = prettyBody(t.returnPayload || "", t.returnPayloadEncoding) || "(empty)";
    }

    const events = t.events || [];
    $("d-events").replaceChildren(
      ...events.map((e) =>
        h("tr", {}, h("td", { class: "nowrap" }, timeEl(e.time, true)), h("td", {}, badge(e.status)), h("td", { class: "num" }, e.attempt ? String(e.attempt) : ""), h("td", { class: "break" }, e.detail || "")),
      ),
    );

    const logs = t.logs || [];
    $("d-no-logs").hidden = logs.length > 0;
    $("d-logs").closest("table").hidden = logs.length === 0;
    $("d-logs").replaceChildren(
      ...logs.map((l) =>
        h(
          "tr",
          {},
          h("td", { class: "nowrap" }, timeEl(l.time, true)),
          h("td", { class: `level l-${String(l.level).toLowerCase()}` }, l.level),
          h("td", { class: "num" }, l.attempt ? String(l.attempt) : ""),
          h("td", { class: "mono break" }, l.message),
        ),
      ),
    );

    const dests = t.destinationStatus || [];
    $("d-no-dest").hidden = dests.length > 0;
    $("d-dest-table").hidden = dests.length === 0;
    $("d-dest").replaceChildren(
      ...dests.map((d) =>
        h(
          "tr",
          {},
          h("td", {}, d.destination),
          h("td", {}, h("span", { class: `dstatus d-${d.status}`, title: d.updatedAt ? `updated ${fmtTime(d.updatedAt, true)}` : null }, d.status)),
          h("td", { class: "num" }, String(d.tries ?? 0)),
          h("td", { class: "break error-text" }, d.lastError || ""),
        ),
      ),
    );
  }

  function prettyBody(text, encoding) {
    if (encoding === "base64") return text;
    const trimmed = text.trim();
    if ((trimmed.startsWith("{") || trimmed.startsWith("[")) && trimmed.length < 200000) {
      try {
        return JSON.stringify(JSON.parse(trimmed), null, 2);
      } catch {
        /* not JSON: as is */
      }
    }
    return text;
  }

  async function togglePayload() {
    const pre = $("d-payload");
    const btn = $("d-payload-btn");
    if (!pre.hidden) {
      pre.hidden = true;
      btn.textContent = "Show request body";
      return;
    }
    btn.setAttribute("aria-busy", "true");
    try {
      const t = await call("GET", `${encodeURIComponent(state.taskId)}?includePayload=true`);
      const req = t.request || {};
      pre.textContent = req.requestPayloadOmitted ? `(not shown: ${req.bodySize} bytes, kept in a blob file)`
        : req.requestPayloadEncoding === "base64" ? `(binary, base64)\n${req.requestPayload || ""}`
        : prettyBody(req.requestPayload || "", "") || "(empty)";
      pre.hidden = false;
      btn.textContent = "Hide request body";
    } catch (err) {
      say(`Could not load the request body: ${errText(err)}`, "error");
    } finally {
      btn.removeAttribute("aria-busy");
    }
  }

  async function act(kind) {
    const btn = $(kind === "stop" ? "d-stop" : "d-retry");
    const out = $("d-action-result");
    if (btn.getAttribute("aria-disabled") === "true") {
      out.className = "action-result error";
      out.textContent = btn.title + ".";
      return;
    }
    const id = state.taskId;
    btn.setAttribute("aria-busy", "true");
    out.className = "action-result";
    out.textContent = kind === "stop" ? "Stopping…" : "Retrying…";
    try {
      const t = await call("POST", `${encodeURIComponent(id)}/${kind}`);
      out.className = "action-result ok";
      if (kind === "stop") {
        out.textContent = t.status === "Stopping" ? "Stop requested: the handler's context is cancelled; the task becomes Stopped when it returns." : `Stopped: the task is ${t.status}.`;
      } else {
        out.textContent = `Retry accepted: the task is ${t.status} again with a fresh retry budget.`;
      }
      state.after = { id, kind, status: t.status };
      if (state.view === "detail" && state.taskId === id) renderDetail(t);
      loadCounts();
      if (!state.live) setTimeout(() => loadDetail(false), 500); // show where it settles
    } catch (err) {
      out.className = "action-result error";
      out.textContent = `${kind === "stop" ? "Stop" : "Retry"} failed: ${errText(err)}`;
      loadDetail(false);
    } finally {
      btn.removeAttribute("aria-busy");
    }
  }

  // ---- the test form ----

  async function sendTest(ev) {
    ev.preventDefault();
    const out = $("send-result");
    const method = $("send-method").value;
    const path = $("send-path").value.trim();
    const body = $("send-body").value;
    out.className = "send-result";
    out.replaceChildren();
    if (!path.startsWith("/") || path.startsWith("//")) {
      out.className = "send-result error";
      out.textContent = "The path must start with a single /, such as /work?ms=3000.";
      $("send-path").setAttribute("aria-invalid", "true");
      $("send-path").focus();
      return;
    }
    $("send-path").removeAttribute("aria-invalid");
    const headers = { "X-Fc-Invocation-Type": "Async" };
    const hasBody = body !== "" && method !== "GET";
    if (hasBody) headers["Content-Type"] = /^\s*[[{]/.test(body) ? "application/json" : "text/plain; charset=utf-8";
    const submit = $("send-submit");
    submit.disabled = true;
    out.textContent = "Sending…";
    try {
      const res = await fetch(path, { method, headers, body: hasBody ? body : undefined, credentials: "same-origin", cache: "no-store", redirect: "manual" });
      const text = await res.text();
      let json = null;
      try {
        json = JSON.parse(text);
      } catch {
        json = null;
      }
      if (res.status === 202) {
        const id = (json && typeof json.id === "string" && json.id) || res.headers.get("X-Fc-Request-Id") || "";
        out.className = "send-result ok";
        out.replaceChildren("Accepted (202): task ", h("a", { href: taskHref(id), class: "mono", id: "send-task-link" }, id), " — open it to watch it run.");
        if (state.view === "list") {
          loadList(false);
          loadCounts();
        }
      } else if (res.ok) {
        out.className = "send-result error";
        out.textContent = `Answered ${res.status} at once: this path ran synchronously, so it is not an async target.`;
      } else {
        const detail = json && json.message ? `${json.message}${json.code ? ` (${json.code})` : ""}` : text.slice(0, 200) || res.statusText;
        out.className = "send-result error";
        out.textContent = `Answered ${res.status}: ${detail}`;
      }
    } catch (err) {
      out.className = "send-result error";
      out.textContent = `Not sent: ${err && err.message ? err.message : err}`;
    } finally {
      submit.disabled = false;
    }
  }

  // ---- live refresh ----

  function stamp() {
    const d = new Date();
    $("updated").textContent = `Updated ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function tick() {
    state.timer = 0;
    if (!state.live) return;
    if (!document.hidden) {
      loadCounts();
      if (state.view === "list") loadList(false);
      else loadDetail(false);
    }
    state.timer = setTimeout(tick, REFRESH_MS);
  }

  function setLive(on) {
    state.live = on;
    clearTimeout(state.timer);
    state.timer = 0;
    if (on) state.timer = setTimeout(tick, REFRESH_MS);
    say(on ? `Live refresh on: every ${REFRESH_MS / 1000} s.` : "Live refresh off.");
  }

  // ---- wiring ----

  function init() {
    $("filters").addEventListener("submit", (ev) => {
      ev.preventDefault();
      applyFilters(readFilterForm());
    });
    $("f-reset").addEventListener("click", () => applyFilters({}));
    $("f-range").addEventListener("change", showCustomRange);
    $("prev").addEventListener("click", () => {
      if (state.page === 0) return;
      state.page--;
      loadList(true);
    });
    $("next").addEventListener("click", () => {
      if (!state.next) return;
      state.cursors[state.page + 1] = state.next;
      state.cursors.length = state.page + 2;
      state.page++;
      loadList(true);
    });
    $("live").addEventListener("change", (ev) => setLive(ev.target.checked));
    $("d-stop").addEventListener("click", () => act("stop"));
    $("d-retry").addEventListener("click", () => act("retry"));
    $("d-refresh").addEventListener("click", () => loadDetail(true));
    $("d-payload-btn").addEventListener("click", togglePayload);
    $("back").addEventListener("click", () => {
      state.cameFrom = state.taskId;
    });
    const form = $("send-form");
    if (form) form.addEventListener("submit", sendTest);
    document.addEventListener("keydown", (ev) => {
      if (ev.key !== "Escape" || state.view !== "detail") return;
      if (ev.target.closest && ev.target.closest("input, textarea, select")) return;
      state.cameFrom = state.taskId;
      location.hash = state.listHash;
    });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && state.live) {
        clearTimeout(state.timer);
        tick();
      }
    });
    window.addEventListener("hashchange", () => {
      if (parseHash().view === "list" && state.view === "detail" && !state.cameFrom) state.cameFrom = state.taskId;
      route(true);
      state.cameFrom = "";
      if (state.view === "list") document.title = TITLE;
    });

    state.live = $("live").checked;
    route(false);
    if (state.live) state.timer = setTimeout(tick, REFRESH_MS);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
