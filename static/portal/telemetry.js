/* Live GPU telemetry in the browser (issue 5).
 *
 * One websocket per page (/ws/telemetry/), shared by every chart panel and the fleet heatmap on it.
 * A panel (.telemetry-panel) reads its config (json_script): what to subscribe to, where its
 * history is, which devices it shows. It draws four Chart.js charts (utilization, memory, power,
 * temperature): the last minutes from storage, then new points from the websocket; the hour, day
 * and week buttons read coarser stored history (60 s / 3600 s buckets).
 * The heatmap ([data-heatmap]) recolours its cells (data-key "<uuid>:<slice>") from the fleet group.
 */
(function () {
  "use strict";
  if (window.PortalTelemetry) { window.PortalTelemetry.scan(); return; }

  const LIVE_WINDOW_MS = 10 * 60 * 1000;
  const GIB = 1024 * 1024 * 1024;
  const COLORS = ["#1f7ae0", "#d93526", "#2e9d57", "#f5a524", "#5b4bd5", "#3a8f88", "#c2418a", "#8891a4",
                  "#0b6e99", "#a55d00", "#6f9a1f", "#7b3fa0"];
  const METRICS = {
    util: { index: 1, live: (g) => g.u * 100, fromHistory: (v) => v * 100, max: 100 },
    mem: { index: 2, live: (g) => g.mu / GIB, fromHistory: (v) => v / GIB },
    power: { index: 3, live: (g) => g.p, fromHistory: (v) => v },
    temp: { index: 4, live: (g) => g.t, fromHistory: (v) => v },
  };

  // --- the one websocket ------------------------------------------------------------------------
  const socket = {
    ws: null, subs: new Map(), listeners: new Set(), statusEls: new Set(), retry: 1000, rate: null, paused: false,
    key(sub) { return sub.target + ":" + sub.id; },
    subscribe(sub) {
      this.subs.set(this.key(sub), sub);
      this.send({ action: "subscribe", target: sub.target, id: sub.id });
    },
    send(msg) {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
    },
    status(text) { this.statusEls.forEach((el) => { el.textContent = text; }); },
    connect() {
      const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/telemetry/";
      const ws = new WebSocket(url);
      this.ws = ws;
      ws.onopen = () => {
        this.retry = 1000;
        this.status("live");
        if (this.rate !== null) this.send({ action: "rate", seconds: this.rate });
        if (this.paused) this.send({ action: "pause" });
        this.subs.forEach((sub) => this.send({ action: "subscribe", target: sub.target, id: sub.id }));
      };
      ws.onmessage = (event) => {
        const msg = JSON.parse(event.data);
        if (msg.type === "refused") this.status("not allowed: " + msg.target + " " + msg.id);
        else if (msg.type === "revoked") this.status("access ended: " + msg.target + " " + msg.id);
        this.listeners.forEach((fn) => fn(msg));
      };
      ws.onclose = (event) => {
        if (event.code === 4401 || event.code === 4403) { this.status("disconnected (sign in again)"); return; }
        this.status("reconnecting…");
        setTimeout(() => this.connect(), this.retry);
        this.retry = Math.min(this.retry * 2, 30000);
      };
    },
    ensure() { if (!this.ws) this.connect(); },
  };

  // --- chart panels -----------------------------------------------------------------------------
  function seriesKey(item) { return item.uuid + ":" + item.s; }

  class Panel {
    constructor(el) {
      this.el = el;
      this.config = JSON.parse(document.getElementById(el.dataset.telemetryConfig).textContent);
      this.only = this.config.only ? new Set(this.config.only) : null;
      this.window = "live";
      this.labels = new Map();
      this.charts = {};
      el.querySelectorAll("canvas[data-metric]").forEach((canvas) => {
        const metric = METRICS[canvas.dataset.metric];
        this.charts[canvas.dataset.metric] = new Chart(canvas, {
          type: "line",
          data: { datasets: [] },
          options: {
            animation: false, parsing: false, normalized: true, responsive: true, maintainAspectRatio: false,
            interaction: { mode: "nearest", intersect: false },
            elements: { point: { radius: 0 }, line: { borderWidth: 1.5 } },
            scales: { x: { type: "time", ticks: { maxTicksLimit: 6, maxRotation: 0, autoSkip: true },
                           time: { tooltipFormat: "yyyy-MM-dd HH:mm:ss", minUnit: "second",
                                   displayFormats: { second: "HH:mm:ss", minute: "HH:mm", hour: "dd MMM HH:mm", day: "dd MMM" } } },
                      y: { beginAtZero: true, suggestedMax: metric.max } },
            plugins: { legend: { display: true, position: "bottom", labels: { boxWidth: 10 } }, decimation: { enabled: true } },
          },
        });
      });
      el.querySelectorAll("[data-window]").forEach((btn) => btn.addEventListener("click", () => this.setWindow(btn.dataset.window)));
      const pause = el.querySelector("[data-action=pause]");
      pause.addEventListener("click", () => {
        socket.paused = !socket.paused;
        socket.send({ action: socket.paused ? "pause" : "resume" });
        pause.textContent = socket.paused ? "Resume" : "Pause";
        if (!socket.paused && this.window === "live") this.load();
      });
      el.querySelector("[data-action=rate]").addEventListener("change", (e) => {
        socket.rate = Number(e.target.value);
        socket.send({ action: "rate", seconds: socket.rate });
      });
      socket.statusEls.add(el.querySelector(".telemetry-status"));
      socket.listeners.add((msg) => this.onMessage(msg));
      this.config.subscribe.forEach((sub) => socket.subscribe(sub));
      this.load();
    }

    dataset(chart, key, label) {
      let ds = chart.data.datasets.find((d) => d.key === key);
      if (!ds) {
        const color = COLORS[chart.data.datasets.length % COLORS.length];
        ds = { key, label: label || key, data: [], borderColor: color, backgroundColor: color };
        chart.data.datasets.push(ds);
      }
      return ds;
    }

    accepts(item) {
      if (this.only) return this.only.has(seriesKey(item));
      if (this.config.whole_only) return item.s === -1;
      return true;
    }

    async load() {
      const params = "?window=" + encodeURIComponent(this.window);
      const results = await Promise.all(this.config.history.map((url) =>
        fetch(url + params, { credentials: "same-origin", headers: { Accept: "application/json" } })
          .then((r) => (r.ok ? r.json() : { series: [] }))));
      Object.values(this.charts).forEach((chart) => { chart.data.datasets = []; });
      let points = 0;
      results.forEach((result) => result.series.forEach((series) => {
        const item = { uuid: series.uuid, s: series.slice };
        if (!this.accepts(item)) return;
        this.labels.set(series.key, series.label);
        Object.entries(this.charts).forEach(([name, chart]) => {
          const metric = METRICS[name];
          const ds = this.dataset(chart, series.key, series.label);
          ds.data = series.points.filter((p) => p[metric.index] !== null)
            .map((p) => ({ x: p[0], y: metric.fromHistory(p[metric.index]) }));
          points += ds.data.length;
        });
      }));
      this.el.querySelector(".telemetry-empty").hidden = points > 0;
      Object.values(this.charts).forEach((chart) => chart.update("none"));
    }

    setWindow(name) {
      this.window = name;
      this.el.querySelectorAll("[data-window]").forEach((b) => b.classList.toggle("active", b.dataset.window === name));
      this.load();
    }

    onMessage(msg) {
      if (msg.type !== "samples" || this.window !== "live") return;
      const cutoff = Date.now() - LIVE_WINDOW_MS;
      let touched = false;
      msg.items.forEach((node) => node.gpus.forEach((g) => {
        if (!this.accepts(g) || g.err) return;
        const key = seriesKey(g);
        const label = this.labels.get(key) || (node.name + "/gpu" + g.i + (g.s >= 0 ? " mig" + g.s : ""));
        Object.entries(this.charts).forEach(([name, chart]) => {
          const value = METRICS[name].live(g);
          if (value === null || value === undefined || Number.isNaN(value)) return;
          const ds = this.dataset(chart, key, label);
          ds.data.push({ x: node.ts * 1000, y: value });
          while (ds.data.length && ds.data[0].x < cutoff) ds.data.shift();
        });
        touched = true;
      }));
      if (touched) {
        this.el.querySelector(".telemetry-empty").hidden = true;
        Object.values(this.charts).forEach((chart) => chart.update("none"));
      }
    }
  }

  // --- fleet heatmap ----------------------------------------------------------------------------
  function heatmapMessage(msg) {
    if (msg.type !== "samples") return;
    const root = document.querySelector("[data-heatmap]");
    if (!root) return;
    msg.items.forEach((node) => node.gpus.forEach((g) => {
      const cell = root.querySelector('[data-key="' + CSS.escape(seriesKey(g)) + '"]');
      if (!cell) return;
      cell.classList.remove("heat-none");
      if (g.err) { cell.classList.add("heat-unhealthy"); return; }
      cell.style.setProperty("--u", g.u.toFixed(3));
      if (g.s === -1) {
        const title = cell.title.replace(/ · \d+ %/, "");
        const parts = title.split(" · ");
        parts.splice(g.team ? 2 : 1, 0, Math.round(g.u * 100) + " %");
        cell.title = parts.join(" · ");
      }
    }));
  }

  let heatmapWired = false;
  function scan() {
    document.querySelectorAll(".telemetry-panel").forEach((el) => {
      if (el.dataset.telemetryReady) return;
      el.dataset.telemetryReady = "1";
      socket.ensure();
      new Panel(el);
    });
    const heatmap = document.querySelector("[data-heatmap]");
    if (heatmap && !heatmapWired) {
      heatmapWired = true;
      socket.ensure();
      heatmap.closest(".fleet-heatmap")?.querySelectorAll(".telemetry-status").forEach((el) => socket.statusEls.add(el));
      if (socket.rate === null) socket.rate = 2; // hundreds of nodes: recolour in batches
      socket.listeners.add(heatmapMessage);
      socket.subscribe({ target: "fleet", id: "" });
      socket.send({ action: "rate", seconds: socket.rate });
    }
    if (heatmap) {
      document.querySelectorAll(".fleet-heatmap .telemetry-status").forEach((el) => socket.statusEls.add(el));
    }
  }

  window.PortalTelemetry = { scan, socket };
  document.addEventListener("htmx:afterSettle", scan);
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", scan);
  else scan();
})();
