/* The dashboard page: summary cards and charts from /api/viewer/dashboard. */
"use strict";

(() => {
  const { el, clear, getJSON } = V;
  const $ = (id) => document.getElementById(id);
  const RANGE_KEY = "lang-agent-viewer-range";

  function card(name, value) {
    return el("div", { class: "card" }, el("div", { class: "value", text: value }), el("div", { class: "name", text: name }));
  }

  function cards(s) {
    const [l50, l90, l99] = s.latency || [];
    const [t50, t90, t99] = s.ttft || [];
    clear($("cards")).append(
      card("turns", V.num(s.turns)),
      card("turn success", V.pct(s.success_rate)),
      card("model calls", V.num(s.calls)),
      card("call success", V.pct(s.call_success_rate)),
      card("latency p50 / p90 / p99", `${V.ms(l50)} / ${V.ms(l90)} / ${V.ms(l99)}`),
      card("TTFT p50 / p90 / p99", `${V.ms(t50)} / ${V.ms(t90)} / ${V.ms(t99)}`),
      card("tokens (prompt → completion)", `${V.num(s.prompt_tokens)} → ${V.num(s.completion_tokens)}`),
      card("cost", V.cost(s.cost)),
    );
  }

  function modelsTable(rows) {
    const table = clear($("models"));
    if (!rows.length) return;
    const head = ["model", "calls", "ok", "prompt tok", "completion tok", "cached tok", "cost", "latency p50", "latency p95", "TTFT p50"];
    table.append(el("tr", {}, head.map((h) => el("th", { text: h }))));
    for (const m of rows) {
      const cells = [m.model, V.num(m.calls), V.num(m.ok), V.num(m.prompt_tokens), V.num(m.completion_tokens), V.num(m.cached_tokens), V.cost(m.cost), V.ms(m.latency_p50), V.ms(m.latency_p95), V.ms(m.ttft_p50)];
      table.append(el("tr", {}, cells.map((c) => el("td", { text: c }))));
    }
  }

  function chart(id, draw) {
    const box = clear($(id));
    draw(box);
  }

  async function load() {
    const hours = $("range").value;
    const status = $("dash-status");
    status.textContent = "loading…";
    let d;
    try {
      d = await getJSON("/api/viewer/dashboard", { hours });
    } catch (error) {
      status.textContent = "Could not load: " + error.message;
      return;
    }
    status.textContent = `${d.bucket} buckets · updated ${new Date().toLocaleTimeString()}`;
    const domain = [d.since, d.until];
    cards(d.summary);
    chart("chart-volume", (box) =>
      Charts.line(box, {
        xDomain: domain,
        integer: true,
        yFormat: (v) => V.num(Math.round(v)),
        series: [
          { name: "turns", points: d.turns.map((r) => [r.bucket, r.turns]) },
          { name: "model calls", points: d.calls.map((r) => [r.bucket, r.calls]) },
        ],
      }),
    );
    chart("chart-success", (box) =>
      Charts.line(box, {
        xDomain: domain,
        yMax: 1,
        yFormat: (v) => Math.round(v * 100) + "%",
        series: [
          { name: "turns ok", points: d.turns.map((r) => [r.bucket, r.turns ? r.ok / r.turns : null]) },
          { name: "calls ok", points: d.calls.map((r) => [r.bucket, r.calls ? r.ok / r.calls : null]) },
        ],
      }),
    );
    for (const [id, key] of [["chart-latency", "latency"], ["chart-ttft", "ttft"]]) {
      chart(id, (box) =>
        Charts.line(box, {
          xDomain: domain,
          yFormat: V.ms,
          series: [
            { name: "p50", points: d.turns.map((r) => [r.bucket, r[key + "_p50"]]) },
            { name: "p95", points: d.turns.map((r) => [r.bucket, r[key + "_p95"]]), color: "#dc2626" },
          ],
        }),
      );
    }
    const models = d.by_model.map((m) => m.model);
    chart("chart-tokens", (box) =>
      Charts.bars(box, {
        labels: models,
        integer: true,
        yFormat: (v) => V.num(Math.round(v)),
        series: [
          { name: "prompt", values: d.by_model.map((m) => m.prompt_tokens) },
          { name: "completion", values: d.by_model.map((m) => m.completion_tokens) },
          { name: "cached", values: d.by_model.map((m) => m.cached_tokens) },
        ],
      }),
    );
    chart("chart-cost", (box) =>
      Charts.bars(box, { labels: models, yFormat: V.cost, series: [{ name: "cost", values: d.by_model.map((m) => m.cost) }] }),
    );
    const flagNames = [...new Set(d.flags.map((f) => f.flag))];
    chart("chart-flags", (box) =>
      Charts.line(box, {
        xDomain: domain,
        integer: true,
        yFormat: (v) => V.num(Math.round(v)),
        series: flagNames.map((name) => ({
          name,
          points: d.flags.filter((f) => f.flag === name).map((f) => [f.bucket, f.calls]),
        })),
      }),
    );
    chart("chart-routes", (box) =>
      Charts.bars(box, {
        labels: d.routes.map((r) => r.route),
        integer: true,
        yFormat: (v) => V.num(Math.round(v)),
        series: [{ name: "turns", values: d.routes.map((r) => r.turns) }],
      }),
    );
    modelsTable(d.by_model);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const range = $("range");
    const saved = window.localStorage.getItem(RANGE_KEY);
    if (saved && [...range.options].some((o) => o.value === saved)) range.value = saved;
    range.addEventListener("change", () => {
      window.localStorage.setItem(RANGE_KEY, range.value);
      load();
    });
    $("reload").addEventListener("click", load);
    load();
    setInterval(load, 60000);
  });
})();
