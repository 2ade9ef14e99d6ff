// Ferryman admin page: plain JS over the admin JSON API. The admin key lives in sessionStorage only and
// travels in the Authorization header, never in a URL.
"use strict";

const KEY_SLOT = "ferryman.adminKey";
const COLORS = ["#6366f1", "#0f9f8f", "#f59e0b", "#ec4899", "#0ea5e9", "#84cc16", "#a855f7", "#64748b"];
const MODEL_COLORS = { "ferryman-large": "#6366f1", "ferryman-small": "#0f9f8f" };
const LIVE_POLL_MS = 2000;
const SPARK_POINTS = 90;

const $ = (selector, root = document) => root.querySelector(selector);

// --- DOM building -----------------------------------------------------------------------------

function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

function svg(tag, props = {}, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  setProps(el, props);
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

function setProps(el, props) {
  for (const [name, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.setAttribute("class", value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name === "value" && el instanceof HTMLElement) el.value = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
}

function bar(parts, cls = "bar") {
  const el = h("div", { class: cls });
  let left = 0;
  for (const [kind, percent] of parts) {
    const width = Math.max(0, Math.min(100 - left, percent));
    const span = h("span", { class: kind });
    span.style.left = `${left}%`;  // CSSOM, not a style attribute: allowed by the page's CSP
    span.style.width = `${width}%`;
    el.append(span);
    left += width;
  }
  return el;
}

function toast(message) {
  const el = $("#toast");
  el.textContent = message;
  el.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => el.classList.remove("show"), 2200);
}

// --- money, numbers, dates --------------------------------------------------------------------

// One money precision per screen, so that figures add up where they stand: micro-dollars while the screen's
// largest figure is under $1, cents from $1 up. The exact figure is in each one's hover title and in the CSV.
let decimals = 2;

function precisionFor(largestMicros) {
  decimals = Math.abs(largestMicros) < 1_000_000 ? 6 : 2;
}

const unit = () => 10 ** (6 - decimals);  // micro-dollars per last shown digit

function roundMicros(micros) {
  const sign = micros < 0 ? -1 : 1;
  return sign * Math.floor((Math.abs(micros) + unit() / 2) / unit()) * unit();
}

function usd(micros) {
  const rounded = roundMicros(micros);
  const sign = rounded < 0 ? "-" : "";
  const abs = Math.abs(rounded);
  const frac = String(abs % 1_000_000).padStart(6, "0").slice(0, decimals);
  return `${sign}$${Math.floor(abs / 1e6).toLocaleString("en-US")}.${frac}`;
}

function exactUsd(micros) {
  const abs = Math.abs(micros);
  return `${micros < 0 ? "-" : ""}$${Math.floor(abs / 1e6).toLocaleString("en-US")}.${String(abs % 1e6).padStart(6, "0")}`;
}

// A figure as shown, with the exact one on hover.
function money(micros, shown = micros, props = {}) {
  return h("span", { class: "money", title: exactUsd(micros), ...props }, usd(shown));
}

// Parts of a total, each rounded to the screen's precision so that the parts shown add up to the total shown
// (largest remainders get the leftover units); `total`: the total as shown elsewhere, when it is not the sum's.
function roundParts(values, total = roundMicros(values.reduce((a, b) => a + b, 0))) {
  const u = unit();
  const floors = values.map((v) => Math.floor(v / u) * u);
  let left = Math.round((total - floors.reduce((a, b) => a + b, 0)) / u);
  const order = values.map((v, i) => [v - floors[i], i]).sort((a, b) => b[0] - a[0]);
  for (const [, i] of order) {
    if (left-- <= 0) break;
    floors[i] += u;
  }
  return floors;
}

// A budget's spent, held and left, each rounded so that the three shown add up to its limit as shown; past the
// limit (an overrun) nothing is left and spent + held pass it.
function budgetSplit(b) {
  const left = Math.max(0, b.limit_micros - b.spent_micros - b.reserved_micros);
  const [spent, held, rest] = roundParts([b.spent_micros, b.reserved_micros, left]);
  return { spent: money(b.spent_micros, spent, { class: "money spent" }), held: money(b.reserved_micros, held, { class: "money held" }),
           left: money(left, rest, { class: "money left" }), limit: money(b.limit_micros, b.limit_micros, { class: "money limit" }) };
}

// The Tenants screen's precision: its largest figure is a budget's limit (or an overrun's spend).
function tenantsPrecision(budgets) {
  precisionFor(Math.max(0, ...budgets.map((b) => Math.max(b.limit_micros, b.spent_micros + b.reserved_micros))));
}

function exactDollars(micros) {
  const whole = Math.floor(micros / 1e6);
  let frac = String(micros % 1e6).padStart(6, "0").replace(/0+$/, "");
  return `${whole}.${frac.padEnd(2, "0")}`;
}

function dollarsToMicros(text, label) {
  const value = String(text).trim().replace(/^\$/, "").replace(/,/g, "");
  if (!/^\d{1,9}(\.\d{0,6})?$/.test(value)) {
    throw new Error(`${label} must be an amount in US dollars such as 25 or 0.0005 (at most 6 decimals).`);
  }
  const [whole, frac = ""] = value.split(".");
  return Number(whole) * 1_000_000 + Number((frac + "000000").slice(0, 6));
}

function optionalCount(form, name, label) {
  const value = form.elements[name].value.trim();
  if (value === "") return null;
  if (!/^\d+$/.test(value) || Number(value) < 1) {
    throw fieldError(form, name, `${label} must be a whole number of at least 1, or empty for no limit.`);
  }
  return Number(value);
}

function optionalShare(form, name, label) {
  const value = form.elements[name].value.trim();
  if (value === "") return null;
  const share = Number(value);
  if (!/^\d*\.?\d+$/.test(value) || share < 0 || share > 1) {
    throw fieldError(form, name, `${label} must be a number from 0 to 1, or empty for the default.`);
  }
  return share;
}

function fieldError(form, name, message) {
  form.elements[name].classList.add("invalid");
  return new Error(message);
}

const count = (n) => Number(n).toLocaleString("en-US");
const percent = (x, digits = 0) => `${(100 * x).toFixed(digits)}%`;
function limitsText(o) {
  const set = [["rpm", "rpm"], ["tpm", "tpm"], ["max_concurrent", "concurrent"]].filter(([f]) => o[f] !== null && o[f] !== undefined);
  return set.length ? set.map(([f, unit]) => `${count(o[f])} ${unit}`).join(" · ") : "no limits";
}
const dayOf = (date) => date.toISOString().slice(0, 10);
const when = (iso) => (iso ? iso.replace("T", " ").slice(0, 16) : "");

function daysBack(n) {
  const today = new Date();
  const since = new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate() - (n - 1)));
  return dayOf(since);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  return seconds < 1 ? `${Math.round(seconds * 1000)} ms` : `${seconds.toFixed(2)} s`;
}

