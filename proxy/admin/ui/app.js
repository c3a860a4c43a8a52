// The usage page's script: reads the admin API's JSON and draws it with Chart.js.
// The session cookie (HttpOnly, set by the login form) authenticates every fetch; this
// script never sees a token. Money arrives as exact decimal strings and is shown as
// sent; only the charts turn it into floating point.
"use strict";

const TOKEN_KINDS = ["input", "cached", "intermediate", "output", "thinking"];
const COST_KINDS = [...TOKEN_KINDS, "grounding"];
const COLOURS = {
  input: "#4c78a8",
  cached: "#72b7b2",
  intermediate: "#f58518",
  output: "#54a24b",
  thinking: "#b279a2",
  grounding: "#9d755d",
};
const NONE = { team: "(no team)", user: "(no user)", model: "(no model)" };

const $ = (id) => document.getElementById(id);
const tokens = (n) => Number(n).toLocaleString("en-US");
const usd = (s) => (s === null || s === undefined ? "unpriced" : s);
const charts = {};

function isoDay(date) {
  return date.toISOString().slice(0, 10);
}

function nextDay(day) {
  const d = new Date(`${day}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() + 1);
  return isoDay(d);
}

async function getJson(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (response.status === 401) {
    // The session expired or the token changed: back to the login form.
    window.location.assign("/ui/");
    throw new Error("signed out");
  }
  const body = await response.json();
  if (!response.ok) {
    throw new Error(body.error ? body.error.message : `HTTP ${response.status}`);
  }
  return body;
}

function cell(text, testid) {
  const td = document.createElement("td");
  td.textContent = text;
  if (testid) td.dataset.testid = testid;
  return td;
}

function fillRows(tbody, rows, makeCells, empty) {
  tbody.replaceChildren();
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    const td = cell(empty);
    td.colSpan = 20;
    td.className = "empty";
    tr.append(td);
    tbody.append(tr);
    return;
  }
  for (const row of rows) {
    const tr = document.createElement("tr");
    tr.append(...makeCells(row));
    tbody.append(tr);
  }
}

function showTotals(report) {
  const total = report.rows[0] || {
    requests: 0, cost_usd: "0", total_tokens: 0, input_tokens: 0, cached_tokens: 0,
    intermediate_tokens: 0, output_tokens: 0, thinking_tokens: 0,
  };
  const set = (id, text, value) => {
    const el = document.querySelector(`[data-testid="${id}"]`);
    el.textContent = text;
    el.dataset.value = value;
  };
  set("total-requests", tokens(total.requests), total.requests);
  set("total-cost", usd(total.cost_usd), total.cost_usd ?? "");
  set("total-tokens", tokens(total.total_tokens), total.total_tokens);
  for (const kind of TOKEN_KINDS) {
    const n = total[`${kind}_tokens`];
    set(`total-${kind}`, tokens(n), n);
  }
}

function share(part, whole) {
  const p = Number(part || 0);
  const w = Number(whole || 0);
  return w > 0 ? `${((100 * p) / w).toFixed(1)}%` : "–";
}

function drawStacked(id, labels, kinds, valueOf) {
  const datasets = kinds.map((kind) => ({
    label: kind,
    data: labels.map((_, i) => valueOf(i, kind)),
    backgroundColor: COLOURS[kind],
    borderColor: kind === "intermediate" ? "#a84f00" : COLOURS[kind],
    borderWidth: kind === "intermediate" ? 1 : 0,
  }));
  if (charts[id]) charts[id].destroy();
  charts[id] = new Chart($(id), {
    type: "bar",
    data: { labels, datasets },
    options: {
      indexAxis: "y",
      animation: false,
      maintainAspectRatio: false,
      scales: { x: { stacked: true, beginAtZero: true }, y: { stacked: true } },
      plugins: { legend: { position: "bottom" } },
    },
  });
}

function showGroups(by, report) {
  const rows = report.rows;
  const labels = rows.map((r) => r[by] ?? NONE[by]);
  drawStacked("tokens-chart", labels, TOKEN_KINDS, (i, k) => rows[i][`${k}_tokens`]);
  drawStacked("cost-chart", labels, COST_KINDS, (i, k) => Number(rows[i][`cost_${k}_usd`] || 0));
  fillRows($("groups"), rows, (r) => {
    const name = r[by] ?? NONE[by];
    const tds = [
      cell(name, "group-name"),
      cell(tokens(r.requests), "group-requests"),
      cell(usd(r.cost_usd), "group-cost"),
      cell(tokens(r.total_tokens), "group-tokens"),
      ...TOKEN_KINDS.map((k) => cell(tokens(r[`${k}_tokens`]), `group-${k}`)),
      cell(share(r.cost_intermediate_usd, r.cost_usd), "group-intermediate-share"),
    ];
    return tds;
  }, "No calls in this range.");
  for (const row of $("groups").rows) row.dataset.group = row.cells[0].textContent;
}

function showBudgets(list) {
  fillRows($("budgets"), list.statuses, (s) => {
    const b = s.budget;
    const unit = s.unit === "usd" ? " USD" : " tokens";
    const what = b.category ? ` (${b.category})` : "";
    const ratio = Number(s.ratio);
    const bar = document.createElement("td");
    bar.dataset.testid = "budget-ratio";
    bar.dataset.value = s.ratio;
    const meter = document.createElement("div");
    meter.className = "meter";
    const fill = document.createElement("span");
    fill.className = s.exceeded ? "over" : ratio >= 0.8 ? "high" : "ok";
    fill.style.width = `${Math.min(100, 100 * ratio)}%`;
    meter.append(fill);
    const label = document.createElement("span");
    label.textContent = `${(100 * ratio).toFixed(1)}%${s.exceeded ? " (exceeded)" : ""}`;
    bar.append(meter, label);
    return [
      cell(`#${b.id} ${b.mode}`, "budget-id"),
      cell(b.scope + what, "budget-scope"),
      cell(b.window),
      cell(s.spend + unit, "budget-spend"),
      cell(s.limit + unit, "budget-limit"),
      bar,
      cell(s.resets_at ? s.resets_at.replace("T", " ").slice(0, 16) : "never"),
    ];
  }, "No budgets.");
}

