// Analytics (analysts and admins): usage per day, agent and user as charts of tokens,
// runs and cost; the popular agents; a live chart of events per second by type, fed
// from the firehose (/v1/stream, from its newest event on).
import uPlot from "/console/vendor/uPlot.esm.js";
import { api, followEvents, query } from "/console/js/api.js";
import { errorBox, field, h } from "/console/js/dom.js";

const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#65a30d", "#475569"];
const LIVE_SECONDS = 60;

function width(el) {
  return Math.max(260, Math.min(900, (el.clientWidth || 600) - 24));
}

export function renderAnalytics(main) {
  const section = h("section", { class: "panel analytics" }, h("h1", {}, "Analytics"));
  main.append(section);
  const plots = []; // the usage charts, redrawn on refresh
  const days = h("select", { name: "days" },
    h("option", { value: "7" }, "7 days"), h("option", { value: "30", selected: true }, "30 days"),
    h("option", { value: "90" }, "90 days"));
  const refresh = h("button", { type: "button" }, "Refresh");
  const charts = h("div", { class: "charts" });
  const live = h("div", { class: "chart-card live" });
  section.append(
    h("div", { class: "toolbar" }, h("div", { class: "inline" }, field("Window", days)), refresh),
    charts,
    live,
  );

  async function load() {
    for (const p of plots.splice(0)) p.destroy();
    charts.replaceChildren(h("p", { role: "status" }, "Loading usage…"));
    const since = new Date(Date.now() - Number(days.value) * 86400000).toISOString().slice(0, 10);
    try {
      const [byDay, byAgent, byUser, popular] = await Promise.all([
        api(`/v1/stats/usage${query({ group_by: "day", from: since })}`),
        api(`/v1/stats/usage${query({ group_by: "agent", from: since })}`),
        api(`/v1/stats/usage${query({ group_by: "user", from: since })}`),
        api(`/v1/agents/popular${query({ days: days.value, limit: 10 })}`),
      ]);
      charts.replaceChildren();
      usageChart(charts, "Usage per day", byDay.groups, true);
      usageChart(charts, "Usage per agent", byAgent.groups, false);
      usageChart(charts, "Usage per user", byUser.groups, false);
      popularChart(charts, popular.items);
    } catch (error) {
      charts.replaceChildren(errorBox(error));
    }
  }

  function card(title, rows) {
    const chart = h("div", { class: "chart", role: "img", "aria-label": title });
    const c = h("figure", { class: "chart-card" }, h("figcaption", {}, title), chart);
    chart.dataset.points = String(rows);
    charts.append(c);
    return { card: c, chart };
  }

  function table(headers, rows) {
    return h("details", {}, h("summary", {}, "Numbers"),
      h("table", {}, h("thead", {}, h("tr", {}, ...headers.map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, ...rows.map((r) => h("tr", {}, ...r.map((v) => h("td", {}, String(v))))))));
  }

  function usageChart(parent, title, groups, byTime) {
    const { card: c, chart } = card(title, groups.length);
    if (!groups.length) {
      chart.append(h("p", { class: "empty" }, "No runs in this window."));
      return;
    }
    const xs = groups.map((g, i) => (byTime ? Date.parse(`${g.key}T00:00:00Z`) / 1000 : i));
    const tokens = groups.map((g) => g.input_tokens + g.output_tokens);
    const runs = groups.map((g) => g.runs);
    const cost = groups.map((g) => g.cost_usd ?? 0);
    const keys = groups.map((g) => g.key);
    const bars = uPlot.paths.bars({ size: [0.6, 60] });
    const opts = {
      width: width(c), height: 240,
      scales: {
        x: { time: byTime, range: byTime ? [xs[0] - 86400, xs[xs.length - 1] + 86400] : [-0.5, groups.length - 0.5] },
        y: { range: fromZero }, runs: { range: fromZero }, usd: { range: fromZero },
      },
      axes: [
        byTime ? {} : { values: (u, splits) => splits.map((s) => (Number.isInteger(s) ? short(keys[s] ?? "") : "")), splits: () => keys.map((_, i) => i) },
        { label: "tokens", size: 60 },
        { scale: "runs", side: 1, label: "runs", grid: { show: false } },
        { scale: "usd", side: 1, label: "USD", grid: { show: false }, size: 60 },
      ],
      series: [
        {},
        { label: "tokens", stroke: COLORS[0], fill: "rgba(37,99,235,0.35)", paths: bars, points: { show: false } },
        { label: "runs", scale: "runs", stroke: COLORS[1], width: 2, points: { show: true, size: 7 }, paths: byTime ? undefined : () => null },
        { label: "cost (USD)", scale: "usd", stroke: COLORS[2], width: 2, points: { show: true, size: 7 }, paths: byTime ? undefined : () => null },
      ],
    };
    plots.push(new uPlot(opts, [xs, tokens, runs, cost], chart));
    c.append(table(["key", "tokens (in / out)", "runs", "conversations", "cost (USD)"],
      groups.map((g) => [g.key, `${g.input_tokens} / ${g.output_tokens}`, g.runs, g.conversations, g.cost_usd ?? "n/a"])));
  }

  function popularChart(parent, items) {
    const { card: c, chart } = card("Popular agents (conversations with a run)", items.length);
    if (!items.length) {
      chart.append(h("p", { class: "empty" }, "No runs in this window."));
      return;
    }
    const names = items.map((i) => i.agent);
    const opts = {
      width: width(c), height: 200,
      scales: { x: { time: false, range: [-0.5, items.length - 0.5] }, y: { range: fromZero } },
      axes: [{ values: (u, splits) => splits.map((s) => (Number.isInteger(s) ? short(names[s] ?? "") : "")), splits: () => names.map((_, i) => i) }, { label: "conversations" }],
      series: [{}, { label: "conversations", stroke: COLORS[4], fill: "rgba(124,58,237,0.35)", paths: uPlot.paths.bars({ size: [0.6, 80] }), points: { show: false } }],
    };
    plots.push(new uPlot(opts, [names.map((_, i) => i), items.map((i) => i.conversations)], chart));
    c.append(h("ol", { class: "popular" }, ...items.map((i) => h("li", {}, `${i.agent}: ${i.conversations} conversations, ${i.runs} runs`))));
  }

  // ---- live: events per second by type
  const liveChart = h("div", { class: "chart", role: "img", "aria-label": "Events per second by type" });
  const liveStatus = h("p", { class: "meta", role: "status" }, "Connecting to the live stream…");
  live.append(h("figcaption", {}, "Live: events per second by type"), liveStatus, liveChart);
  const start = Math.floor(Date.now() / 1000);
  const seconds = Array.from({ length: LIVE_SECONDS }, (_, i) => start - LIVE_SECONDS + 1 + i);
  const counts = new Map(); // type -> array aligned with seconds
  let total = 0;
  let livePlot = null;

  // A new event type is a new series: the chart is drawn again with it.
  function drawLive() {
    if (livePlot) livePlot.destroy();
    livePlot = new uPlot({
      width: width(section), height: 220,
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max)] } },
      axes: [{}, { label: "events/s" }],
      series: [{}, ...[...counts.keys()].map((type, i) => ({
        label: type, stroke: COLORS[i % COLORS.length], width: 2, points: { show: false },
      }))],
    }, [seconds, ...counts.values()], liveChart);
  }
  drawLive();

  function bucketFor(type) {
    if (!counts.has(type)) {
      counts.set(type, seconds.map(() => 0));
      drawLive();
    }
    return counts.get(type);
  }

  function tick() {
    const now = Math.floor(Date.now() / 1000);
    while (seconds[seconds.length - 1] < now) {
      seconds.push(seconds[seconds.length - 1] + 1);
      seconds.shift();
      for (const series of counts.values()) {
        series.push(0);
        series.shift();
      }
    }
    livePlot.setData([seconds, ...counts.values()]);
  }
  const timer = setInterval(tick, 1000);

  const stream = followEvents(`/v1/stream${query({ after: "latest" })}`, {
    onEvent({ data }) {
      tick();
      const series = bucketFor(data.type);
      series[series.length - 1] += 1;
      total += 1;
      liveChart.dataset.events = String(total);
      liveStatus.textContent = `${total} events since this page opened`;
    },
    onState(state) {
      if (state === "live" && total === 0) liveStatus.textContent = "Live: waiting for events…";
      if (state === "reconnecting") liveStatus.textContent = "Reconnecting to the live stream…";
    },
    onError(error) {
      liveStatus.replaceChildren(errorBox(error));
    },
  });

  refresh.addEventListener("click", load);
  days.addEventListener("change", load);
  load();
  return () => {
    clearInterval(timer);
    stream.close();
    if (livePlot) livePlot.destroy();
    for (const p of plots) p.destroy();
  };
}

function fromZero(u, min, max) {
  return [0, max > 0 ? max * 1.1 : 1];
}

function short(text) {
  return text.length > 12 ? `${text.slice(0, 11)}…` : text;
}