// --- the API ----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body, key = sessionStorage.getItem(KEY_SLOT)) {
  const headers = { Authorization: `Bearer ${key}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, cache: "no-store",
                                   body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiError(0, "Cannot reach the gateway. Is it running?");
  }
  if (response.ok) return response;
  let message = `The gateway answered ${response.status} ${response.statusText}.`;
  try {
    message = (await response.json()).error.message || message;
  } catch { /* not an OpenAI-shaped error: keep the status line */ }
  if (response.status === 401 && key === sessionStorage.getItem(KEY_SLOT)) {
    signOut("The gateway no longer accepts this admin key. Sign in again.");
  }
  throw new ApiError(response.status, message);
}

const getJSON = async (path) => (await api("GET", path)).json();
const sendJSON = async (method, path, body) => (await api(method, path, body)).json();

// A form whose submit runs `action`; a thrown error is shown next to it, nothing else changes.
function handleSubmit(form, errorEl, action) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errorEl.textContent = "";
    form.querySelectorAll(".invalid").forEach((el) => el.classList.remove("invalid"));
    const button = event.submitter || form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      await action(event.submitter);
    } catch (error) {
      errorEl.textContent = error.message;
    } finally {
      button.disabled = false;
    }
  });
}

// A destructive button asks once more in place instead of a modal dialog.
function armedButton(label, confirmLabel, action, onError) {
  const button = h("button", { type: "button", class: "danger small" }, label);
  button.addEventListener("click", async () => {
    if (!button.classList.contains("armed")) {
      button.classList.add("armed");
      button.textContent = confirmLabel;
      setTimeout(() => { button.classList.remove("armed"); button.textContent = label; }, 4000);
      return;
    }
    button.disabled = true;
    try {
      await action();
    } catch (e) {
      button.disabled = false;
      onError(e);
    }
  });
  return button;
}

// --- sign in and tabs -------------------------------------------------------------------------

function signOut(message = "") {
  sessionStorage.removeItem(KEY_SLOT);
  role = null;
  stopLive();
  $("#app-view").hidden = true;
  $("#login-view").hidden = false;
  $("#login-error").textContent = message;
  $("#login-key").value = "";
  $("#login-key").focus();
}

async function signIn(event) {
  event.preventDefault();
  const key = $("#login-key").value.trim();
  const error = $("#login-error");
  error.textContent = "";
  if (!key) {
    error.textContent = "Type the admin key.";
    return;
  }
  try {
    await api("GET", "/admin/me", undefined, key);
  } catch (e) {
    error.textContent = e.status === 401 ? "That admin key was not accepted. Check it (or FERRYMAN_ADMIN_KEY) and try again."
                                         : e.message;
    return;
  }
  sessionStorage.setItem(KEY_SLOT, key);
  $("#login-key").value = "";
  await showApp().catch((e) => signOut(e.message));
}

let role = null;  // the signed-in key's role: which tabs show (the API refuses the rest with 403 anyway)

async function showApp() {
  $("#login-view").hidden = true;
  $("#app-view").hidden = false;
  const me = await getJSON("/admin/me");
  role = me.role;
  $("#whoami").textContent = `${me.name} · ${me.role}`;
  for (const link of document.querySelectorAll("#tabs a")) link.hidden = !TAB_ROLES[link.dataset.tab].includes(role);
  showTab();
}

const TABS = { spend: loadSpend, tenants: loadTenants, prices: loadPrices, live: startLive, access: loadAccess,
               audit: loadAudit };
// The roles of gateway/api/deps.py, per tab: the routes each tab calls.
const TAB_ROLES = { spend: ["admin", "finance"], tenants: ["admin", "operator"], prices: ["admin", "operator"],
                    live: ["admin", "operator"], access: ["admin"], audit: ["admin", "finance"] };

function showTab() {
  const mine = Object.keys(TABS).filter((tab) => TAB_ROLES[tab].includes(role));
  const name = mine.includes(location.hash.slice(1)) ? location.hash.slice(1) : mine[0];
  for (const link of document.querySelectorAll("#tabs a")) link.classList.toggle("active", link.dataset.tab === name);
  for (const tab of document.querySelectorAll(".tab")) tab.hidden = tab.id !== `tab-${name}`;
  if (name !== "live") stopLive();
  TABS[name]();
}

// --- spend ------------------------------------------------------------------------------------

function reportPath(groupBy, since, format = "json") {
  const query = new URLSearchParams({ group_by: groupBy, since, format });
  return `/admin/reports/usage?${query}`;
}

async function loadSpend() {
  const days = Number($("#spend-range").value);
  const since = daysBack(days);
  $("#spend-error").textContent = "";
  try {
    const [byDayModel, byTenant, byModel, budgets, tenants, alerts] = await Promise.all([
      getJSON(reportPath("day,model", since)), getJSON(reportPath("tenant", since)),
      getJSON(reportPath("model", since)), getJSON("/admin/spend"), getJSON("/admin/tenants"), getJSON("/admin/alerts")]);
    const totals = byDayModel.totals;
    precisionFor(Math.max(totals.cost_micros, totals.baseline_cost_micros));
    const internal = new Set(tenants.filter((t) => t.internal).map((t) => t.name));
    renderKpis(totals, byModel.rows, byTenant.rows, internal, days);
    renderDailyChart(byDayModel.rows, since, days);
    renderBudgetBars(budgets);
    renderRouting(byModel.rows, totals);
    renderTenants(byTenant.rows, internal, totals);
    renderAlerts(alerts);
  } catch (error) {
    $("#spend-error").textContent = error.message;
  }
}

// Saved = what the strongest tiers would have cost − what was spent, both as shown, so the screen adds up.
const savedShown = (totals) => roundMicros(totals.baseline_cost_micros) - roundMicros(totals.cost_micros);

// Savings are per record: each request against its own route group's strongest tier (none for a pinned model).
function renderKpis(totals, models, tenantRows, internal, days) {
  const busiest = models.slice().sort((a, b) => b.requests - a.requests)[0];
  const sum = (rows) => rows.reduce((n, r) => n + r.cost_micros, 0);
  const [customers, ours] = roundParts([sum(tenantRows.filter((r) => !internal.has(r.tenant))),
                                        sum(tenantRows.filter((r) => internal.has(r.tenant)))]);
  $("#kpi-cost").replaceChildren(money(totals.cost_micros));
  $("#kpi-cost-note").replaceChildren(`last ${days} days: customers `, money(customers),
    " · internal ", money(ours, ours, { id: "kpi-internal" }));
  $("#kpi-saved").replaceChildren(money(totals.savings_micros, savedShown(totals)));
  $("#kpi-saved-note").textContent = totals.baseline_cost_micros
    ? `${percent(totals.savings_micros / totals.baseline_cost_micros)} less than each route group's strongest tier`
    : "no traffic yet";
  $("#kpi-busiest").textContent = busiest ? percent(busiest.requests / totals.requests) : "–";
  $("#kpi-busiest-note").textContent = busiest
    ? `${count(busiest.requests)} of ${count(totals.requests)} requests on ${busiest.model}` : "no traffic yet";
  $("#kpi-requests").textContent = count(totals.requests);
  $("#kpi-requests-note").textContent =
    `${count(totals.prompt_tokens)} prompt · ${count(totals.completion_tokens)} completion tokens`;
}

