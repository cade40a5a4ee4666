// The llmos console's page script: a plain ES module (no build step). It reads the console's
// JSON API (same origin, the session cookie) and a process's output as resumable SSE, and
// draws the scheduler, the process list, the selected process (output, context window,
// syscall timeline, approve/deny/answer), usage and log search. It keeps no state the server
// does not have: reloading the page loses nothing.

const main = document.getElementById("main");
const base = main.dataset.path;
const settings = JSON.parse(main.dataset.settings);
const $ = (id) => document.getElementById(id);
const KINDS = ["program", "input", "turn", "syscall", "memory", "shm", "summary"];

let selected = null; // the pid shown in the detail pane
let stream = null; // its Stream

async function api(path, options = {}) {
  const init = { credentials: "same-origin", ...options };
  if (init.body !== undefined) {
    init.method = init.method || "POST";
    init.headers = { "Content-Type": "application/json" };
    init.body = JSON.stringify(init.body);
  }
  const response = await fetch(`${base}/api${path}`, init);
  if (response.status === 401) {
    window.location.assign(`${base}/login`);
    throw new Error("logged out");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(body?.error?.message || `${response.status} ${response.statusText}`);
  }
  return body;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-") || key.startsWith("aria-") || key === "role") {
      node.setAttribute(key, value);
    } else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

function show(node, on) {
  node.hidden = !on;
}

// --- a process's output: SSE that reconnects and catches up -----------------------------------

class Stream {
  constructor(pid) {
    this.pid = pid;
    this.last = 0; // the id of the last output event seen: where a reconnect resumes
    this.ended = false;
    this.reconnects = 0;
    this.out = $("stream");
    this.out.textContent = "";
    this.connect();
  }

  connect() {
    if (this.ended) return;
    const url = `${base}/api/processes/${this.pid}/events?after=${this.last}`;
    const source = new EventSource(url);
    this.source = source;
    $("stream-status").textContent = "(live)";
    source.addEventListener("output", (event) => {
      const id = Number(event.lastEventId);
      if (id <= this.last) return; // already shown
      this.last = id;
      this.out.textContent += JSON.parse(event.data).text;
    });
    source.addEventListener("end", (event) => {
      this.ended = true;
      source.close();
      const end = JSON.parse(event.data);
      $("stream-status").textContent = `(ended: ${end.exit_status})`;
      showError(end.error);
    });
    source.onerror = () => {
      source.close();
      if (this.ended || stream !== this) return;
      this.reconnects += 1;
      $("stream-status").textContent = "(connection lost; reconnecting…)";
      setTimeout(() => this.connect(), settings.reconnect_ms);
    };
  }

  close() {
    this.ended = true;
    this.source?.close();
  }
}

function showError(text) {
  $("proc-error").textContent = text ? `Failed: ${text}` : "";
  show($("proc-error"), Boolean(text));
}

// --- the process list and the scheduler ---------------------------------------------------------

function waitingOn(p) {
  if (p.approval) return `approval: ${p.approval.call}`;
  if (p.question) return `your answer: ${p.question}`;
  return "";
}

function renderProcesses(procs) {
  const rows = procs
    .slice()
    .sort((a, b) => b.pid - a.pid)
    .map((p) => {
      const open = el("button", { type: "button", class: "link" }, `${p.pid}`);
      open.setAttribute("aria-label", `Show process ${p.pid} (${p.program})`);
      open.addEventListener("click", () => select(p.pid));
      const state = p.state === "exited" ? `exited (${p.exit_status})` : p.state;
      const where = p.swapped ? `${state}, swapped` : state;
      const row = el(
        "tr",
        { "data-pid": String(p.pid), "data-state": p.state },
        el("td", {}, open),
        el("td", {}, p.program),
        el("td", { class: `state state-${p.state}` }, where),
        el("td", {}, `${p.context_used} / ${p.context_limit}`),
        el("td", {}, waitingOn(p)),
      );
      if (p.pid === selected) row.setAttribute("aria-current", "true");
      return row;
    });
  $("proc-rows").replaceChildren(...rows);
}

