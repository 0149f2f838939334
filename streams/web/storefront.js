// The recstream storefront page: plain script, no build step.
// Clicks and searches are POSTed as real events (/v1/events/*); the recommendations
// and the open session are polled from the worker (/v1/users/{id}/...).
"use strict";

const POLL_MS = 1000;
const state = {
  catalog: new Map(), // item_id -> {item_id, category, price}
  lastRecs: "",
  lastSession: "",
  polling: null,
  seq: 0,
};

const $ = (id) => document.getElementById(id);

function shopper() {
  return $("shopper").value.trim();
}

function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function eventId(kind) {
  state.seq += 1;
  const random = (crypto.randomUUID && crypto.randomUUID()) || String(Math.random()).slice(2);
  return `web-${kind}-${random}-${state.seq}`;
}

function userPath(suffix) {
  return `/v1/users/${encodeURIComponent(shopper())}/${suffix}`;
}

async function getJson(url) {
  const started = performance.now();
  const response = await fetch(url, { cache: "no-store" });
  const body = await response.json();
  return { response, body, ms: performance.now() - started };
}

async function postEvent(kind, event) {
  const response = await fetch(`/v1/events/${kind}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(event),
  });
  const body = await response.json();
  if (!response.ok) {
    throw new Error(body.error || `HTTP ${response.status}`);
  }
  return body;
}

async function click(product, action) {
  const user = shopper();
  if (!user) {
    setStatus("pick a shopper first", true);
    return;
  }
  const event = {
    event_id: eventId(action),
    user_id: user,
    item_id: product.item_id,
    action,
    ts: Date.now() / 1000,
  };
  if (product.category) event.category = product.category;
  if (product.price !== null && product.price !== undefined) event.price = product.price;
  try {
    const sent = await postEvent("clicks", event);
    setStatus(`${action} ${product.item_id} → ${sent.topic}[${sent.partition}]@${sent.offset}`);
    poll();
  } catch (err) {
    setStatus(`click refused: ${err.message}`, true);
  }
}

async function search(query) {
  const user = shopper();
  if (!user) {
    setStatus("pick a shopper first", true);
    return;
  }
  const event = { event_id: eventId("search"), user_id: user, query, ts: Date.now() / 1000 };
  try {
    const sent = await postEvent("searches", event);
    setStatus(`search "${query}" → ${sent.topic}[${sent.partition}]@${sent.offset}`);
    poll();
  } catch (err) {
    setStatus(`search refused: ${err.message}`, true);
  }
}

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text) node.textContent = text;
  return node;
}

function renderCatalog(items) {
  const byCategory = new Map();
  for (const item of items) {
    state.catalog.set(item.item_id, item);
    const key = item.category || "products";
    if (!byCategory.has(key)) byCategory.set(key, []);
    byCategory.get(key).push(item);
  }
  const root = $("catalog");
  root.replaceChildren();
  for (const [category, products] of [...byCategory.entries()].sort()) {
    const group = el("div", { class: "category" });
    group.append(el("h3", {}, category));
    const list = el("div", { class: "products" });
    for (const product of products) {
      const card = el("div", {
        class: "product",
        "data-item": product.item_id,
        "data-category": product.category || "",
      });
      const view = el("button", { class: "view", type: "button" }, product.item_id);
      if (product.price !== null && product.price !== undefined) {
        view.title = `${product.category || ""} · ${product.price.toFixed(2)}`;
      }
      view.addEventListener("click", () => {
        card.classList.add("clicked");
        click(product, "view");
      });
      const cart = el("button", { class: "cart", type: "button", title: "add to cart" }, "+ cart");
      cart.addEventListener("click", () => click(product, "add_to_cart"));
      card.append(view, cart);
      list.append(card);
    }
    group.append(list);
    root.append(group);
  }
}

function renderRecs(rec, ms) {
  $("rec-latency").textContent = ms.toFixed(1);
  const key = JSON.stringify([rec.trigger_event_id, rec.items, rec.model_version, rec.fallback]);
  if (key === state.lastRecs) return;
  state.lastRecs = key;
  $("rec-version").textContent = rec.model_version || "–";
  $("rec-kind").textContent = rec.fallback ? "popular (fallback)" : "personal";
  $("rec-trigger").textContent = rec.trigger_event_id || "–";
  const list = $("recs");
  list.classList.toggle("fallback", rec.fallback);
  list.dataset.fallback = String(rec.fallback);
  list.dataset.trigger = rec.trigger_event_id;
  list.replaceChildren();
  for (const item of rec.items) {
    const product = state.catalog.get(item.item_id);
    const category = product && product.category ? product.category : "";
    const li = el("li", { "data-item": item.item_id, "data-category": category });
    li.append(el("strong", {}, item.item_id));
    if (category) li.append(" ", el("span", { class: "cat" }, category));
    if (!rec.fallback) li.append(" ", el("span", { class: "cat" }, item.score.toFixed(3)));
    list.append(li);
  }
  const panel = $("recs-panel");
  panel.classList.remove("changed");
  void panel.offsetWidth; // restart the flash animation
  panel.classList.add("changed");
}

function renderSession(view) {
  const key = JSON.stringify(view);
  if (key === state.lastSession) return;
  state.lastSession = key;
  const s = view.session;
  $("session-meta").textContent = s
    ? `${s.session_id} · ${s.counts.view} views, ${s.counts.add_to_cart} carts, ` +
      `${s.counts.purchase} purchases, ${s.counts.search} searches`
    : view.known ? "no open session" : "new shopper: no state yet";
  const recent = $("session-recent");
  recent.replaceChildren();
  for (const step of view.recent.slice().reverse()) {
    const what = step.action === "search" ? `search “${step.query}”` : `${step.action} ${step.item_id}`;
    recent.append(el("li", { "data-action": step.action }, what));
  }
  const reviews = $("session-reviews");
  reviews.replaceChildren();
  for (const review of view.reviews) {
    reviews.append(el("li", { class: `label-${review.label}` }, `${review.item_id}: ${review.label}`));
  }
}

async function poll() {
  if (!shopper()) return;
  try {
    const [recs, session] = await Promise.all([
      getJson(userPath("recommendations")),
      getJson(userPath("session")),
    ]);
    if (recs.response.status === 503) {
      setStatus(`worker not ready: ${recs.body.error}`, true);
      return;
    }
    if (!recs.response.ok) {
      setStatus(recs.body.error || `HTTP ${recs.response.status}`, true);
      return;
    }
    renderRecs(recs.body, recs.ms);
    if (session.response.ok) renderSession(session.body);
  } catch (err) {
    setStatus(`worker unreachable: ${err.message}`, true);
  }
}

function restartPolling() {
  state.lastRecs = "";
  state.lastSession = "";
  if (state.polling) clearInterval(state.polling);
  state.polling = setInterval(poll, POLL_MS);
  poll();
}

async function start() {
  for (let i = 1; i <= 5; i += 1) $("shoppers").append(el("option", { value: `shopper-${i}` }));
  $("shopper").addEventListener("change", restartPolling);
  $("new-shopper").addEventListener("click", () => {
    $("shopper").value = `shopper-${Date.now().toString(36)}`;
    restartPolling();
  });
  $("search-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const query = $("search").value.trim();
    if (query) search(query);
  });
  try {
    const { body } = await getJson("/v1/catalog?limit=100");
    renderCatalog(body.items);
    setStatus(`${body.items.length} products · pick a shopper and click around`);
  } catch (err) {
    setStatus(`cannot load the catalog: ${err.message}`, true);
  }
  restartPolling();
}

start();