function modelColor(model, index) {
  return MODEL_COLORS[model] || COLORS[index % COLORS.length];
}

function renderDailyChart(rows, since, days) {
  const models = [...new Set(rows.map((r) => r.model))].sort();
  const dayList = Array.from({ length: days }, (_, i) => {
    const d = new Date(`${since}T00:00:00Z`);
    d.setUTCDate(d.getUTCDate() + i);
    return dayOf(d);
  });
  const cost = new Map(rows.map((r) => [`${r.day}|${r.model}`, r.cost_micros]));
  const dayTotals = dayList.map((day) => models.reduce((n, m) => n + (cost.get(`${day}|${m}`) || 0), 0));
  $("#daily-legend").replaceChildren(...models.map((m, i) => h("span", {}, h("i", { class: `swatch-${i}` }), m)));
  $("#daily-legend").querySelectorAll("i").forEach((el, i) => { el.style.background = modelColor(models[i], i); });

  const W = 1000, H = 260, left = 84, right = 12, top = 12, bottom = 28;
  // A step of at least one shown digit: no two axis labels read the same.
  const tick = Math.max(unit(), niceStep(Math.max(...dayTotals, 1) / 4));
  const topValue = tick * Math.max(1, Math.ceil(Math.max(...dayTotals, 1) / tick));
  const y = (micros) => top + (H - top - bottom) * (1 - micros / topValue);
  const step = (W - left - right) / days;
  const chart = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img",
                             "aria-label": "Daily cost per model" });
  for (let value = 0; value <= topValue + tick / 2; value += tick) {
    chart.append(svg("line", { class: "grid", x1: left, x2: W - right, y1: y(value), y2: y(value) }),
                 svg("text", { x: left - 8, y: y(value) + 4, "text-anchor": "end", class: "tick" }, usd(value)));
  }
  const labelEvery = Math.ceil(days / 10);
  dayList.forEach((day, i) => {
    let base = 0;
    const x = left + i * step + step * 0.18;
    models.forEach((model, m) => {
      const value = cost.get(`${day}|${model}`) || 0;
      if (!value) return;
      chart.append(svg("rect", { x, width: step * 0.64, y: y(base + value), height: y(base) - y(base + value),
                                 fill: modelColor(model, m), rx: 2, dataset: { day, model, cost: value } },
                       svg("title", {}, `${day} · ${model}: ${exactUsd(value)}`)));
      base += value;
    });
    if (i % labelEvery === 0 || i === days - 1) {
      chart.append(svg("text", { x: left + i * step + step / 2, y: H - 8, "text-anchor": "middle" }, day.slice(5)));
    }
  });
  chart.append(svg("line", { class: "axis", x1: left, x2: W - right, y1: y(0), y2: y(0) }));
  $("#daily-chart").replaceChildren(rows.length ? chart : h("div", { class: "empty" }, "No usage in this range yet."));
}

// The smallest of 1, 2, 5 times a power of ten that is at least `value`: axis labels people can read.
function niceStep(value) {
  const magnitude = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].find((m) => m * magnitude >= value) * magnitude;
}

// Past the budget's first alert threshold: warn; nothing left: bad.
function budgetState(budget) {
  const used = (budget.spent_micros + budget.reserved_micros) / Math.max(budget.limit_micros, 1);
  if (used >= 1 || budget.remaining_micros <= 0) return "bad";
  return budget.alert_percents.length && used * 100 >= budget.alert_percents[0] ? "warn" : "ok";
}

// A budget's spend bar with a tick at each alert threshold.
function budgetBar(budget, cls = "bar") {
  const limit = Math.max(budget.limit_micros, 1);
  const meter = bar([[`spent ${budgetState(budget)}`, (100 * budget.spent_micros) / limit],
                     ["held", (100 * budget.reserved_micros) / limit]], cls);
  for (const p of budget.alert_percents) {
    const tick = h("i", { class: "target-tick alert-tick", title: `alert at ${p}%`, dataset: { percent: p } });
    tick.style.left = `${p}%`;
    meter.append(tick);
  }
  return meter;
}

const percentsText = (percents) => (percents.length ? percents.map((p) => `${p}%`).join(", ") : "none");

function renderBudgetBars(rows) {
  const biggest = Math.max(1, ...rows.map((r) => r.cost_micros));
  const list = rows.slice().sort((a, b) => (b.budget ? 1 : 0) - (a.budget ? 1 : 0) || b.cost_micros - a.cost_micros);
  $("#budget-bars").replaceChildren(...list.map((row) => {
    const b = row.budget;
    if (!b) {
      return h("div", { class: "budget-row", dataset: { tenant: row.tenant } },
        h("div", { class: "who" }, row.tenant, h("small", {}, "no budget")),
        bar([["plain", (100 * row.cost_micros) / biggest]]),
        h("div", { class: "figures" }, money(row.cost_micros), " this month", h("small", {}, "unlimited")));
    }
    const share = b.spent_micros / Math.max(b.limit_micros, 1);
    const split = budgetSplit(b);
    return h("div", { class: "budget-row", dataset: { tenant: row.tenant, percent: (100 * share).toFixed(2) } },
      h("div", { class: "who" }, row.tenant, h("small", {}, `${b.period} · ${b.period_key} · alerts at ${percentsText(b.alert_percents)}`)),
      budgetBar(b),
      h("div", { class: "figures" }, split.spent, " of ", split.limit,
        h("small", {}, `${percent(share, share < 0.1 ? 1 : 0)} used · `, split.held, " held · ", split.left, " left")));
  }));
  if (!rows.length) $("#budget-bars").replaceChildren(h("div", { class: "empty" }, "No tenants yet."));
}