function renderScheduler(top) {
  const live = top.processes.filter((p) => p.state !== "exited");
  const count = (test) => live.filter(test).length;
  const resident = count((p) => p.state === "running");
  const swapped = count((p) => p.swapped);
  const waiting = live.filter((p) => p.state.startsWith("waiting") || p.state === "blocked");
  const why = waiting.map((p) => `process ${p.pid} waits on ${waitingOn(p) || p.state}`).join("; ");
  $("sched-summary").textContent =
    `${live.length} live: ${resident} resident, ${swapped} swapped, ${waiting.length} waiting` +
    (why ? ` (${why})` : "") +
    ` · runnable ${count((p) => p.state === "runnable")}, stopped ${count((p) => p.state === "stopped")}`;
}

// --- the selected process ------------------------------------------------------------------

function select(pid) {
  if (selected === pid) return;
  selected = pid;
  stream?.close();
  showError(null);
  $("timeline").replaceChildren();
  $("context-bar").replaceChildren();
  show($("detail"), true);
  stream = new Stream(pid);
  refreshDetail();
  $("detail-h").focus?.();
}

function segSize(seg) {
  return seg.tokens ?? Math.ceil((seg.chars || 0) / 4);
}

function renderContext(ctx) {
  const bar = $("context-bar");
  const limit = Math.max(ctx.limit, 1);
  const resident = ctx.segments.filter((s) => s.resident);
  const paged = ctx.segments.filter((s) => !s.resident);
  const blocks = ctx.segments.map((s) => {
    const label = `#${s.id} ${s.kind}, ${s.label}, ${
      s.resident ? `${segSize(s)} tokens resident` : `paged out to ${s.page}`
    }: ${s.preview}`;
    const block = el("div", {
      class: `seg kind-${s.kind} ${s.resident ? "resident" : "paged"} ${s.label}`,
      title: label,
      "data-kind": s.kind,
    });
    if (s.resident) block.style.width = `${(100 * segSize(s)) / limit}%`;
    return block;
  });
  const ram = el("div", { class: "ram" });
  const free = el("div", { class: "free", title: `free: ${Math.max(0, ctx.limit - ctx.used)} tokens` });
  // what the rendering costs beyond the resident segments: paged-out stubs, message framing
  const counted = resident.reduce((sum, s) => sum + segSize(s), 0);
  const other = el("div", {
    class: "overhead",
    title: `stubs of paged-out text and message framing: ${Math.max(0, ctx.used - counted)} tokens`,
  });
  other.style.width = `${(100 * Math.max(0, ctx.used - counted)) / limit}%`;
  ram.replaceChildren(...blocks.filter((b) => b.classList.contains("resident")), other, free);
  const swap = el("div", { class: "swap", title: `paged out: ${paged.length} segments` });
  swap.replaceChildren(...blocks.filter((b) => b.classList.contains("paged")));
  bar.replaceChildren(ram, swap);
  const pct = Math.round((100 * ctx.used) / limit);
  const taint = ctx.tainted ? `tainted by ${ctx.sources.join(", ") || "untrusted text"}` : "clean";
  $("context-summary").textContent =
    `${ctx.used} of ${ctx.limit} tokens used (${pct}%) · ${resident.length} segments resident, ` +
    `${paged.length} paged out · ${taint}`;
  $("context-legend").replaceChildren(
    ...KINDS.filter((k) => ctx.by_kind[k]).map((k) =>
      el("li", {}, el("span", { class: `swatch kind-${k}`, "aria-hidden": "true" }),
        `${k}: ${ctx.by_kind[k].segments} (${ctx.by_kind[k].paged} paged)`),
    ),
    el("li", {}, el("span", { class: "swatch overhead", "aria-hidden": "true" }),
      `stubs and framing: ${Math.max(0, ctx.used - counted)} tokens`),
    el("li", {}, el("span", { class: "swatch paged-swatch", "aria-hidden": "true" }),
      "paged out (lower row)"),
    el("li", {}, el("span", { class: "swatch untrusted-swatch", "aria-hidden": "true" }),
      "red underline: untrusted"),
  );
  $("segments").replaceChildren(
    ...ctx.segments.map((s) =>
      el("li", { class: s.resident ? "" : "paged" },
        `${s.kind} [${s.label}] ${s.resident ? `${segSize(s)} tokens` : `paged out (${s.page})`}: ${s.preview}`),
    ),
  );
}