function showRecords(list) {
  fillRows($("records"), list.records, (r) => [
    cell(r.created_at.replace("T", " ").slice(0, 19), "record-time"),
    cell(r.user, "record-user"),
    cell(r.team ?? "", "record-team"),
    cell(r.model ?? "", "record-model"),
    cell(r.endpoint + (r.streamed ? " (stream)" : ""), "record-endpoint"),
    cell(String(r.status), "record-status"),
    ...TOKEN_KINDS.map((k) => cell(tokens(r[`${k}_tokens`]), `record-${k}`)),
    cell(usd(r.cost_usd), "record-cost"),
  ], "No calls yet.");
}

async function load() {
  const from = $("from").value;
  const to = $("to").value;
  const by = $("group").value;
  for (const el of document.querySelectorAll(".by")) el.textContent = by;
  document.body.dataset.state = "loading";
  $("status").textContent = "Loading…";
  const range = `since=${from}T00:00:00Z&until=${nextDay(to)}T00:00:00Z`;
  try {
    const [total, groups, budgets, records] = await Promise.all([
      getJson(`/admin/v1/usage?group_by=&${range}`),
      getJson(`/admin/v1/usage?group_by=${by}&${range}`),
      getJson("/admin/v1/budgets/status"),
      getJson("/admin/v1/records?limit=50"),
    ]);
    showTotals(total);
    showGroups(by, groups);
    showBudgets(budgets);
    showRecords(records);
    $("status").textContent = `${from} to ${to} (UTC), by ${by}.`;
    document.body.dataset.state = "ready";
  } catch (err) {
    $("status").textContent = `Could not load: ${err.message}`;
    document.body.dataset.state = "error";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const today = new Date();
  const weekAgo = new Date(today);
  weekAgo.setUTCDate(weekAgo.getUTCDate() - 6);
  $("from").value = isoDay(weekAgo);
  $("to").value = isoDay(today);
  $("range").addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  $("group").addEventListener("change", load);
  load();
});