function renderRouting(models, totals) {
  const total = models.reduce((n, r) => n + r.requests, 0);
  if (!total) {
    $("#routing").replaceChildren(h("div", { class: "empty" }, "No requests in this range yet."));
    return;
  }
  const split = h("div", { class: "split" }, ...models.map((r, i) => {
    const part = h("div", { dataset: { model: r.model } }, `${r.model} ${percent(r.requests / total)}`);
    part.style.flex = `${Math.max(r.requests, total * 0.08)}`;
    part.style.background = modelColor(r.model, i);
    return part;
  }));
  const shown = roundParts(models.map((r) => r.cost_micros));
  $("#routing").replaceChildren(split, h("div", { class: "facts" },
    ...models.map((r, i) => h("div", { dataset: { model: r.model } }, r.model,
      h("b", {}, `${count(r.requests)} req · `, money(r.cost_micros, shown[i])))),
    h("div", {}, "Spent", h("b", { id: "routing-spent" }, money(totals.cost_micros))),
    h("div", {}, "Had each request gone to its group's strongest tier",
      h("b", { id: "routing-baseline" }, money(totals.baseline_cost_micros))),
    h("div", {}, "Money saved by routing",
      h("b", { id: "routing-saved" }, money(totals.savings_micros, savedShown(totals))))));
}

// Customers and our own use apart: "Top tenants" ranks customers (internal ones only when asked), and the rows
// shown, an "other customers" row and the internal rows add up to the spend above.
function renderTenants(rows, internal, totals) {
  const withInternal = $("#show-internal").checked;
  const ranked = rows.filter((r) => withInternal || !internal.has(r.tenant)).sort((a, b) => b.cost_micros - a.cost_micros);
  const top = ranked.slice(0, 8), rest = ranked.slice(8);
  const ours = rows.filter((r) => internal.has(r.tenant) && !withInternal);
  const lines = [...top, ...(rest.length ? [{ tenant: `${rest.length} other tenants`, other: true,
    requests: rest.reduce((n, r) => n + r.requests, 0), cost_micros: rest.reduce((n, r) => n + r.cost_micros, 0),
    savings_micros: rest.reduce((n, r) => n + r.savings_micros, 0) }] : []), ...ours];
  const shown = roundParts(lines.map((r) => r.cost_micros));
  // every tenant is on a line (top, "other", internal), so the savings column adds up to "Saved" above
  const saved = roundParts(lines.map((r) => r.savings_micros), savedShown(totals));
  const sum = lines.reduce((n, r) => n + r.cost_micros, 0);
  const row = (r, i) => h("tr", { dataset: r.other ? {} : { tenant: r.tenant }, class: r.other ? "other" : null },
    h("td", {}, r.tenant), h("td", { class: "num" }, count(r.requests)),
    h("td", { class: "num" }, money(r.cost_micros, shown[i])), h("td", { class: "num" }, money(r.savings_micros, saved[i])),
    h("td", {}, bar([["accent", sum ? 100 * r.cost_micros / sum : 0]], "bar mini"), percent(sum ? r.cost_micros / sum : 0)));
  const customers = top.length + (rest.length ? 1 : 0);
  $("#top-tenants tbody").replaceChildren(...lines.slice(0, customers).map(row));
  $("#internal-tenants tbody").replaceChildren(...ours.map((r, i) => row(r, customers + i)));
  $("#internal-tenants").hidden = !ours.length;
  if (!top.length) $("#top-tenants tbody").replaceChildren(h("tr", {}, h("td", { colspan: 5, class: "empty" }, "No usage yet.")));
}

function renderAlerts(alerts) {
  const list = alerts.slice().reverse().slice(0, 20);
  $("#alerts tbody").replaceChildren(...list.map((a) => h("tr", { dataset: { tenant: a.tenant, alertId: a.id } },
    h("td", {}, a.tenant, a.key_id !== null ? h("small", {}, ` key ${a.key_id}`) : null), h("td", {}, a.period_key),
    h("td", { class: "num" }, money(a.spent_micros), " of ", money(a.limit_micros)),
    h("td", { class: "num" }, `${a.alert_percent}%`), h("td", {}, when(a.created_at)),
    h("td", {}, a.sent_at ? `sent ${when(a.sent_at)}` : h("span", { class: "muted" }, "not sent")))));
  if (!list.length) {
    $("#alerts tbody").replaceChildren(h("tr", {}, h("td", { colspan: 6, class: "empty" }, "No budget has crossed its alert threshold.")));
  }
}

async function downloadCsv() {
  const since = daysBack(Number($("#spend-range").value));
  try {
    const response = await api("GET", reportPath("tenant,model,day", since, "csv"));
    const disposition = response.headers.get("content-disposition") || "";
    const name = (disposition.match(/filename="([^"]+)"/) || [])[1] || `ferryman-usage-${since}.csv`;
    const url = URL.createObjectURL(await response.blob());
    const link = h("a", { href: url, download: name });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  } catch (error) {
    $("#spend-error").textContent = error.message;
  }
}

// --- tenants, keys, budgets -------------------------------------------------------------------

let selectedTenant = null;

function tenantError(error) {
  $("#tenant-create + .error").textContent = error.message;
}

async function loadTenants() {
  const error = $("#tenant-create + .error");
  try {
    const [tenants, budgetList] = await Promise.all([getJSON("/admin/tenants"), getJSON("/admin/budgets")]);
    tenantsPrecision(budgetList);
    const budgets = new Map(budgetList.filter((b) => b.key_id === null).map((b) => [b.tenant_id, b]));
    $("#tenant-table tbody").replaceChildren(...tenants.map((t) => tenantRow(t, budgets.get(t.id))));
    if (!tenants.length) {
      $("#tenant-table tbody").replaceChildren(h("tr", {}, h("td", { colspan: 4, class: "empty" }, "No tenants yet.")));
    }
    if (selectedTenant !== null) await showTenant(selectedTenant);
  } catch (e) {
    error.textContent = e.message;
  }
}

function tenantRow(t, budget) {
  const limits = limitsText(t);
  const budgetCell = budget
    ? [budgetBar(budget, "bar mini"),
       money(budget.limit_micros), ` / ${budget.period === "daily" ? "day" : "month"}`]
    : [h("span", { class: "muted" }, "none")];
  return h("tr", { dataset: { tenantId: t.id, tenant: t.name }, class: t.id === selectedTenant ? "selected" : null,
                   onclick: () => showTenant(t.id).catch(tenantError) },
    h("td", {}, h("b", {}, t.name)), h("td", {}, h("span", { class: `badge ${t.priority}` }, t.priority)),
    h("td", { class: "muted" }, limits), h("td", {}, ...budgetCell));
}