function renderTimeline(steps, approval) {
  const items = steps.map((s) => {
    const when = new Date(s.at * 1000).toLocaleTimeString();
    let what;
    if (s.kind === "syscall") {
      const outcome = s.ok ? `ok: ${s.result}` : `error: ${s.error}`;
      const decided = s.decision && s.decision !== "allowed" ? ` · ${s.decision}${s.by ? ` by ${s.by}` : ""}` : "";
      what = `${s.device}(${s.arguments})${decided} → ${outcome} (${s.ms} ms)`;
    } else if (s.kind === "malformed") {
      what = `malformed call: ${s.error}`;
    } else if (s.kind === "text") {
      what = `answer (${s.tokens} tokens)`;
    } else {
      what = s.kind;
    }
    return el("li", { class: `step step-${s.kind} ${s.ok === false ? "failed" : ""}` },
      `step ${s.step} · ${when} · ${what}`);
  });
  if (approval) {
    items.push(el("li", { class: "step pending" }, `waiting for approval: ${approval.call} (${approval.reason})`));
  }
  $("timeline").replaceChildren(...items);
}

async function refreshDetail() {
  if (selected === null) return;
  const pid = selected;
  let d;
  try {
    d = await api(`/processes/${pid}`);
  } catch (err) {
    showError(err.message);
    if (err.message.startsWith("no process with pid")) stream?.close(); // reaped: nothing to follow
    return;
  }
  if (pid !== selected) return;
  const p = d.process;
  $("detail-h").textContent = `Process ${p.pid}: ${p.program}`;
  $("detail-state").textContent =
    `${p.state}${p.swapped ? " (swapped)" : ""} · owner ${p.owner} · cpu ${p.cpu} · ` +
    `${p.syscalls} syscalls · ${p.generated_tokens} tokens generated`;
  if (p.state === "exited") showError(p.error && p.exit_status !== "ok" ? p.error : null);
  renderContext(d.context);
  renderTimeline(d.steps, d.approval);
  show($("waiting"), Boolean(d.approval || d.question));
  show($("approval-buttons"), Boolean(d.approval));
  show($("answer-form"), Boolean(d.question));
  $("waiting-what").textContent = d.approval
    ? `Approve ${d.approval.call}? ${d.approval.reason}`
    : d.question ? `It asks: ${d.question}` : "";
  show($("kill"), p.state !== "exited");
}

async function act(action) {
  try {
    await api(`/processes/${selected}/${action}`, { method: "POST" });
  } catch (err) {
    showError(err.message);
  }
  await refresh();
}

// --- run, usage, logs ------------------------------------------------------------------------

async function loadPrograms() {
  const { programs } = await api("/programs");
  $("run-program").replaceChildren(
    ...programs.map((p) => el("option", { value: p.name }, `${p.name} — ${p.description || ""}`)),
  );
}

async function runProgram(event) {
  event.preventDefault();
  const form = event.target;
  show($("run-error"), false);
  const body = { program: form.program.value, input: form.input.value, model: form.model.value };
  try {
    const { pid } = await api("/run", { body });
    await refresh();
    select(pid);
  } catch (err) {
    $("run-error").textContent = `Could not run ${body.program}: ${err.message}`;
    show($("run-error"), true);
  }
}

