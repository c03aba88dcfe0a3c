/* The conversation page: thread list with search and paging, chat bubbles, per-turn calls, live. */
"use strict";

(() => {
  const { el, clear, getJSON, href } = V;
  const $ = (id) => document.getElementById(id);
  const PAGE = 50;
  const state = {
    query: "",
    cursor: null,
    pages: 0,
    open: null,
    turns: [],
    before: null,
    expanded: new Set(),
  };

  // ---- thread list -------------------------------------------------------------------------

  async function loadThreads(append) {
    const status = $("list-status");
    if (!append) {
      state.cursor = null;
      state.pages = 0;
    }
    let page;
    try {
      page = await getJSON("/api/viewer/threads", { q: state.query, cursor: state.cursor, limit: PAGE });
    } catch (error) {
      status.textContent = "Could not load threads: " + error.message;
      return;
    }
    const list = $("threads");
    if (!append) clear(list);
    for (const thread of page.threads) list.append(threadItem(thread));
    state.cursor = page.next_cursor;
    state.pages += 1;
    $("more").hidden = !page.next_cursor;
    const shown = list.children.length;
    status.textContent = state.query
      ? `${shown}${page.next_cursor ? "+" : ""} conversations mention “${state.query}”`
      : `${shown}${page.next_cursor ? "+" : ""} conversations`;
    markActive();
  }

  function threadItem(thread) {
    const snippet = thread.match || thread.preview || "";
    const item = el(
      "li",
      { class: "thread-item", title: thread.thread_id, onclick: () => selectThread(thread.thread_id) },
      el("div", { class: "thread-id", text: thread.thread_id }),
      el(
        "div",
        { class: "thread-sub" },
        el("span", { class: "count", text: `${thread.message_count} messages` }),
        el("time", { datetime: thread.last_at, text: V.time(thread.last_at) }),
      ),
      snippet ? el("div", { class: thread.match ? "thread-snippet match" : "thread-snippet", text: snippet }) : null,
    );
    item.threadId = thread.thread_id;
    return item;
  }

  function markActive() {
    for (const item of $("threads").children) item.classList.toggle("active", item.threadId === state.open);
  }

  // ---- one thread ------------------------------------------------------------------------------

  function selectThread(id) {
    const hash = "#t=" + encodeURIComponent(id);
    if (window.location.hash === hash) openThread(id);
    else window.location.hash = hash;
  }

  function threadFromHash() {
    const match = /^#t=(.*)$/.exec(window.location.hash);
    if (!match) return null;
    try {
      return decodeURIComponent(match[1]);
    } catch (_) {
      return null;
    }
  }

  async function openThread(id, live) {
    if (id !== state.open) {
      state.open = id;
      state.turns = [];
      state.before = null;
      state.expanded.clear();
    }
    markActive();
    let view;
    try {
      view = await getJSON("/api/viewer/thread", { id, limit: PAGE });
    } catch (error) {
      showThreadError(id, error);
      return;
    }
    if (state.open !== id) return;
    const fresh = view.turns;
    const freshIds = new Set(fresh.map((t) => t.turn_id));
    const first = fresh.length ? Date.parse(fresh[0].started_at) : Infinity;
    const older = state.turns.filter((t) => !freshIds.has(t.turn_id) && Date.parse(t.started_at) < first);
    state.turns = older.concat(fresh);
    if (!older.length) state.before = view.next_before;
    render(live);
  }

  async function loadEarlier() {
    if (!state.before) return;
    const id = state.open;
    const view = await getJSON("/api/viewer/thread", { id, before: state.before, limit: PAGE });
    if (state.open !== id) return;
    state.turns = view.turns.concat(state.turns);
    state.before = view.next_before;
    const box = $("conversation");
    const height = box.scrollHeight;
    render(false, true);
    box.scrollTop = box.scrollHeight - height;
  }

  function showThreadError(id, error) {
    $("empty").hidden = true;
    $("thread").hidden = false;
    $("thread-title").textContent = id;
    $("thread-meta").textContent = "";
    $("earlier").hidden = true;
    clear($("conversation")).append(el("div", { class: "error", text: error.message }));
  }

  function render(live, keepPosition) {
    const box = $("conversation");
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    $("empty").hidden = true;
    $("thread").hidden = false;
    $("thread-title").textContent = state.open;
    const messages = state.turns.reduce((n, t) => n + t.messages.length, 0);
    const cost = state.turns.reduce((sum, t) => (t.cost === null ? sum : (sum || 0) + t.cost), null);
    $("thread-meta").textContent =
      `${state.turns.length}${state.before ? "+" : ""} turns · ${messages} messages · cost ${V.cost(cost)}`;
    $("export").setAttribute("href", href("/api/viewer/thread/export", { id: state.open }));
    $("earlier").hidden = !state.before;
    clear(box);
    for (const turn of state.turns) box.append(renderTurn(turn));
    if (!keepPosition && (!live || atBottom)) box.scrollTop = box.scrollHeight;
  }

  function badge(text, kind) {
    return el("span", { class: "badge" + (kind ? " " + kind : ""), text });
  }

  function renderTurn(turn) {
    const tokens = `${V.num(turn.prompt_tokens)} → ${V.num(turn.completion_tokens)} tok`;
    const head = el(
      "div",
      { class: "turn-head" },
      el("time", { datetime: turn.started_at, text: V.time(turn.started_at) }),
      badge(turn.route || "no route", "route"),
      // Which product answered (its DashScope app id or OpenAI model): the default goes unsaid.
      turn.profile && turn.profile !== "default" ? badge(turn.profile, "profile") : null,
      badge(turn.status, "status-" + turn.status),
      turn.error_code ? badge(turn.error_code, "status-failed") : null,
      el("span", { class: "metric", title: "latency", text: "latency " + V.ms(turn.latency_ms) }),
      el("span", { class: "metric", title: "time to first token", text: "TTFT " + V.ms(turn.ttft_ms) }),
      el("span", { class: "metric", title: "prompt → completion tokens", text: tokens }),
      el("span", { class: "metric", title: "cost", text: "cost " + V.cost(turn.cost) }),
      (turn.flags || []).map((flag) => badge(flag, "flag")),
    );
    const calls = el("div", { class: "calls", hidden: true });
    const toggle = el("button", {
      type: "button",
      class: "calls-toggle",
      text: `model calls (${turn.calls || 0})`,
      onclick: () => toggleCalls(turn.turn_id, calls),
    });
    head.append(toggle);
    const section = el("section", { class: "turn" }, head);
    for (const message of turn.messages) section.append(renderMessage(message, turn));
    if (turn.error) section.append(el("div", { class: "turn-error", text: turn.error }));
    section.append(calls);
    if (state.expanded.has(turn.turn_id)) showCalls(turn.turn_id, calls);
    return section;
  }

  function stamp(iso) {
    return el("time", { class: "stamp", datetime: iso, text: V.time(iso) });
  }

  function renderMessage(message, turn) {
    if (message.role === "user") {
      return el(
        "div",
        { class: "row human" },
        el("div", { class: "bubble human" }, el("div", { class: "text", text: message.content }), stamp(turn.started_at)),
      );
    }
    if (message.role === "tool") {
      return el(
        "div",
        { class: "row tool" },
        el(
          "div",
          { class: "bubble tool" },
          el("div", { class: "tool-name", text: "tool · " + (message.tool_name || "?") }),
          el("div", { class: "label", text: "arguments" }),
          el("pre", { class: "tool-args", text: V.pretty(message.tool_args ?? {}) }),
          el("div", { class: "label", text: "result" }),
          el("pre", { class: "tool-result", text: V.pretty(message.content) }),
          stamp(message.created_at),
        ),
      );
    }
    const calls = (message.tool_calls || []).map((call) =>
      el("div", { class: "tool-call", text: `→ ${call.name}(${JSON.stringify(call.args ?? {})})` }),
    );
    // Filler keeps the speaker talking while a tool runs; a fallback is what the speaker was
    // told when the turn failed (the server's words, not the model's).
    const kind = message.is_filler ? "filler" : message.is_fallback ? "fallback" : null;
    return el(
      "div",
      { class: "row ai" },
      el(
        "div",
        { class: kind ? "bubble ai " + kind : "bubble ai" },
        kind ? badge(kind, kind + "-badge") : null,
        message.content ? el("div", { class: "text", text: message.content }) : null,
        calls,
        el("div", { class: "bubble-foot" }, message.model ? el("span", { class: "model", text: message.model }) : null, stamp(message.created_at)),
      ),
    );
  }

  // ---- captured calls of a turn ----------------------------------------------------------------

  function toggleCalls(turnId, box) {
    if (!box.hidden) {
      box.hidden = true;
      state.expanded.delete(turnId);
      return;
    }
    state.expanded.add(turnId);
    showCalls(turnId, box);
  }

  async function showCalls(turnId, box) {
    box.hidden = false;
    clear(box).append(el("div", { class: "muted", text: "loading calls…" }));
    let data;
    try {
      data = await getJSON(`/api/viewer/turns/${encodeURIComponent(turnId)}/calls`);
    } catch (error) {
      clear(box).append(el("div", { class: "error", text: error.message }));
      return;
    }
    clear(box);
    if (!data.calls.length) {
      box.append(el("div", { class: "muted", text: "No captured calls for this turn (capture off?)." }));
      return;
    }
    // The ids the command line takes: `lang-agent calls list --turn ID`, `calls … --id N`.
    box.append(
      el("div", { class: "calls-head muted" }, "turn ", el("code", { class: "turn-id", text: turnId }), " · lang-agent calls list --turn ID"),
    );
    for (const call of data.calls) box.append(renderCall(call));
  }

  function renderCall(call) {
    const detail = el("div", { class: "call-detail", hidden: true });
    const flags = Object.keys(call.flags || {});
    const row = el(
      "div",
      { class: "call-row" },
      el("span", { class: "call-id", title: `lang-agent calls inspect / export / replay / diff --id ${call.id}`, text: "#" + call.id }),
      badge(call.node || "call", "route"),
      el("span", { class: "model", text: call.model || "?" }),
      badge(call.status + (call.status_code ? " " + call.status_code : ""), call.status === "ok" ? "status-ok" : "status-failed"),
      el("span", { class: "metric", text: "latency " + V.ms(call.latency_ms) }),
      el("span", { class: "metric", text: "TTFT " + V.ms(call.ttft_ms) }),
      el("span", { class: "metric", text: `${V.num(call.prompt_tokens)} → ${V.num(call.completion_tokens)} tok` }),
      el("span", { class: "metric", text: "cost " + V.cost(call.cost) }),
      call.finish_reason ? badge(call.finish_reason, "muted-badge") : null,
      flags.map((flag) => badge(flag, "flag")),
      el("button", { type: "button", class: "link", text: "request / response", onclick: () => toggleDetail(call, detail) }),
      el("a", {
        class: "link export-case",
        href: href(`/api/viewer/calls/${encodeURIComponent(call.call_id)}/export`, { category: "badcase" }),
        download: "",
        text: "export as bad case",
      }),
    );
    return el("div", { class: "call" }, row, call.error ? el("div", { class: "turn-error", text: call.error }) : null, detail);
  }

  async function toggleDetail(call, box) {
    if (!box.hidden) {
      box.hidden = true;
      return;
    }
    box.hidden = false;
    clear(box).append(el("div", { class: "muted", text: "loading…" }));
    let full;
    try {
      full = await getJSON(`/api/viewer/calls/${encodeURIComponent(call.call_id)}`);
    } catch (error) {
      clear(box).append(el("div", { class: "error", text: error.message }));
      return;
    }
    const part = (title, value) =>
      value === null || value === undefined ? null : el("details", { open: title.endsWith("body") ? "" : null }, el("summary", { text: title }), el("pre", { text: V.pretty(value) }));
    clear(box).append(
      el("div", { class: "muted", text: `${full.method} ${full.url}` }),
      part("flags", full.flags),
      part("request body", full.request_body),
      part("response body", full.response_body),
      part("request header", full.request_header),
      part("response header", full.response_header),
      full.response_sse ? part("response events (SSE)", full.response_sse) : null,
    );
  }

  // ---- live updates --------------------------------------------------------------------------

  function debounce(fn, wait) {
    let timer = null;
    return (...args) => {
      clearTimeout(timer);
      timer = setTimeout(() => fn(...args), wait);
    };
  }

  const refreshOpen = debounce(() => state.open && openThread(state.open, true), 250);
  const refreshList = debounce(() => {
    if (!state.query && state.pages <= 1) loadThreads(false);
  }, 1500);

  function connectLive() {
    const indicator = $("live");
    const source = new EventSource("/api/viewer/events");
    source.addEventListener("ready", () => indicator.classList.add("on"));
    source.addEventListener("error", () => indicator.classList.remove("on"));
    source.addEventListener("turn", (event) => {
      let data = {};
      try {
        data = JSON.parse(event.data);
      } catch (_) {
        return;
      }
      if (data.resync || data.thread_id === state.open) refreshOpen();
      refreshList();
    });
  }

  // ---- wiring --------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    const search = $("search");
    const runSearch = debounce(() => {
      state.query = search.value.trim();
      loadThreads(false);
    }, 300);
    search.addEventListener("input", runSearch);
    $("search-form").addEventListener("submit", (event) => {
      event.preventDefault();
      state.query = search.value.trim();
      loadThreads(false);
    });
    $("more").addEventListener("click", () => loadThreads(true));
    $("earlier").addEventListener("click", loadEarlier);
    window.addEventListener("hashchange", () => {
      const id = threadFromHash();
      if (id !== null) openThread(id);
    });
    loadThreads(false);
    const id = threadFromHash();
    if (id !== null) openThread(id);
    connectLive();
  });
})();