async function showTenant(tenantId) {
  selectedTenant = tenantId;
  document.querySelectorAll("#tenant-table tbody tr").forEach(
    (tr) => tr.classList.toggle("selected", Number(tr.dataset.tenantId) === tenantId));
  const [tenant, keys, budgets] = await Promise.all([
    getJSON(`/admin/tenants/${tenantId}`), getJSON(`/admin/tenants/${tenantId}/keys`),
    getJSON(`/admin/budgets?tenant_id=${tenantId}`)]);
  const tenantBudget = budgets.find((b) => b.key_id === null) || null;
  const keyBudgets = new Map(budgets.filter((b) => b.key_id !== null).map((b) => [b.key_id, b]));
  $("#tenant-detail").replaceChildren(
    h("div", { class: "card-head" }, h("h2", {}, tenant.name),
      h("span", { class: "sub" }, `tenant ${tenant.id} · since ${when(tenant.created_at)}`)),
    tenantSettingsForm(tenant),
    budgetForm("Tenant budget", "shared by all of this tenant's keys", tenant.id, null, tenantBudget),
    h("div", { class: "section" }, h("h3", {}, "API keys"), keyTable(tenant, keys, keyBudgets), newKeyForm(tenant)),
    h("div", { id: "key-editor" }));
}

function tenantSettingsForm(t) {
  const form = h("form", { id: "tenant-settings", novalidate: true },
    h("div", { class: "fields" },
      h("label", {}, "Priority", h("select", { name: "priority" },
        ...["interactive", "standard", "batch"].map((p) => h("option", { value: p, selected: p === t.priority }, p)))),
      h("label", {}, "Quality floor (0–1)", h("input", { name: "quality_floor", value: t.quality_floor ?? "", placeholder: "default" })),
      h("label", {}, "Large-model share (0–1)", h("input", { name: "large_share", value: t.large_share ?? "", placeholder: "default" })),
      h("label", {}, "Requests / min", h("input", { name: "rpm", value: t.rpm ?? "", placeholder: "no limit" })),
      h("label", {}, "Tokens / min", h("input", { name: "tpm", value: t.tpm ?? "", placeholder: "no limit" })),
      h("label", {}, "Concurrent requests", h("input", { name: "max_concurrent", value: t.max_concurrent ?? "", placeholder: "no limit" }))),
    h("div", { class: "form-foot" }, h("button", { type: "submit", class: "primary" }, "Save routing & limits")));
  const error = h("p", { class: "error", role: "alert" });
  handleSubmit(form, error, async () => {
    const body = {
      priority: form.elements.priority.value,
      quality_floor: optionalShare(form, "quality_floor", "Quality floor"),
      large_share: optionalShare(form, "large_share", "Large-model share"),
      rpm: optionalCount(form, "rpm", "Requests / min"),
      tpm: optionalCount(form, "tpm", "Tokens / min"),
      max_concurrent: optionalCount(form, "max_concurrent", "Concurrent requests"),
    };
    await sendJSON("PATCH", `/admin/tenants/${t.id}`, body);
    toast(`Saved ${t.name}'s routing and limits`);
    await loadTenants();
  });
  return h("div", {}, h("h3", {}, "Routing & rate limits"), form, error);
}

function budgetForm(title, subtitle, tenantId, keyId, budget) {
  const scope = keyId === null ? "tenant" : "key";
  const form = h("form", { class: "budget-form", dataset: { scope }, novalidate: true },
    h("div", { class: "fields" },
      h("label", {}, "Limit (US$)", h("input", { name: "limit", value: budget ? exactDollars(budget.limit_micros) : "",
                                                  placeholder: "e.g. 250", inputmode: "decimal" })),
      h("label", {}, "Period", h("select", { name: "period" },
        ...["monthly", "daily"].map((p) => h("option", { value: p, selected: budget ? budget.period === p : p === "monthly" }, p)))),
      h("label", {}, "Alerts at (% spent)", h("input", { name: "alert", value: budget ? budget.alert_percents.join(", ") : "80",
                                                         placeholder: "e.g. 50, 80, 100" }))),
    budget ? h("div", { class: "budget-now" }, budgetBar(budget),
               budgetNow(budget)) : null,
    h("div", { class: "form-foot" }, h("button", { type: "submit", class: "primary" }, budget ? "Save budget" : "Set budget"),
      budget ? armedButton("Remove budget", "Really remove?", async () => {
        await api("DELETE", `/admin/budgets/${budget.id}`);
        toast("Budget removed");
        await refreshAfterBudget(tenantId, keyId);
      }, (e) => { error.textContent = e.message; }) : h("span", { class: "muted" }, "No budget: spending is not limited.")));
  const error = h("p", { class: "error", role: "alert" });
  handleSubmit(form, error, async () => {
    let limit;
    try {
      limit = dollarsToMicros(form.elements.limit.value, "The limit");
    } catch (e) {
      throw fieldError(form, "limit", e.message);
    }
    const percents = alertPercents(form);
    await sendJSON("PUT", "/admin/budgets", { tenant_id: tenantId, key_id: keyId, period: form.elements.period.value,
                                             limit_micros: limit, alert_percents: percents });
    toast(`Budget saved: ${usd(limit)} ${form.elements.period.value}`);
    await refreshAfterBudget(tenantId, keyId);
  });
  return h("div", { class: "section" }, h("h3", {}, title, " ", h("span", { class: "muted" }, `· ${subtitle}`)), form, error);
}

function budgetNow(budget) {
  const split = budgetSplit(budget);
  return h("div", { class: "muted figures" }, `${budget.period_key}: `, split.spent, " spent, ", split.held, " held, ",
           split.left, " left of ", split.limit);
}

// "50, 80, 100" (or "none", or empty) -> [50, 80, 100]
function alertPercents(form) {
  const text = form.elements.alert.value.trim().toLowerCase();
  const parts = text === "" || text === "none" ? [] : text.split(/[\s,]+/).filter(Boolean).map((p) => p.replace(/%$/, ""));
  if (!parts.every((p) => /^\d+$/.test(p) && Number(p) >= 1 && Number(p) <= 100) || parts.length > 10) {
    throw fieldError(form, "alert", "Alerts at must be up to 10 whole percentages from 1 to 100, such as 50, 80, 100.");
  }
  return parts.map(Number);
}