function renderUsage(usage) {
  const rows = usage.usage;
  const max = Math.max(1, ...rows.map((r) => r.prompt_tokens + r.generated_tokens));
  const ns = "http://www.w3.org/2000/svg";
  const width = Math.max(200, rows.length * 60);
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} 120`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `Tokens per user and day: ${rows
    .map((r) => `${r.user} on ${r.day}: ${r.prompt_tokens + r.generated_tokens}`).join("; ") || "none yet"}`);
  rows.forEach((r, i) => {
    const h = (100 * (r.prompt_tokens + r.generated_tokens)) / max;
    const g = (100 * r.generated_tokens) / max;
    const x = i * 60 + 10;
    for (const [y, height, cls] of [[100 - h, h - g, "prompt"], [100 - g, g, "generated"]]) {
      const rect = document.createElementNS(ns, "rect");
      Object.entries({ x, y, width: 40, height, class: `bar ${cls}` })
        .forEach(([k, v]) => rect.setAttribute(k, v));
      svg.append(rect);
    }
    const label = document.createElementNS(ns, "text");
    Object.entries({ x: x + 20, y: 115, "text-anchor": "middle" }).forEach(([k, v]) => label.setAttribute(k, v));
    label.textContent = `${r.user} ${r.day.slice(5)}`;
    svg.append(label);
  });
  $("usage-chart").replaceChildren(svg);
  $("usage-table").tBodies[0].replaceChildren(
    ...rows.map((r) => el("tr", {}, el("td", {}, r.day), el("td", {}, r.user),
      el("td", {}, String(r.prompt_tokens)), el("td", {}, String(r.generated_tokens)))),
  );
}

async function searchLogs(event) {
  event?.preventDefault();
  const q = $("log-q").value;
  try {
    const { runs } = await api(`/logs?q=${encodeURIComponent(q)}`);
    $("log-results").replaceChildren(
      ...(runs.length ? runs : [null]).map((r) => r
        ? el("li", { class: `run run-${r.status}` },
          `${new Date(r.started_at * 1000).toLocaleString()} · ${r.program} · ${r.status}` +
          `${r.error ? ` (${r.error})` : ""} · ${(r.response || "").slice(0, 120)}`)
        : el("li", {}, "No runs match.")),
    );
  } catch (err) {
    $("log-results").replaceChildren(el("li", { class: "error" }, err.message));
  }
}

// --- the loop --------------------------------------------------------------------------------

async function refresh() {
  try {
    const [procs, top] = await Promise.all([api("/processes"), api("/top")]);
    renderProcesses(procs.processes);
    renderScheduler(top);
  } catch (err) {
    $("sched-summary").textContent = `Cannot reach the server: ${err.message}`;
  }
  await refreshDetail();
}

async function tick() {
  await refresh();
  setTimeout(tick, settings.poll_ms);
}

async function slowTick() {
  try {
    renderUsage(await api("/usage"));
  } catch (err) {
    $("usage-chart").textContent = err.message;
  }
  setTimeout(slowTick, settings.poll_ms * 5);
}

$("approve").addEventListener("click", () => act("approve"));
$("deny").addEventListener("click", () => act("deny"));
$("kill").addEventListener("click", () => act("kill"));
$("answer-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    await api(`/processes/${selected}/answer`, { body: { text: $("answer-text").value } });
    $("answer-text").value = "";
  } catch (err) {
    showError(err.message);
  }
  await refresh();
});
$("run-form").addEventListener("submit", runProgram);
$("log-form").addEventListener("submit", searchLogs);
$("detail-h").tabIndex = -1;

window.llmosConsole = { get stream() { return stream; }, select };
loadPrograms().catch((err) => { $("run-error").textContent = err.message; show($("run-error"), true); });
tick();
slowTick();
searchLogs();
