/* TSLA dashboard: a single page over the service's own HTTP API, no build step.
 *
 * Every data request carries `Authorization: Bearer <token>`; the token is pasted into a form
 * and kept in localStorage. Text from the API is only ever inserted with textContent / text
 * nodes (see `el`), never as HTML.
 *
 * Routes: `#/` the jobs table, `#/jobs/<id>` one job: live Chart.js charts fed by the metrics
 * cursor and then the job's server-sent events, read with fetch() because EventSource cannot
 * send an Authorization header. `#/experiments` the experiments, `#/experiments/<id>` one: its
 * results table and per-group curves (mean ± std band, switch epochs), polled until it ends.
 * `#/datasets` the built-in and uploaded data sets, `#/datasets/<name>` one upload: its classes,
 * a grid of sample images (fetched with the token, shown from a blob: URL) and what its checks found.
 */
"use strict";

(() => {
  const TOKEN_KEY = "tsla.token";
  const JOBS_POLL_MS = 3000;
  const JOBS_PAGE = 100;
  const METRICS_PAGE = 5000;
  const FINISHED = new Set(["succeeded", "failed", "canceled"]);
  const SWITCH_METHODS = new Set(["tsla", "tsla-pre"]);

  const COLORS = {
    blue: "#2563eb",
    orange: "#ea580c",
    teal: "#0d9488",
    violet: "#7c3aed",
    slate: "#94a3b8",
    green: "#16a34a",
    rose: "#e11d48",
    line: "#334155",
    smooth: "rgba(245, 158, 11, 0.09)",
    smoothText: "#b45309",
  };

  // --- small helpers ---------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  /** A DOM element; string children become text nodes, so API text is never parsed as HTML. */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function setText(node, text) {
    node.textContent = text === null || text === undefined ? "" : String(text);
  }

  function parseTime(iso) {
    if (!iso) return null;
    // The API sends UTC with an offset; a bare timestamp is read as UTC too.
    const text = /[zZ]|[+-]\d\d:?\d\d$/.test(iso) ? iso : `${iso}Z`;
    const date = new Date(text);
    return Number.isNaN(date.getTime()) ? null : date;
  }

  const pad = (n) => String(n).padStart(2, "0");

  /** Local time as YYYY-MM-DD HH:MM:SS. */
  function fmtTime(iso) {
    const d = parseTime(iso);
    if (!d) return "—";
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function fmtPct(value) {
    return typeof value === "number" && Number.isFinite(value) ? `${value.toFixed(2)}%` : "—";
  }

  function fmtBytes(size) {
    if (typeof size !== "number") return "—";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let value = size;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
  }

  function fmtNumber(value) {
    if (typeof value !== "number" || !Number.isFinite(value)) return "—";
    if (value === 0) return "0";
    const magnitude = Math.abs(value);
    return magnitude >= 1e4 || magnitude < 1e-3 ? value.toExponential(2) : String(Number(value.toPrecision(4)));
  }

  function shortId(id) {
    return String(id).slice(0, 8);
  }

  function stateBadge(state) {
    return el("span", { class: `badge badge-${/^[a-z]+$/.test(state) ? state : "unknown"}`, dataset: { state } }, state);
  }

  function sleep(ms, signal) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      signal?.addEventListener("abort", () => {
        clearTimeout(timer);
        resolve();
      }, { once: true });
    });
  }

  function isAbort(error) {
    return error instanceof DOMException && error.name === "AbortError";
  }

  // --- the token and the API -------------------------------------------------------------------

  class AuthError extends Error {}

  class ApiError extends Error {
    constructor(status, detail) {
      super(`${status}: ${detail}`);
      this.status = status;
      this.detail = detail;
    }
  }

  function getToken() {
    try {
      return localStorage.getItem(TOKEN_KEY) || null;
    } catch {
      return null;
    }
  }

  function setToken(token) {
    localStorage.setItem(TOKEN_KEY, token);
    showTokenLabel();
  }

  function clearToken() {
    localStorage.removeItem(TOKEN_KEY);
    showTokenLabel();
  }

  function showTokenLabel() {
    const token = getToken();
    setText($("token-label"), token ? `token …${token.slice(-4)}` : "no token");
    $("token-change").hidden = !token;
  }

  /** fetch() with the bearer token; 401 clears the token and shows the form. */
  async function api(path, { method = "GET", headers = {}, signal } = {}) {
    const token = getToken();
    if (!token) {
      showTokenForm(null);
      throw new AuthError("no token");
    }
    const response = await fetch(path, {
      method,
      headers: { Accept: "application/json", ...headers, Authorization: `Bearer ${token}` },
      signal,
      cache: "no-store",
    });
    if (response.status === 401) {
      clearToken();
      showTokenForm("The server rejected this token (401): it is unknown or revoked. Paste a valid one.");
      throw new AuthError("401");
    }
    if (!response.ok) {
      let detail = response.statusText;
      try {
        const body = await response.json();
        if (body && typeof body.detail === "string") detail = body.detail;
      } catch {
        // not JSON: keep the status text
      }
      throw new ApiError(response.status, detail);
    }
    return response;
  }

  async function apiJson(path, options) {
    const response = await api(path, options);
    return response.json();
  }

  function showBanner(message) {
    setText($("banner"), message);
    $("banner").hidden = false;
  }

  function hideBanner() {
    $("banner").hidden = true;
  }

  /** Reports an error to the user; false when the caller should stop (auth gone, view left). */
  function reportError(error) {
    if (error instanceof AuthError || isAbort(error)) return false;
    if (error instanceof ApiError) showBanner(`The API answered ${error.status}: ${error.detail}`);
    else showBanner(`Cannot reach the API: ${error && error.message ? error.message : error}`);
    return true;
  }

  // --- routing ---------------------------------------------------------------------------------

  let current = null;
  /** Event streams opened, read to the server's `end`, and dropped (then reconnected). */
  const streamStats = { opened: 0, ended: 0, dropped: 0 };

  function leaveView() {
    if (current) current.dispose();
    current = null;
    const views = ["jobs-view", "job-view", "experiments-view", "experiment-view", "datasets-view", "dataset-view", "token-view"];
    for (const id of views) $(id).hidden = true;
  }

  function route() {
    leaveView();
    hideBanner();
    if (!getToken()) {
      showTokenForm(null);
      return;
    }
    const hash = location.hash;
    const job = /^#\/jobs\/([^/?#]+)\/?$/.exec(hash);
    const experiment = /^#\/experiments\/([^/?#]+)\/?$/.exec(hash);
    const experiments = /^#\/experiments\/?$/.test(hash);
    const dataset = /^#\/datasets\/([^/?#]+)\/?$/.exec(hash);
    const datasets = /^#\/datasets\/?$/.test(hash);
    $("nav-jobs").classList.toggle("active", !job && !experiment && !experiments && !dataset && !datasets);
    $("nav-experiments").classList.toggle("active", Boolean(experiment || experiments));
    $("nav-datasets").classList.toggle("active", Boolean(dataset || datasets));
    if (job) current = new JobView(decodeURIComponent(job[1]));
    else if (experiment) current = new ExperimentView(decodeURIComponent(experiment[1]));
    else if (experiments) current = new ExperimentsView();
    else if (dataset) current = new DatasetView(decodeURIComponent(dataset[1]));
    else if (datasets) current = new DatasetsView();
    else current = new JobsView();
  }

  function showTokenForm(message) {
    leaveView();
    hideBanner();
    $("token-view").hidden = false;
    setText($("token-error"), message || "");
    $("token-error").hidden = !message;
    document.title = "TSLA · API token";
    $("token-input").focus();
  }

  // --- the jobs table --------------------------------------------------------------------------

  class JobsView {
    constructor() {
      this.alive = true;
      this.timer = null;
      document.title = "TSLA · Jobs";
      $("jobs-view").hidden = false;
      this.refresh();
    }

    dispose() {
      // A poll in flight is left to finish (and ignored), not aborted: leaving the page is no error.
      this.alive = false;
      clearTimeout(this.timer);
    }

    async refresh() {
      try {
        const jobs = [];
        let cursor = null;
        do {
          const query = new URLSearchParams({ limit: String(JOBS_PAGE) });
          if (cursor) query.set("cursor", cursor);
          const page = await apiJson(`/jobs?${query}`);
          jobs.push(...page.items);
          cursor = page.next_cursor;
        } while (cursor && this.alive);
        if (!this.alive) return;
        hideBanner();
        this.render(jobs);
      } catch (error) {
        if (!this.alive || !reportError(error)) return;
      }
      if (this.alive) this.timer = setTimeout(() => this.refresh(), JOBS_POLL_MS);
    }

    render(jobs) {
      const body = $("jobs-body");
      body.replaceChildren(...jobs.map((job) => this.row(job)));
      $("jobs-empty").hidden = jobs.length > 0;
      setText($("jobs-count"), `${jobs.length} ${jobs.length === 1 ? "job" : "jobs"}`);
      $("jobs-view").dataset.loaded = "true";
    }

    row(job) {
      const href = `#/jobs/${encodeURIComponent(job.id)}`;
      const done = Math.min(job.epochs_done, job.epochs);
      const fraction = job.epochs > 0 ? done / job.epochs : 0;
      const fill = el("div", { class: `progress-fill state-${job.state}` });
      fill.style.width = `${(100 * fraction).toFixed(1)}%`;
      return el(
        "tr",
        { dataset: { jobId: job.id, state: job.state }, onclick: () => { location.hash = href; } },
        el("td", {}, el("a", { class: "job-name", href }, job.name)),
        el("td", { class: "mono", title: job.id }, shortId(job.id)),
        el("td", {}, stateBadge(job.state)),
        el("td", {}, job.method),
        el("td", {}, job.dataset),
        el(
          "td",
          {},
          el(
            "div",
            { class: "progress", title: `${done} of ${job.epochs} epochs` },
            el("div", { class: "progress-track" }, fill),
            el("span", { class: "progress-text" }, `${done}/${job.epochs}`),
          ),
        ),
        el("td", { class: "num" }, fmtPct(job.best_top1)),
        el("td", { class: "nowrap", title: job.created_at }, fmtTime(job.created_at)),
      );
    }
  }

  // --- charts ----------------------------------------------------------------------------------

  /** The TSLA switch epoch as a dashed vertical line labelled "switch to one-hot", with the
   * smoothing epochs before it lightly shaded. The labels sit in the padding above the plot
   * area (LABEL_SPACE), so they never hide a data point. */
  const LABEL_SPACE = 20;
  const switchLinePlugin = {
    id: "tslaSwitch",
    beforeDatasetsDraw(chart) {
      const epoch = chart.$tslaSwitchEpoch;
      const x = chart.scales.x;
      if (typeof epoch !== "number" || epoch <= x.min) return;
      const { top, bottom, left, right } = chart.chartArea;
      const end = Math.min(x.getPixelForValue(epoch), right);
      const { ctx } = chart;
      ctx.save();
      ctx.fillStyle = COLORS.smooth;
      ctx.fillRect(left, top, end - left, bottom - top);
      ctx.restore();
    },
    afterDatasetsDraw(chart) {
      chart.$tslaSwitch = null;
      const epoch = chart.$tslaSwitchEpoch;
      const x = chart.scales.x;
      if (typeof epoch !== "number" || epoch < x.min || epoch > x.max) return;
      const pixel = x.getPixelForValue(epoch);
      const { top, bottom, left, right } = chart.chartArea;
      const labelY = top - LABEL_SPACE / 2;
      const { ctx } = chart;
      ctx.save();
      ctx.strokeStyle = COLORS.line;
      ctx.lineWidth = 1.5;
      ctx.setLineDash([6, 4]);
      ctx.beginPath();
      ctx.moveTo(pixel, top - 4);
      ctx.lineTo(pixel, bottom);
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.textBaseline = "middle";
      ctx.font = "600 11px system-ui, sans-serif";
      const label = "switch to one-hot";
      const width = ctx.measureText(label).width;
      const onRight = pixel + 6 + width <= right + 4;
      ctx.fillStyle = COLORS.line;
      ctx.textAlign = onRight ? "left" : "right";
      ctx.fillText(label, onRight ? pixel + 6 : pixel - 6, labelY);
      if (onRight) {
        const smoothing = "label smoothing";
        ctx.font = "500 11px system-ui, sans-serif";
        if (ctx.measureText(smoothing).width + 12 <= pixel - left) {
          ctx.fillStyle = COLORS.smoothText;
          ctx.textAlign = "right";
          ctx.fillText(smoothing, pixel - 6, labelY);
        }
      }
      ctx.restore();
      chart.$tslaSwitch = { epoch, pixel };
    },
  };

  /** Label 1, 2 and 5 times a power of ten on a log axis, like Chart.js does by default. */
  function logTick(value) {
    if (!(value > 0)) return "";
    const mantissa = value / 10 ** Math.floor(Math.log10(value));
    const nearest = Math.round(mantissa);
    return [1, 2, 5].includes(nearest) && Math.abs(mantissa - nearest) < 1e-6 ? fmtNumber(value) : "";
  }

  const CHARTS = [
    {
      key: "loss",
      series: [
        { metric: "train/loss", label: "train loss", color: COLORS.blue },
        { metric: "test/loss", label: "test loss", color: COLORS.orange },
      ],
      format: (v) => v.toFixed(4),
    },
    {
      key: "accuracy",
      series: [
        { metric: "test/top1", label: "test top-1", color: COLORS.blue },
        { metric: "test/top5", label: "test top-5", color: COLORS.teal },
        { metric: "train/top1", label: "train top-1", color: COLORS.slate, dash: [4, 3] },
      ],
      y: { suggestedMin: 0, suggestedMax: 100 },
      format: (v) => `${v.toFixed(2)}%`,
    },
    {
      key: "lr",
      series: [{ metric: "train/lr", label: "learning rate", color: COLORS.green }],
      y: { beginAtZero: true },
      format: fmtNumber,
    },
    {
      key: "gradvar",
      series: [{ metric: "train/grad_var", label: "gradient variance", color: COLORS.rose }],
      y: { type: "logarithmic", ticks: { callback: (value) => logTick(Number(value)) } },
      positive: true,
      format: fmtNumber,
    },
  ];

  function makeChart(definition, canvas, epochs, switchEpoch) {
    const chart = new Chart(canvas, {
      type: "line",
      data: {
        datasets: definition.series.map((series) => ({
          label: series.label,
          data: [],
          borderColor: series.color,
          backgroundColor: series.color,
          borderDash: series.dash || [],
          borderWidth: 2,
          pointRadius: 3,
          pointHoverRadius: 5,
          tension: 0,
          clip: 6,
        })),
      },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        normalized: true,
        layout: { padding: { top: switchEpoch === null ? 4 : LABEL_SPACE, right: 6 } },
        interaction: { mode: "nearest", axis: "x", intersect: false },
        scales: {
          x: {
            type: "linear",
            min: 0,
            max: Math.max(epochs - 1, 1),
            title: { display: true, text: "epoch" },
            ticks: { precision: 0 },
            grid: { color: "#eef1f5" },
          },
          y: {
            type: "linear",
            grid: { color: "#eef1f5" },
            ticks: { callback: (value) => fmtNumber(Number(value)) },
            ...definition.y,
          },
        },
        plugins: {
          legend: { position: "bottom", labels: { usePointStyle: true, boxWidth: 8, boxHeight: 8 } },
          tooltip: {
            callbacks: {
              title: (items) => (items.length ? `epoch ${items[0].parsed.x}` : ""),
              label: (item) => `${item.dataset.label}: ${definition.format(item.parsed.y)}`,
            },
          },
        },
      },
      plugins: [switchLinePlugin],
    });
    chart.$tslaSwitchEpoch = switchEpoch;
    return chart;
  }

  // --- one job ---------------------------------------------------------------------------------

  class JobView {
    constructor(jobId) {
      this.id = jobId;
      this.path = `/jobs/${encodeURIComponent(jobId)}`;
      this.alive = true;
      this.abort = new AbortController();
      this.job = null;
      this.lastSeq = null;
      this.series = new Map(); // "split/name" -> Map(epoch -> value), newest seq wins
      this.charts = {};
      this.checkpointIds = new Set();
      this.chartTimer = null;
      this.checkpointTimer = null;
      this.specShown = false;
      this.reset();
      document.title = "TSLA · Job";
      $("job-view").hidden = false;
      this.start();
    }

    reset() {
      for (const id of ["job-name", "job-id", "job-spec", "checkpoints-count"]) setText($(id), "");
      $("job-state").replaceChildren();
      $("job-facts").replaceChildren();
      $("checkpoints-body").replaceChildren();
      $("checkpoints-empty").hidden = true;
      $("job-error").hidden = true;
      $("job-cancel").hidden = true;
      $("job-live").hidden = true;
      delete $("job-view").dataset.metricsLoaded;
      delete $("job-view").dataset.streamEnded;
      for (const figure of document.querySelectorAll(".chart-card")) {
        delete figure.dataset.points;
        delete figure.dataset.switchEpoch;
      }
    }

    dispose() {
      this.alive = false;
      this.abort.abort();
      clearTimeout(this.chartTimer);
      clearTimeout(this.checkpointTimer);
      for (const chart of Object.values(this.charts)) chart.destroy();
      this.charts = {};
      window.tslaCharts = {};
      $("job-cancel").onclick = null;
    }

    get signal() {
      return this.abort.signal;
    }

    async start() {
      try {
        const job = await apiJson(this.path, { signal: this.signal });
        if (!this.alive) return;
        this.setJob(job);
        this.buildCharts();
        await Promise.all([this.loadMetrics(), this.loadCheckpoints()]);
        if (!this.alive) return;
        this.updateCharts();
        $("job-view").dataset.metricsLoaded = "true";
        await this.follow();
      } catch (error) {
        if (this.alive) reportError(error);
      }
    }

    switchEpoch() {
      const job = this.job;
      if (!job || !SWITCH_METHODS.has(job.method)) return null;
      const epoch = job.spec && job.spec.smoothing ? job.spec.smoothing.switch_epoch : null;
      return typeof epoch === "number" ? epoch : null;
    }

    setJob(job) {
      this.job = job;
      document.title = `TSLA · ${job.name}`;
      setText($("job-name"), job.name);
      $("job-state").replaceChildren(stateBadge(job.state));
      setText($("job-id"), job.id);
      $("job-view").dataset.state = job.state;

      const smoothing = (job.spec && job.spec.smoothing) || {};
      const switchEpoch = this.switchEpoch();
      const facts = [
        ["Method", job.method],
        ["Dataset", job.dataset],
        ["Epochs", `${job.epochs_done} / ${job.epochs}`],
        ["Attempt", `${job.attempt} / ${job.max_attempts}`],
        ["Best top-1", fmtPct(job.best_top1)],
      ];
      if (job.method !== "baseline" && typeof smoothing.theta === "number") facts.push(["Theta", String(smoothing.theta)]);
      if (switchEpoch !== null) facts.push(["Switch to one-hot", `epoch ${switchEpoch}`]);
      if (job.teacher_job_id) {
        facts.push(["Teacher", el("a", { href: `#/jobs/${encodeURIComponent(job.teacher_job_id)}` }, shortId(job.teacher_job_id))]);
      }
      facts.push(["Created", fmtTime(job.created_at)], ["Started", fmtTime(job.started_at)], ["Finished", fmtTime(job.finished_at)]);
      $("job-facts").replaceChildren(...facts.map(([term, value]) => el("div", {}, el("dt", {}, term), el("dd", {}, value))));

      // A failed job's reason is an error; a cancel's or an earlier attempt's is a note.
      const error = $("job-error");
      const failed = job.state === "failed";
      setText(error, job.error ? `${failed ? "Error" : "Note"}: ${job.error}` : "");
      error.className = `alert ${failed ? "alert-error" : "alert-info"}`;
      error.hidden = !job.error;

      const cancel = $("job-cancel");
      const active = job.state === "queued" || job.state === "running";
      cancel.hidden = !active;
      cancel.disabled = Boolean(job.cancel_requested);
      setText(cancel, job.cancel_requested ? "Cancel requested" : "Cancel job");
      cancel.onclick = active && !job.cancel_requested ? () => this.cancel() : null;
      if (FINISHED.has(job.state)) $("job-live").hidden = true;

      if (!this.specShown) {
        setText($("job-spec"), JSON.stringify(job.spec, null, 2));
        this.specShown = true;
      }
    }

    async cancel() {
      const button = $("job-cancel");
      button.disabled = true;
      try {
        const job = await apiJson(`${this.path}/cancel`, { method: "POST", signal: this.signal });
        if (this.alive) this.setJob(job);
      } catch (error) {
        if (!this.alive) return;
        if (error instanceof ApiError && error.status === 409) {
          this.setJob(await apiJson(this.path, { signal: this.signal }));
        } else {
          reportError(error);
          button.disabled = false;
        }
      }
    }

    // metrics and charts

    buildCharts() {
      const epochs = this.job.epochs;
      const switchEpoch = this.switchEpoch();
      for (const definition of CHARTS) {
        const canvas = $(`chart-${definition.key}`);
        this.charts[definition.key] = makeChart(definition, canvas, epochs, switchEpoch);
        const figure = canvas.closest(".chart-card");
        if (switchEpoch !== null) figure.dataset.switchEpoch = String(switchEpoch);
      }
      window.tslaCharts = this.charts;
    }

    addMetric(row) {
      if (this.lastSeq !== null && row.seq <= this.lastSeq) return;
      this.lastSeq = row.seq;
      const key = `${row.split}/${row.name}`;
      if (!this.series.has(key)) this.series.set(key, new Map());
      this.series.get(key).set(row.epoch, row.value);
    }

    async loadMetrics() {
      let after = null;
      for (;;) {
        const query = new URLSearchParams({ limit: String(METRICS_PAGE) });
        if (after !== null) query.set("after", String(after));
        const page = await apiJson(`${this.path}/metrics?${query}`, { signal: this.signal });
        for (const row of page.items) this.addMetric(row);
        after = page.next_after;
        if (!page.has_more || !this.alive) return;
      }
    }

    updateCharts() {
      for (const definition of CHARTS) {
        const chart = this.charts[definition.key];
        if (!chart) continue;
        const counts = {};
        definition.series.forEach((series, index) => {
          const values = this.series.get(series.metric) || new Map();
          const points = [...values.entries()]
            .filter(([, value]) => Number.isFinite(value) && (!definition.positive || value > 0))
            .sort((a, b) => a[0] - b[0])
            .map(([epoch, value]) => ({ x: epoch, y: value }));
          chart.data.datasets[index].data = points;
          counts[series.label] = points.length;
        });
        chart.update("none");
        chart.canvas.closest(".chart-card").dataset.points = JSON.stringify(counts);
      }
    }

    scheduleCharts() {
      if (this.chartTimer === null) {
        this.chartTimer = setTimeout(() => {
          this.chartTimer = null;
          if (this.alive) this.updateCharts();
        }, 250);
      }
    }

    // checkpoints

    async loadCheckpoints() {
      const listing = await apiJson(`${this.path}/checkpoints`, { signal: this.signal });
      if (this.alive) this.renderCheckpoints(listing);
    }

    scheduleCheckpoints() {
      clearTimeout(this.checkpointTimer);
      this.checkpointTimer = setTimeout(() => {
        this.loadCheckpoints().catch((error) => {
          if (this.alive) reportError(error);
        });
      }, 300);
    }

    renderCheckpoints(listing) {
      const items = listing.items || [];
      this.checkpointIds = new Set(items.map((item) => item.id));
      $("checkpoints-body").replaceChildren(
        ...items.map((item) => {
          const tags = [];
          if (item.id === listing.best_id) tags.push(el("span", { class: "tag tag-best" }, "best"));
          if (item.id === listing.latest_id) tags.push(el("span", { class: "tag tag-latest" }, "latest"));
          if (item.partial) tags.push(el("span", { class: "tag tag-partial" }, "partial"));
          const button = el("button", { type: "button", class: "btn btn-outline btn-small" }, "Download");
          button.addEventListener("click", () => this.download(item, button));
          const top1 = item.metrics ? item.metrics["test/top1"] : undefined;
          return el(
            "tr",
            { dataset: { checkpointId: String(item.id) } },
            el("td", { class: "mono" }, item.name),
            el("td", { class: "num" }, String(item.epoch)),
            el("td", {}, tags),
            el("td", { class: "num" }, fmtPct(top1)),
            el("td", { class: "num nowrap" }, fmtBytes(item.size)),
            el("td", { class: "mono", title: item.sha256 }, `${String(item.sha256).slice(0, 16)}…`),
            el("td", { class: "num" }, button),
          );
        }),
      );
      $("checkpoints-empty").hidden = items.length > 0;
      setText($("checkpoints-count"), items.length ? `${items.length} stored` : "");
    }

    async download(item, button) {
      button.disabled = true;
      setText(button, "Downloading…");
      try {
        const response = await api(`${this.path}/checkpoints/${encodeURIComponent(item.id)}`, {
          headers: { Accept: "application/octet-stream" },
        });
        const blob = await response.blob();
        const name = filenameFrom(response.headers.get("Content-Disposition")) || `${this.id}-${item.name}.pt`;
        const url = URL.createObjectURL(blob);
        const link = el("a", { href: url, download: name, hidden: true });
        document.body.append(link);
        link.click();
        link.remove();
        setTimeout(() => URL.revokeObjectURL(url), 30000);
      } catch (error) {
        reportError(error);
      } finally {
        button.disabled = false;
        setText(button, "Download");
      }
    }

    // live events

    /** Follow /events until `end`; reconnect with Last-Event-ID after a drop. */
    async follow() {
      let retry = 0;
      while (this.alive) {
        let ended = false;
        try {
          const headers = { Accept: "text/event-stream" };
          if (this.lastSeq !== null) headers["Last-Event-ID"] = String(this.lastSeq);
          const response = await api(`${this.path}/events`, { headers, signal: this.signal });
          retry = 0;
          streamStats.opened += 1;
          if (this.job && !FINISHED.has(this.job.state)) $("job-live").hidden = false;
          ended = await this.readEvents(response.body);
        } catch (error) {
          if (!this.alive || error instanceof AuthError || isAbort(error)) return;
          if (error instanceof ApiError && error.status < 500) {
            reportError(error);
            return;
          }
          // a dropped connection or a server restart: try again below
        }
        $("job-live").hidden = true;
        if (!ended && this.alive) streamStats.dropped += 1;
        if (ended || !this.alive) {
          if (ended) {
            streamStats.ended += 1;
            $("job-view").dataset.streamEnded = "true";
          }
          return;
        }
        await sleep(Math.min(1000 * 2 ** retry, 15000), this.signal);
        retry += 1;
      }
    }

    /** Parse the text/event-stream by hand; true once the `end` event arrived.
     *
     * After `end` the server closes the stream itself: it is read to its close rather than
     * cancelled, so that a finished stream never shows up as an aborted request.
     */
    async readEvents(body) {
      const reader = body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let type = "";
      let data = [];
      let ended = false;
      let closed = false;
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) {
            closed = true;
            return ended;
          }
          if (ended) continue;
          buffer += value;
          // A chunk may end between the \r and \n of one line break: keep a trailing \r.
          const held = buffer.endsWith("\r") ? "\r" : "";
          const lines = (held ? buffer.slice(0, -1) : buffer).split(/\r\n|\r|\n/);
          buffer = lines.pop() + held;
          for (const line of lines) {
            if (line === "") {
              if (data.length && this.handleEvent(type || "message", data.join("\n"))) {
                ended = true;
                break;
              }
              type = "";
              data = [];
              continue;
            }
            if (line.startsWith(":")) continue; // a comment: the keep-alive ping
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            let text = colon < 0 ? "" : line.slice(colon + 1);
            if (text.startsWith(" ")) text = text.slice(1);
            if (field === "event") type = text;
            else if (field === "data") data.push(text);
            // `id:` is the metric seq, which addMetric already tracks; `retry:` is ignored.
          }
        }
      } finally {
        if (!closed) reader.cancel().catch(() => {});
      }
    }

    /** Apply one event; true for `end`. */
    handleEvent(type, text) {
      let payload;
      try {
        payload = JSON.parse(text);
      } catch {
        return false;
      }
      if (!this.alive) return true;
      if (type === "metric") {
        this.addMetric(payload);
        this.scheduleCharts();
      } else if (type === "state") {
        this.setJob(payload);
      } else if (type === "checkpoint") {
        if (!this.checkpointIds.has(payload.id)) this.scheduleCheckpoints();
      } else if (type === "end") {
        this.setJob(payload);
        this.updateCharts();
        this.scheduleCheckpoints();
        return true;
      }
      return false;
    }
  }

  // --- experiments -----------------------------------------------------------------------------

  const EXP_POLL_MS = 3000;
  const GROUP_COLORS = [COLORS.slate, COLORS.blue, COLORS.orange, COLORS.teal, COLORS.violet, COLORS.rose, COLORS.green, "#0891b2", "#a16207", "#be185d"];
  const EXP_CHARTS = [
    { key: "exp-top1", metric: "test/top1", y: { suggestedMin: 0, suggestedMax: 100 }, format: (v) => `${v.toFixed(2)}%` },
    { key: "exp-gradvar", metric: "train/grad_var", y: { type: "logarithmic", ticks: { callback: (value) => logTick(Number(value)) } }, positive: true, format: fmtNumber },
  ];
  // Results columns: the row's key(s) holding a {mean, std, n} summary (first present wins), header.
  const SUMMARY_COLUMNS = [
    [["final"], "Final"],
    [["best_top1", "best"], "Best"],
    [["selected_test"], "Selected"],
    [["epochs_to_target"], "Epochs to target"],
  ];

  function summaryOf(row, keys) {
    for (const key of keys) {
      const value = row[key];
      if (value && typeof value === "object" && !Array.isArray(value)) return value;
    }
    return null;
  }

  function fmtSummary(summary, digits = 2) {
    if (!summary || typeof summary.mean !== "number") return "—";
    const mean = summary.mean.toFixed(digits);
    return typeof summary.std === "number" && summary.n >= 2 ? `${mean} ± ${summary.std.toFixed(digits)}` : mean;
  }

  function isBestRow(row) {
    return row.best === true || row.is_best === true;
  }

  const shortKey = (key) => ({ "smoothing.switch_epoch": "switch" })[key] || key.replace(/^smoothing\./, "");

  /** A group's name as in the paper: Baseline, LSR, TSLA(3), LSR-pre, TSLA-pre(7). */
  function groupLabel(group) {
    const method = String(group["smoothing.method"] ?? "?");
    let name = method === "baseline" ? "Baseline" : method.toUpperCase().replace("-PRE", "-pre");
    const switchEpoch = group["smoothing.switch_epoch"];
    if (SWITCH_METHODS.has(method) && switchEpoch !== undefined && switchEpoch !== null) name += `(${switchEpoch})`;
    const others = Object.entries(group)
      .filter(([key]) => key !== "smoothing.method" && key !== "smoothing.switch_epoch")
      .map(([key, value]) => `${shortKey(key)}=${value}`);
    return others.length ? `${name} [${others.join(", ")}]` : name;
  }

  function countsText(counts) {
    return ["queued", "running", "succeeded", "failed", "canceled"]
      .filter((state) => counts && counts[state])
      .map((state) => `${counts[state]} ${state}`)
      .join(", ") || "no jobs";
  }

  function experimentFinished(experiment) {
    return FINISHED.has(experiment.state) || Boolean(experiment.finished_at);
  }

  /** GET /experiments/{id}/curves as [{group, points: [{epoch, mean, std}]}], either shape. */
  function curveGroups(response) {
    const groups = (response && (response.groups || response.items)) || [];
    return groups.map((entry) => {
      let points;
      if (Array.isArray(entry.points)) {
        points = entry.points.map((p) => ({ epoch: p.epoch, mean: p.mean, std: p.std }));
      } else {
        const epochs = entry.epochs || [];
        points = epochs.map((epoch, i) => ({ epoch, mean: (entry.mean || [])[i], std: (entry.std || [])[i] }));
      }
      return { group: entry.group || {}, points: points.filter((p) => typeof p.mean === "number" && Number.isFinite(p.mean)) };
    });
  }

  class ExperimentsView {
    constructor() {
      this.alive = true;
      this.timer = null;
      document.title = "TSLA · Experiments";
      $("experiments-view").hidden = false;
      this.refresh();
    }

    dispose() {
      this.alive = false;
      clearTimeout(this.timer);
    }

    async refresh() {
      try {
        const items = [];
        let cursor = null;
        do {
          const query = new URLSearchParams({ limit: String(JOBS_PAGE) });
          if (cursor) query.set("cursor", cursor);
          const page = await apiJson(`/experiments?${query}`);
          items.push(...page.items);
          cursor = page.next_cursor;
        } while (cursor && this.alive);
        if (!this.alive) return;
        hideBanner();
        this.render(items);
      } catch (error) {
        if (!this.alive || !reportError(error)) return;
      }
      if (this.alive) this.timer = setTimeout(() => this.refresh(), JOBS_POLL_MS);
    }

    render(items) {
      $("experiments-body").replaceChildren(...items.map((item) => {
        const href = `#/experiments/${encodeURIComponent(item.id)}`;
        return el(
          "tr",
          { dataset: { experimentId: item.id, state: item.state }, onclick: () => { location.hash = href; } },
          el("td", {}, el("a", { class: "job-name", href }, item.name)),
          el("td", { class: "mono", title: item.id }, shortId(item.id)),
          el("td", {}, stateBadge(item.state)),
          el("td", {}, countsText(item.counts)),
          el("td", { class: "nowrap" }, fmtTime(item.created_at)),
          el("td", { class: "nowrap" }, fmtTime(item.finished_at)),
        );
      }));
      $("experiments-empty").hidden = items.length > 0;
      setText($("experiments-count"), `${items.length} ${items.length === 1 ? "experiment" : "experiments"}`);
      $("experiments-view").dataset.loaded = "true";
    }
  }

  /** Every TSLA group's switch epoch as a dashed vertical line in the group's colour. */
  const groupSwitchPlugin = {
    id: "tslaGroupSwitches",
    afterDatasetsDraw(chart) {
      const x = chart.scales.x;
      const { top, bottom } = chart.chartArea;
      const { ctx } = chart;
      chart.$tslaSwitchLines = [];
      for (const line of chart.$tslaSwitches || []) {
        if (line.epoch < x.min || line.epoch > x.max) continue;
        const pixel = x.getPixelForValue(line.epoch);
        ctx.save();
        ctx.strokeStyle = line.color;
        ctx.lineWidth = 1.5;
        ctx.setLineDash([6, 4]);
        ctx.beginPath();
        ctx.moveTo(pixel, top);
        ctx.lineTo(pixel, bottom);
        ctx.stroke();
        ctx.restore();
        chart.$tslaSwitchLines.push({ epoch: line.epoch, label: line.label, pixel });
      }
    },
  };

  /** Per group three datasets: the mean line, and mean + std filled down to mean - std. */
  function groupDatasets(groups, definition) {
    const datasets = [];
    const keep = (value) => Number.isFinite(value) && (!definition.positive || value > 0);
    groups.forEach((entry, index) => {
      const color = GROUP_COLORS[index % GROUP_COLORS.length];
      const label = groupLabel(entry.group);
      const band = (sign) => entry.points
        .map((p) => ({ x: p.epoch, y: p.mean + sign * (typeof p.std === "number" ? p.std : 0) }))
        .filter((p) => keep(p.y));
      const common = { tslaLabel: label, borderWidth: 0, pointRadius: 0, tension: 0 };
      datasets.push({ ...common, label: `${label} − std`, tslaRole: "lower", data: band(-1), fill: false, borderColor: "transparent" });
      datasets.push({ ...common, label: `${label} + std`, tslaRole: "upper", data: band(1), fill: "-1", borderColor: "transparent", backgroundColor: `${color}26` });
      datasets.push({
        label, tslaLabel: label, tslaRole: "mean", tslaGroup: entry.group,
        data: entry.points.filter((p) => keep(p.mean)).map((p) => ({ x: p.epoch, y: p.mean })),
        borderColor: color, backgroundColor: color, borderWidth: 2, pointRadius: 2, tension: 0, fill: false,
      });
    });
    return datasets;
  }

  function groupSwitches(groups) {
    const lines = [];
    groups.forEach((entry, index) => {
      const epoch = entry.group["smoothing.switch_epoch"];
      if (SWITCH_METHODS.has(entry.group["smoothing.method"]) && typeof epoch === "number") {
        lines.push({ epoch, label: groupLabel(entry.group), color: GROUP_COLORS[index % GROUP_COLORS.length] });
      }
    });
    return lines;
  }

  function makeGroupChart(definition, canvas) {
    return new Chart(canvas, {
      type: "line",
      data: { datasets: [] },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        normalized: true,
        interaction: { mode: "nearest", axis: "x", intersect: false },
        scales: {
          x: { type: "linear", title: { display: true, text: "epoch" }, ticks: { precision: 0 }, grid: { color: "#eef1f5" } },
          y: { type: "linear", grid: { color: "#eef1f5" }, ticks: { callback: (value) => fmtNumber(Number(value)) }, ...definition.y },
        },
        plugins: {
          legend: {
            position: "bottom",
            labels: { usePointStyle: true, boxWidth: 8, boxHeight: 8, filter: (item, data) => data.datasets[item.datasetIndex].tslaRole === "mean" },
          },
          tooltip: {
            filter: (item) => item.dataset.tslaRole === "mean",
            callbacks: {
              title: (items) => (items.length ? `epoch ${items[0].parsed.x}` : ""),
              label: (item) => `${item.dataset.label}: ${definition.format(item.parsed.y)}`,
            },
          },
        },
      },
      plugins: [groupSwitchPlugin],
    });
  }

  class ExperimentView {
    constructor(experimentId) {
      this.id = experimentId;
      this.path = `/experiments/${encodeURIComponent(experimentId)}`;
      this.alive = true;
      this.abort = new AbortController();
      this.timer = null;
      this.charts = {};
      for (const id of ["exp-name", "exp-id", "exp-counts", "exp-jobs-count"]) setText($(id), "");
      for (const id of ["exp-state", "exp-facts", "exp-table-head", "exp-table-body", "exp-jobs-body"]) $(id).replaceChildren();
      delete $("experiment-view").dataset.loaded;
      document.title = "TSLA · Experiment";
      $("experiment-view").hidden = false;
      this.refresh();
    }

    dispose() {
      this.alive = false;
      this.abort.abort();
      clearTimeout(this.timer);
      for (const chart of Object.values(this.charts)) chart.destroy();
      this.charts = {};
      window.tslaCharts = {};
    }

    async refresh() {
      try {
        const signal = this.abort.signal;
        const experiment = await apiJson(this.path, { signal });
        const curves = await Promise.all(EXP_CHARTS.map((definition) =>
          apiJson(`${this.path}/curves?${new URLSearchParams({ name: definition.metric, points: "200" })}`, { signal })));
        if (!this.alive) return;
        hideBanner();
        this.render(experiment);
        EXP_CHARTS.forEach((definition, index) => this.plot(definition, curveGroups(curves[index])));
        const view = $("experiment-view");
        view.dataset.state = experiment.state;
        view.dataset.loaded = "true";
        if (experimentFinished(experiment)) {
          view.dataset.finished = "true";
          return;
        }
      } catch (error) {
        if (!this.alive || !reportError(error)) return;
      }
      if (this.alive) this.timer = setTimeout(() => this.refresh(), EXP_POLL_MS);
    }

    render(experiment) {
      document.title = `TSLA · ${experiment.name}`;
      setText($("exp-name"), experiment.name);
      $("exp-state").replaceChildren(stateBadge(experiment.state));
      setText($("exp-id"), experiment.id);
      setText($("exp-counts"), countsText(experiment.counts));
      const objective = experiment.objective || {};
      const facts = [
        ["Objective", objective.metric ? `${objective.mode || "max"} ${objective.metric}` : "—"],
        ["Max concurrent", experiment.max_concurrent ?? "—"],
        ["Created", fmtTime(experiment.created_at)],
        ["Finished", fmtTime(experiment.finished_at)],
      ];
      $("exp-facts").replaceChildren(...facts.map(([term, value]) => el("div", {}, el("dt", {}, term), el("dd", {}, String(value)))));
      this.renderTable(experiment.table || []);
      this.renderJobs(experiment.jobs || []);
    }

    renderTable(rows) {
      const keys = [];
      for (const row of rows) for (const key of Object.keys(row.group || {})) if (!keys.includes(key)) keys.push(key);
      const headers = [...keys.map(shortKey), "n", ...SUMMARY_COLUMNS.map(([, header]) => header), "p", "Jobs"];
      $("exp-table-head").replaceChildren(el("tr", {}, headers.map((header, i) => el("th", { class: i >= keys.length ? "num" : null }, header))));
      $("exp-table-body").replaceChildren(...rows.map((row) => {
        const group = row.group || {};
        const best = isBestRow(row);
        const groupCells = keys.map((key, i) => el("td", {}, i === 0 && best ? el("span", { class: "star" }, "★") : null,
          group[key] === undefined || group[key] === null ? "—" : String(group[key])));
        const links = (row.job_ids || []).map((id) => el("a", { class: "mono", href: `#/jobs/${encodeURIComponent(id)}`, title: id }, shortId(id)));
        return el(
          "tr",
          { class: best ? "best-row" : null, dataset: { group: JSON.stringify(group), best: String(best) } },
          groupCells,
          el("td", { class: "num" }, `${row.n_succeeded ?? row.n}/${row.n}`),
          SUMMARY_COLUMNS.map(([columnKeys], i) => el("td", { class: "num nowrap" }, fmtSummary(summaryOf(row, columnKeys), i === 3 ? 1 : 2))),
          el("td", { class: "num" }, typeof row.p_value === "number" ? Number(row.p_value.toPrecision(3)).toString() : "—"),
          el("td", { class: "num" }, links.flatMap((link, i) => (i ? [" ", link] : [link]))),
        );
      }));
    }

    renderJobs(jobs) {
      $("exp-jobs-body").replaceChildren(...jobs.map((job) => el(
        "tr",
        { dataset: { jobId: job.id, state: job.state } },
        el("td", {}, el("a", { class: "mono", href: `#/jobs/${encodeURIComponent(job.id)}`, title: job.id }, shortId(job.id))),
        el("td", {}, job.role || "cell"),
        el("td", { class: "mono" }, Object.entries(job.cell || {}).map(([key, value]) => `${shortKey(key)}=${JSON.stringify(value)}`).join(" ")),
        el("td", {}, stateBadge(job.state)),
      )));
      setText($("exp-jobs-count"), `${jobs.length} ${jobs.length === 1 ? "job" : "jobs"}`);
    }

    plot(definition, groups) {
      if (!this.charts[definition.key]) this.charts[definition.key] = makeGroupChart(definition, $(`chart-${definition.key}`));
      const chart = this.charts[definition.key];
      chart.data.datasets = groupDatasets(groups, definition);
      chart.$tslaSwitches = groupSwitches(groups);
      chart.update("none");
      window.tslaCharts = this.charts;
    }
  }

  // --- data sets -------------------------------------------------------------------------------

  const SAMPLES_PER_CLASS = 8;
  // The largest over the smallest train class count above which the imbalance is worth a line.
  const IMBALANCE_SHOWN = 1.5;
  const LEAKAGE_EXAMPLES = 5;

  function fmtShape(shape) {
    return Array.isArray(shape) && shape.length ? shape.join("×") : "—";
  }

  function fmtCount(value) {
    return typeof value === "number" ? value.toLocaleString("en-US") : "—";
  }

  const datasetHref = (name) => `#/datasets/${encodeURIComponent(name)}`;

  /** A count as a bar, its length relative to `max` (CSS only: a track and a fill). */
  function countBar(count, max, kind) {
    const fill = el("div", { class: `count-fill ${kind}` });
    fill.style.width = `${max > 0 ? ((100 * count) / max).toFixed(1) : 0}%`;
    return el("div", { class: "count-bar", title: `${fmtCount(count)} ${kind} images` }, fill);
  }

  class DatasetsView {
    constructor() {
      this.alive = true;
      document.title = "TSLA · Data sets";
      delete $("datasets-view").dataset.loaded;
      $("datasets-view").hidden = false;
      this.load();
    }

    dispose() {
      this.alive = false;
    }

    async load() {
      try {
        const items = await apiJson("/datasets");
        if (!this.alive) return;
        hideBanner();
        this.render(items);
      } catch (error) {
        if (this.alive) reportError(error);
      }
    }

    render(items) {
      $("datasets-body").replaceChildren(...items.map((item) => this.row(item)));
      $("datasets-empty").hidden = items.length > 0;
      const uploaded = items.filter((item) => item.kind === "uploaded").length;
      setText($("datasets-count"), `${items.length - uploaded} built-in, ${uploaded} uploaded`);
      $("datasets-view").dataset.loaded = "true";
    }

    row(item) {
      // Only an upload has a page of its own: the built-in ones have no stored samples to show.
      const href = item.kind === "uploaded" ? datasetHref(item.name) : null;
      const status = item.available
        ? el("span", { class: "badge badge-succeeded" }, "available")
        : el("span", { class: "problem" }, item.problem || "not available");
      return el(
        "tr",
        {
          class: href ? null : "static-row",
          dataset: { datasetName: item.name, kind: item.kind },
          onclick: href ? () => { location.hash = href; } : null,
        },
        el(
          "td",
          { class: "nowrap", title: item.description },
          href ? el("a", { class: "job-name", href }, item.name) : el("span", { class: "job-name" }, item.name),
        ),
        el("td", {}, el("span", { class: "tag" }, item.kind)),
        el("td", { class: "num" }, fmtCount(item.num_classes)),
        el("td", { class: "mono" }, fmtShape(item.shape)),
        el("td", { class: "num" }, fmtCount(item.num_train)),
        el("td", { class: "num" }, fmtCount(item.num_test)),
        el("td", { class: "num nowrap" }, fmtBytes(item.bytes)),
        el("td", {}, status),
      );
    }
  }

  class DatasetView {
    constructor(name) {
      this.name = name;
      this.path = `/datasets/${encodeURIComponent(name)}`;
      this.alive = true;
      this.abort = new AbortController();
      this.imageUrl = null;
      this.reset();
      document.title = "TSLA · Data set";
      $("dataset-view").hidden = false;
      this.load();
    }

    reset() {
      for (const id of ["ds-name", "ds-kind", "ds-description", "ds-classes-count", "ds-samples-note"]) setText($(id), "");
      for (const id of ["ds-facts", "ds-findings-body", "ds-classes-body", "ds-sample-labels"]) $(id).replaceChildren();
      const view = $("dataset-view");
      delete view.dataset.loaded;
      delete view.dataset.samplesLoaded;
      this.clearImage();
    }

    dispose() {
      this.alive = false;
      this.abort.abort();
      this.clearImage();
    }

    clearImage() {
      const image = $("ds-samples-img");
      image.onload = null;
      image.removeAttribute("src");
      image.hidden = true;
      if (this.imageUrl) URL.revokeObjectURL(this.imageUrl);
      this.imageUrl = null;
    }

    async load() {
      try {
        const dataset = await apiJson(this.path, { signal: this.abort.signal });
        if (!this.alive) return;
        hideBanner();
        this.render(dataset);
        $("dataset-view").dataset.loaded = "true";
        if (dataset.kind === "uploaded") await this.loadSamples(dataset);
      } catch (error) {
        if (this.alive) reportError(error);
      }
    }

    render(dataset) {
      document.title = `TSLA · ${dataset.name}`;
      setText($("ds-name"), dataset.name);
      setText($("ds-kind"), dataset.kind);
      setText($("ds-description"), dataset.description);
      this.renderFacts(dataset);
      const classes = dataset.classes || [];
      for (const id of ["ds-findings", "ds-classes-table", "ds-samples"]) {
        $(id).closest("section.card").hidden = !classes.length;
      }
      if (!classes.length) return;
      this.renderFindings(dataset.findings || {});
      this.renderClasses(dataset);
      const labels = $("ds-sample-labels");
      // One grid row per class, stretched to the image's height: each is height / classes tall.
      labels.style.gridTemplateRows = `repeat(${classes.length}, minmax(0, 1fr))`;
      labels.replaceChildren(...classes.map((name, index) =>
        el("li", { dataset: { classIndex: String(index) } }, el("span", { title: name }, name))));
      setText($("ds-samples-note"), `the first ${SAMPLES_PER_CLASS} training images of each class`);
    }

    renderFacts(dataset) {
      const sha = dataset.sha256;
      const facts = [
        ["source", "Source", dataset.source ? `${dataset.source}, ${fmtBytes(dataset.source_bytes)}` : "built in"],
        ["sha256", "SHA-256", sha ? el("span", { class: "mono", title: sha }, `${sha.slice(0, 16)}…`) : "—"],
        ["bytes", "Stored size", fmtBytes(dataset.bytes)],
        ["created", "Created", fmtTime(dataset.created_at)],
        ["shape", "Shape", fmtShape(dataset.shape)],
        ["split", "Train / test", `${fmtCount(dataset.num_train)} / ${fmtCount(dataset.num_test)}`],
      ];
      if (dataset.kind === "builtin") facts.push(["status", "Status", dataset.available ? "available" : dataset.problem]);
      $("ds-facts").replaceChildren(...facts.map(([key, term, value]) =>
        el("div", { dataset: { fact: key } }, el("dt", {}, term), el("dd", {}, value))));
    }

    renderFindings(findings) {
      const items = [];
      const ratio = findings.imbalance_ratio;
      if (typeof ratio === "number" && ratio > IMBALANCE_SHOWN) {
        const small = findings.small_classes || [];
        items.push(el(
          "li",
          { dataset: { finding: "imbalance" } },
          el(
            "div",
            { class: "alert alert-info" },
            el("strong", {}, "Class imbalance: "),
            `the largest train class is ${ratio.toFixed(2)}× the smallest`,
            small.length ? `; small classes: ${small.join(", ")}` : "",
            ".",
          ),
        ));
      }
      const duplicates = findings.duplicates || {};
      if (duplicates.count > 0) {
        const pairs = (duplicates.examples || [])
          .slice(0, LEAKAGE_EXAMPLES)
          .map(([train, test]) => `train #${train} = test #${test}`);
        const images = duplicates.count === 1
          ? "test image is a copy of a training image"
          : "test images are copies of training images";
        items.push(el(
          "li",
          { dataset: { finding: "leakage", count: String(duplicates.count) } },
          el(
            "div",
            { class: "alert alert-warning" },
            el("strong", {}, "Train/test leakage: "),
            `${fmtCount(duplicates.count)} ${images}`,
            pairs.length ? ` (e.g. ${pairs.join(", ")})` : "",
            ".",
          ),
        ));
      }
      for (const note of findings.notes || []) {
        const text = el("div", { class: "alert alert-info" }, el("strong", {}, "Note: "), note);
        items.push(el("li", { dataset: { finding: "note" } }, text));
      }
      if (!items.length) items.push(el("li", { class: "muted", dataset: { finding: "none" } }, "No findings."));
      $("ds-findings-body").replaceChildren(el("ul", { class: "findings" }, items));
    }

    renderClasses(dataset) {
      const train = dataset.train_counts || [];
      const test = dataset.test_counts || [];
      const maxTrain = Math.max(0, ...train);
      const maxTest = Math.max(0, ...test);
      const small = new Set((dataset.findings && dataset.findings.small_classes) || []);
      $("ds-classes-body").replaceChildren(...dataset.classes.map((name, index) => el(
        "tr",
        { class: small.has(name) ? "small-class" : null, dataset: { classIndex: String(index) } },
        el("td", { title: small.has(name) ? "under half the mean train count" : null }, name),
        el("td", { class: "num" }, fmtCount(train[index])),
        el("td", {}, countBar(train[index] || 0, maxTrain, "train")),
        el("td", { class: "num" }, fmtCount(test[index])),
        el("td", {}, countBar(test[index] || 0, maxTest, "test")),
      )));
      const count = dataset.classes.length;
      setText($("ds-classes-count"), `${count} ${count === 1 ? "class" : "classes"}`);
    }

    /** The grid PNG, fetched with the token (an <img src> cannot send it) and shown from a blob URL. */
    async loadSamples(dataset) {
      const query = new URLSearchParams({ per_class: String(SAMPLES_PER_CLASS) });
      const response = await api(`${this.path}/samples.png?${query}`, {
        headers: { Accept: "image/png" },
        signal: this.abort.signal,
      });
      const blob = await response.blob();
      if (!this.alive) return;
      const image = $("ds-samples-img");
      this.imageUrl = URL.createObjectURL(blob);
      image.alt = `the first training images of each of the ${dataset.classes.length} classes, one row per class`;
      image.onload = () => {
        if (!this.alive) return;
        image.hidden = false;
        $("dataset-view").dataset.samplesLoaded = "true";
      };
      image.src = this.imageUrl;
    }
  }

  function filenameFrom(disposition) {
    if (!disposition) return null;
    let name = null;
    const extended = /filename\*\s*=\s*(?:UTF-8|utf-8)''([^;]+)/.exec(disposition);
    if (extended) {
      try {
        name = decodeURIComponent(extended[1].trim());
      } catch {
        name = null;
      }
    }
    if (!name) {
      const plain = /filename\s*=\s*(?:"([^"]*)"|([^;]+))/.exec(disposition);
      if (plain) name = (plain[1] ?? plain[2]).trim();
    }
    return name ? name.replace(/[\\/]/g, "_") : null;
  }

  /** For tests and debugging: what each chart shows. */
  function summary() {
    const charts = {};
    for (const [key, chart] of Object.entries(window.tslaCharts || {})) {
      const points = {};
      for (const dataset of chart.data.datasets) points[dataset.label] = dataset.data.length;
      const drawn = chart.$tslaSwitch;
      charts[key] = {
        points,
        switchEpoch: chart.$tslaSwitchEpoch,
        switchLine: drawn
          ? { epoch: drawn.epoch, pixel: drawn.pixel, pixelEpoch: chart.scales.x.getValueForPixel(drawn.pixel) }
          : null,
        xMin: chart.scales.x.min,
        xMax: chart.scales.x.max,
      };
    }
    return { view: current ? current.constructor.name : null, charts, streams: { ...streamStats } };
  }

  // --- start -----------------------------------------------------------------------------------

  function init() {
    window.tslaCharts = {};
    window.tslaDashboard = { summary };
    Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
    Chart.defaults.color = "#677284";

    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token-input").value.trim();
      if (!token) return;
      setToken(token);
      $("token-input").value = "";
      if (!location.hash || location.hash === "#") history.replaceState(null, "", "#/");
      route();
    });
    $("token-change").addEventListener("click", () => {
      clearToken();
      showTokenForm(null);
    });
    window.addEventListener("hashchange", route);
    showTokenLabel();
    route();
  }

  init();
})();