async function refreshAfterBudget(tenantId, keyId) {
  await loadTenants();
  if (keyId !== null) await editKey(tenantId, keyId);
}

function keyStatus(key) {
  if (key.revoked_at) return h("span", { class: "badge bad" }, "revoked");
  if (key.expires_at && new Date(`${key.expires_at}Z`) <= new Date()) return h("span", { class: "badge warn" }, "expired");
  return h("span", { class: "badge ok" }, "active");
}

function keyTable(tenant, keys, keyBudgets) {
  if (!keys.length) return h("div", { class: "empty" }, "No keys yet.");
  return h("table", { id: "key-table" },
    h("thead", {}, h("tr", {}, h("th", {}, "Key"), h("th", {}, "Limits"), h("th", {}, "Budget"), h("th", {}, "Status"), h("th", {}))),
    h("tbody", {}, ...keys.map((k) => {
      const budget = keyBudgets.get(k.id);
      return h("tr", { dataset: { keyId: k.id, key: k.name } },
        h("td", {}, h("b", {}, k.name), h("div", { class: "mono muted" }, `${k.key_prefix}…`)),
        h("td", { class: "muted" }, limitsText(k),
          k.expires_at ? h("div", {}, `expires ${when(k.expires_at)}`) : null),
        h("td", {}, budget ? [money(budget.spent_micros), " / ", money(budget.limit_micros)] : h("span", { class: "muted" }, "tenant's")),
        h("td", {}, keyStatus(k)),
        h("td", { class: "num" }, k.revoked_at ? null : [
          h("button", { type: "button", class: "small", onclick: () => editKey(tenant.id, k.id).catch(tenantError) }, "Edit"), " ",
          armedButton("Revoke", "Confirm revoke", async () => {
            await sendJSON("DELETE", `/admin/keys/${k.id}`);
            toast(`Key ${k.name} revoked`);
            await showTenant(tenant.id);
          }, tenantError)]));
    })));
}

function newKeyForm(tenant) {
  const form = h("form", { id: "key-create", novalidate: true },
    h("div", { class: "fields" },
      h("label", {}, "Key name", h("input", { name: "name", value: "default", maxlength: 128 })),
      h("label", {}, "Expires (UTC date, optional)", h("input", { name: "expires", type: "date" })),
      h("label", {}, "Requests / min", h("input", { name: "rpm", placeholder: "no limit" }))),
    h("div", { class: "form-foot" }, h("button", { type: "submit" }, "Create key")));
  const error = h("p", { class: "error", role: "alert" });
  const secret = h("div", { id: "key-secret-slot" });
  handleSubmit(form, error, async () => {
    const name = form.elements.name.value.trim();
    if (!name) throw fieldError(form, "name", "A key needs a name.");
    const expires = form.elements.expires.value;
    const created = await sendJSON("POST", `/admin/tenants/${tenant.id}/keys`, {
      name, rpm: optionalCount(form, "rpm", "Requests / min"), expires_at: expires ? `${expires}T00:00:00Z` : null });
    await showTenant(tenant.id);
    // Shown this once: the gateway keeps only the key's hash.
    const code = h("code", { id: "key-secret" }, created.key);
    $("#key-secret-slot").replaceChildren(h("div", { class: "secret" },
      h("div", { class: "warn" }, `New key “${created.name}”: copy it now, it will not be shown again.`), code,
      h("button", { type: "button", class: "small", onclick: () => navigator.clipboard?.writeText(created.key).then(() => toast("Copied")) }, "Copy")));
  });
  return h("div", {}, h("h3", {}, "New key"), form, error, secret);
}

async function editKey(tenantId, keyId) {
  const [key, budgets] = await Promise.all([
    getJSON(`/admin/tenants/${tenantId}/keys`).then((keys) => keys.find((k) => k.id === keyId)),
    getJSON(`/admin/budgets?tenant_id=${tenantId}`)]);
  const form = h("form", { id: "key-limits", novalidate: true },
    h("div", { class: "fields" },
      h("label", {}, "Requests / min", h("input", { name: "rpm", value: key.rpm ?? "", placeholder: "no limit" })),
      h("label", {}, "Tokens / min", h("input", { name: "tpm", value: key.tpm ?? "", placeholder: "no limit" })),
      h("label", {}, "Concurrent requests", h("input", { name: "max_concurrent", value: key.max_concurrent ?? "", placeholder: "no limit" })),
      h("label", {}, "Expires (UTC date)", h("input", { name: "expires", type: "date", value: key.expires_at ? key.expires_at.slice(0, 10) : "" }))),
    h("div", { class: "form-foot" }, h("button", { type: "submit", class: "primary" }, "Save key limits"),
      h("button", { type: "button", onclick: () => $("#key-editor").replaceChildren() }, "Close")));
  const error = h("p", { class: "error", role: "alert" });
  handleSubmit(form, error, async () => {
    const expires = form.elements.expires.value;
    await sendJSON("PATCH", `/admin/keys/${keyId}`, {
      rpm: optionalCount(form, "rpm", "Requests / min"), tpm: optionalCount(form, "tpm", "Tokens / min"),
      max_concurrent: optionalCount(form, "max_concurrent", "Concurrent requests"),
      expires_at: expires ? `${expires}T00:00:00Z` : null });
    toast(`Saved key ${key.name}`);
    await showTenant(tenantId);
    await editKey(tenantId, keyId);
  });
  $("#key-editor").replaceChildren(h("div", { class: "section" },
    h("h3", {}, `Key “${key.name}”`, " ", h("span", { class: "muted mono" }, `${key.key_prefix}…`)), form, error,
    budgetForm("Key budget", "on top of the tenant's", tenantId, keyId, budgets.find((b) => b.key_id === keyId) || null)));
}

function createTenantForm() {
  const form = $("#tenant-create");
  handleSubmit(form, $("#tenant-create + .error"), async () => {
    const name = form.elements.name.value.trim();
    if (!name) throw fieldError(form, "name", "A tenant needs a name.");
    const tenant = await sendJSON("POST", "/admin/tenants", { name, priority: form.elements.priority.value });
    form.elements.name.value = "";
    toast(`Tenant ${tenant.name} created`);
    selectedTenant = tenant.id;
    await loadTenants();
  });
}

// --- prices -----------------------------------------------------------------------------------

const PRICE_FIELDS = [["input_micros_per_m", "Input"], ["cached_input_micros_per_m", "Cached input"],
                      ["output_micros_per_m", "Output"]];

