/* Shared helpers for the viewer pages: DOM building (text only, never HTML), fetch, formats. */
"use strict";

const V = (() => {
  /** Create an element; `props.text` becomes textContent, `props.class` the class list. */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "text") node.textContent = String(value);
      else if (name === "class") node.className = value;
      else if (name === "dataset") Object.assign(node.dataset, value);
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  async function getJSON(path, params) {
    const url = new URL(path, window.location.origin);
    for (const [name, value] of Object.entries(params || {})) {
      if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
    }
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (response.status === 401) {
      window.location.assign("/login");
      throw new Error("not logged in");
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const message = (body.error && body.error.message) || response.statusText;
      const error = new Error(message);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  /** A URL with query parameters, for links (set with setAttribute, so never parsed as HTML). */
  function href(path, params) {
    const url = new URL(path, window.location.origin);
    for (const [name, value] of Object.entries(params || {})) url.searchParams.set(name, value);
    return url.pathname + url.search;
  }

  function time(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    const today = new Date();
    const sameDay = d.toDateString() === today.toDateString();
    return sameDay ? d.toLocaleTimeString() : d.toLocaleString();
  }

  function ms(value) {
    if (value === null || value === undefined) return "–";
    return value >= 1000 ? (value / 1000).toFixed(2) + " s" : Math.round(value) + " ms";
  }

  function cost(value) {
    if (value === null || value === undefined) return "–";
    if (value === 0) return "0";
    if (Math.abs(value) >= 1) return value.toFixed(2);
    if (Math.abs(value) >= 0.01) return value.toFixed(4);
    return String(Number(value.toPrecision(2)));
  }

  function num(value) {
    if (value === null || value === undefined) return "–";
    return Number(value).toLocaleString();
  }

  function pct(value) {
    if (value === null || value === undefined) return "–";
    return (value * 100).toFixed(1) + " %";
  }

  function pretty(value) {
    if (typeof value === "string") {
      try {
        return JSON.stringify(JSON.parse(value), null, 2);
      } catch (_) {
        return value;
      }
    }
    return JSON.stringify(value, null, 2);
  }

  return { el, clear, getJSON, href, time, ms, cost, num, pct, pretty };
})();

// Show "Log out" only when the viewer has keys (and so a login).
document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("logout");
  if (!form) return;
  V.getJSON("/api/viewer/health")
    .then((health) => {
      form.hidden = !health.auth;
    })
    .catch(() => {});
});