async function loadPrices() {
  try {
    const prices = await getJSON("/admin/prices");
    $("#price-table tbody").replaceChildren(...prices.map(priceRow), priceRow(null));
  } catch (e) {
    $("#price-error").textContent = e.message;
  }
}

function priceRow(price) {
  const inputs = PRICE_FIELDS.map(([field, label]) => h("input", {
    name: field, "aria-label": label, inputmode: "decimal", value: price ? exactDollars(price[field]) : "", placeholder: "0.00" }));
  const gpuHour = h("input", { name: "gpu_hour_micros", "aria-label": "GPU-hour", inputmode: "decimal",
    value: price && price.gpu_hour_micros != null ? exactDollars(price.gpu_hour_micros) : "", placeholder: "per token" });
  const model = price ? h("b", {}, price.model) : h("input", { name: "model", placeholder: "new model name", "aria-label": "Model" });
  const save = h("button", { type: "button", class: price ? "" : "primary" }, price ? "Save" : "Add price");
  save.addEventListener("click", async () => {
    $("#price-error").textContent = "";
    [...inputs, gpuHour].forEach((i) => i.classList.remove("invalid"));
    try {
      const name = price ? price.model : model.value.trim();
      if (!name) throw new Error("A price needs a model name.");
      const body = {};
      for (const [i, [field, label]] of PRICE_FIELDS.entries()) {
        try {
          body[field] = dollarsToMicros(inputs[i].value, `The ${label.toLowerCase()} price of ${name}`);
        } catch (e) {
          inputs[i].classList.add("invalid");
          throw e;
        }
      }
      // Empty: billed per token. A GPU-hour price bills engine models their GPU-seconds (capped by the token price).
      const gpu = gpuHour.value.trim();
      try {
        body.gpu_hour_micros = gpu ? dollarsToMicros(gpu, `The GPU-hour price of ${name}`) : null;
      } catch (e) {
        gpuHour.classList.add("invalid");
        throw e;
      }
      save.disabled = true;
      await sendJSON("PUT", `/admin/prices/${encodeURIComponent(name)}`, body);
      toast(`Price of ${name} saved`);
      await loadPrices();
    } catch (e) {
      $("#price-error").textContent = e.message;
    } finally {
      save.disabled = false;
    }
  });
  return h("tr", { dataset: { model: price ? price.model : "" } }, h("td", {}, model),
    ...[...inputs, gpuHour].map((i) => h("td", { class: "num" }, i)),
    h("td", { class: "muted" }, price ? when(price.updated_at) : ""), h("td", { class: "num" }, save));
}

// --- live -------------------------------------------------------------------------------------

const liveHistory = { rps: [], p95: [] };
let liveTimer = null;
let tenantNames = {};  // tenant id -> name: the targets JSON names tenants by id only

function startLive() {
  stopLive();
  pollLive();
  liveTimer = setInterval(pollLive, LIVE_POLL_MS);
}

function stopLive() {
  clearInterval(liveTimer);
  liveTimer = null;
}

async function pollLive() {
  try {
    const [live, targets, groups] = await Promise.all([getJSON("/admin/live"), getJSON("/admin/router/targets"),
      getJSON("/admin/router/groups")]);
    if (targets.some((t) => !(t.tenant_id in tenantNames))) {
      tenantNames = Object.fromEntries((await getJSON("/admin/tenants")).map((t) => [String(t.id), t.name]));
    }
    $("#live-error").textContent = "";
    renderLive(live);
    renderTargets(targets);
    renderRouters(groups);
  } catch (e) {
    $("#live-error").textContent = e.message;
  }
}

function renderLive(live) {
  for (const [name, value] of [["rps", live.requests_per_s], ["p95", live.p95_latency_s]]) {
    if (value !== null) liveHistory[name] = [...liveHistory[name], value].slice(-SPARK_POINTS);
  }
  $("#live-rps").textContent = live.requests_per_s === null ? "–" : live.requests_per_s.toFixed(live.requests_per_s < 10 ? 2 : 1);
  $("#live-p95").textContent = duration(live.p95_latency_s);
  $("#live-errors").textContent = live.error_share === null ? "–" : percent(live.error_share, 1);
  $("#live-total").textContent = count(live.requests_total);
  $("#live-updated").textContent = `over the last ${Math.round(live.window_s)} s · updated ${new Date().toLocaleTimeString()}`;
  sparkline($("#spark-rps"), liveHistory.rps, "#2563eb");
  sparkline($("#spark-p95"), liveHistory.p95, "#6366f1");
  $("#engine-table tbody").replaceChildren(...live.engines.map((e) => h("tr", { dataset: { model: e.model } },
    h("td", {}, h("b", {}, e.model)),
    h("td", {}, e.kv_cache_usage === null ? "–" : [bar([["spent ok", 100 * e.kv_cache_usage]], "bar mini"), percent(e.kv_cache_usage, 1)]),
    h("td", { class: "num" }, count(e.running)), h("td", { class: "num" }, count(e.waiting)),
    h("td", { class: "num" }, e.tokens_per_s === null ? "–" : e.tokens_per_s.toFixed(1)))));
  if (!live.engines.length) {
    $("#engine-table tbody").replaceChildren(h("tr", {}, h("td", { colspan: 5, class: "empty" },
      "No in-process engine: remote replicas report on their own /metrics.")));
  }
}

function renderRouters(groups) {
  $("#router-groups tbody").replaceChildren(...groups.map((g) => h("tr", { dataset: { group: g.group } },
    h("td", {}, h("b", {}, g.group)), h("td", {}, g.policy), h("td", { class: "router" }, g.router),
    h("td", { class: "unfamiliar" }, g.unfamiliar),
    h("td", {}, g.trained_on.length ? `${g.trained_on.join(", ")} (${count(g.examples)} prompts)` : "–"))));
}

function renderTargets(targets) {
  const share = (x) => (x === null ? "–" : percent(x, 1));
  $("#router-targets tbody").replaceChildren(...targets.map((t) => {
    // the realised share as a bar, the target as a tick on it; missed by more than 3 points: shown as such
    const off = t.target_share !== null && t.realised_share !== null && Math.abs(t.realised_share - t.target_share) > 0.03;
    const meter = bar([[off ? "spent warn" : "spent ok", 100 * (t.realised_share ?? 0)]], "bar mini");
    if (t.target_share !== null) {
      const tick = h("i", { class: "target-tick" });
      tick.style.left = `${100 * t.target_share}%`;
      meter.append(tick);
    }
    return h("tr", { dataset: { group: t.group, tenant: t.tenant_id } },
      h("td", {}, h("b", {}, t.group)), h("td", {}, tenantNames[t.tenant_id] ?? `#${t.tenant_id}`),
      h("td", { class: "realised" }, meter, share(t.realised_share)),
      h("td", { class: "num target" }, share(t.target_share)), h("td", { class: "num" }, count(t.window)),
      h("td", { class: "num feedback" }, t.feedback_count ? `${t.feedback_quality.toFixed(2)} · ${count(t.feedback_count)}` : "–"));
  }));
  if (!targets.length) {
    $("#router-targets tbody").replaceChildren(h("tr", {}, h("td", { colspan: 6, class: "empty" },
      "No routed traffic yet: route groups with the router policy show here once they serve requests.")));
  }
}

function sparkline(el, values, color) {
  const W = 200, H = 36;
  el.setAttribute("viewBox", `0 0 ${W} ${H}`);
  el.setAttribute("preserveAspectRatio", "none");
  if (values.length < 2) {
    el.replaceChildren();
    return;
  }
  const top = Math.max(...values) || 1;
  const points = values.map((v, i) => `${(W * i) / (values.length - 1)},${H - 2 - ((H - 4) * v) / top}`);
  el.replaceChildren(
    svg("polygon", { points: `0,${H} ${points.join(" ")} ${W},${H}`, fill: color, "fill-opacity": 0.12 }),
    svg("polyline", { points: points.join(" "), fill: "none", stroke: color, "stroke-width": 1.8,
                      "vector-effect": "non-scaling-stroke" }));
}

// --- access: people's admin keys ---------------------------------------------------------------

async function loadAccess() {
  const error = $("#admin-key-create + .error");
  try {
    const keys = await getJSON("/admin/admin-keys");
    $("#admin-key-table tbody").replaceChildren(...keys.map((k) => h("tr", { dataset: { name: k.name } },
      h("td", {}, h("b", {}, k.name)), h("td", {}, h("span", { class: `badge role-${k.role}` }, k.role)),
      h("td", { class: "mono muted" }, `${k.key_prefix}…`), h("td", { class: "muted" }, when(k.created_at)),
      h("td", {}, keyStatus(k)),
      h("td", { class: "num" }, k.revoked_at ? null : armedButton("Revoke", "Confirm revoke", async () => {
        await sendJSON("DELETE", `/admin/admin-keys/${k.id}`);
        toast(`Admin key ${k.name} revoked`);
        await loadAccess();
      }, (e) => { error.textContent = e.message; })))));
  } catch (e) {
    error.textContent = e.message;
  }
}

function createAdminKeyForm() {
  const form = $("#admin-key-create");
  handleSubmit(form, $("#admin-key-create + .error"), async () => {
    const name = form.elements.name.value.trim();
    if (!name) throw fieldError(form, "name", "An admin key needs the name of whoever holds it.");
    const created = await sendJSON("POST", "/admin/admin-keys", { name, role: form.elements.role.value });
    form.elements.name.value = "";
    await loadAccess();
    // Shown this once: the gateway keeps only the key's hash.
    $("#admin-key-secret-slot").replaceChildren(h("div", { class: "secret" },
      h("div", { class: "warn" }, `New ${created.role} key for “${created.name}”: copy it now, it will not be shown again.`),
      h("code", { id: "admin-key-secret" }, created.key),
      h("button", { type: "button", class: "small", onclick: () => navigator.clipboard?.writeText(created.key).then(() => toast("Copied")) }, "Copy")));
  });
}

// --- audit log --------------------------------------------------------------------------------

function auditQuery(extra = {}) {
  const form = $("#audit-filter");
  const query = new URLSearchParams();
  for (const name of ["actor", "action", "target", "since", "until"]) {
    const value = form.elements[name].value.trim();
    if (value) query.set(name, value);
  }
  for (const [name, value] of Object.entries(extra)) query.set(name, value);
  return query;
}

async function loadAudit(beforeId = null) {
  $("#audit-error").textContent = "";
  try {
    const page = await getJSON(`/admin/audit?${auditQuery(beforeId ? { before_id: beforeId } : {})}`);
    const rows = page.entries.map(auditRow);
    if (beforeId) $("#audit-table tbody").append(...rows);
    else $("#audit-table tbody").replaceChildren(...rows);
    if (!beforeId && !rows.length) {
      $("#audit-table tbody").replaceChildren(h("tr", {}, h("td", { colspan: 5, class: "empty" }, "No changes match.")));
    }
    const older = $("#audit-older");
    older.hidden = page.next_before_id === null;
    older.onclick = () => loadAudit(page.next_before_id);
  } catch (e) {
    $("#audit-error").textContent = e.message;
  }
}

function auditRow(e) {
  return h("tr", { dataset: { id: e.id, action: e.action } },
    h("td", { class: "muted" }, when(e.created_at)),
    h("td", {}, h("b", {}, e.actor), " ", h("span", { class: `badge role-${e.actor_role}` }, e.actor_role)),
    h("td", {}, e.action), h("td", { class: "mono" }, e.target), h("td", { class: "change" }, change(e.before, e.after)));
}

// One line per field: created (no before), deleted (no after), or changed from -> to.
function change(before, after) {
  const show = (v) => (v === undefined ? "" : JSON.stringify(v));
  const fields = [...new Set([...Object.keys(before || {}), ...Object.keys(after || {})])];
  return fields.map((f) => h("div", { class: "mono" }, `${f}: `,
    before ? h("span", { class: "old" }, show(before[f])) : null, before && after ? " → " : null,
    after ? h("span", { class: "new" }, show(after[f])) : null));
}

async function downloadAuditCsv() {
  try {
    const response = await api("GET", `/admin/audit?${auditQuery({ format: "csv" })}`);
    const url = URL.createObjectURL(await response.blob());
    const link = h("a", { href: url, download: "ferryman-audit.csv" });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  } catch (e) {
    $("#audit-error").textContent = e.message;
  }
}

// --- start ------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", signIn);
  $("#logout").addEventListener("click", () => signOut());
  $("#spend-range").addEventListener("change", loadSpend);
  $("#show-internal").addEventListener("change", loadSpend);
  $("#download-csv").addEventListener("click", downloadCsv);
  createTenantForm();
  createAdminKeyForm();
  $("#audit-filter").addEventListener("submit", (event) => { event.preventDefault(); loadAudit(); });
  $("#audit-csv").addEventListener("click", downloadAuditCsv);
  window.addEventListener("hashchange", () => { if (sessionStorage.getItem(KEY_SLOT) && role) showTab(); });
  if (sessionStorage.getItem(KEY_SLOT)) showApp().catch((e) => signOut(e.message));
  else signOut();
});
