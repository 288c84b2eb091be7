/**
 * The sidebar's data layer: what it fetches from the server extension's REST
 * API, what it makes of it, and when it fetches again.
 *
 * Nothing here touches the DOM or JupyterLab: the HTTP calls go through a
 * `Fetcher` (the extension passes one over `ServerConnection`; the unit tests
 * pass their own), so the same logic is tested under jest and runs in Lab.
 */

/** One REST call. `path` is relative to `<base_url>/functionai/api/`. */
export interface Fetcher {
  get<T>(path: string): Promise<T>;
  post<T>(path: string, body: unknown): Promise<T>;
  del(path: string): Promise<void>;
  /**
   * One JSON-RPC message to a hosted MCP server's endpoint
   * (`<base_url>/functionai/mcp/<server>/mcp`), in the session `sessionId`
   * (none for `initialize`); `end` deletes the session instead.
   */
  mcp(server: string, message: Record<string, unknown> | null, sessionId: string | null, end?: boolean): Promise<{ body: unknown; sessionId: string | null }>;
}

/** The MCP protocol version the sidebar speaks. */
export const MCP_PROTOCOL_VERSION = '2025-06-18';

/** What calling a tool gave: MCP's result, or a JSON-RPC error; `ms` is the call alone. */
export interface ToolCallOutcome {
  result?: { content?: Array<Record<string, unknown>>; structuredContent?: unknown; isError?: boolean };
  error?: { code: number; message: string };
  ms: number;
}

/**
 * Call a tool the way an MCP client does, in a session of its own
 * (initialize, initialized, tools/call, then the session is ended).
 */
export async function callTool(fetcher: Fetcher, server: string, tool: string, args: Record<string, unknown>, version: string): Promise<ToolCallOutcome> {
  const init = await fetcher.mcp(server, {
    jsonrpc: '2.0',
    id: 1,
    method: 'initialize',
    params: { protocolVersion: MCP_PROTOCOL_VERSION, capabilities: {}, clientInfo: { name: 'functionai-sidebar', version } }
  }, null);
  const sid = init.sessionId;
  const initError = (init.body as { error?: { code: number; message: string } } | null)?.error;
  if (initError) {
    return { error: initError, ms: 0 };
  }
  try {
    await fetcher.mcp(server, { jsonrpc: '2.0', method: 'notifications/initialized' }, sid);
    const t0 = Date.now();
    const answer = (await fetcher.mcp(server, { jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: tool, arguments: args } }, sid)).body as {
      result?: ToolCallOutcome['result'];
      error?: { code: number; message: string };
    };
    const ms = Date.now() - t0;
    return answer.error ? { error: answer.error, ms } : { result: answer.result ?? {}, ms };
  } finally {
    if (sid) {
      await fetcher.mcp(server, null, sid, true).catch(() => undefined);
    }
  }
}

/** A tool call's outcome as text for a person: its text content, else its structured content, else the error. */
export function toolOutcomeText(out: ToolCallOutcome): string {
  if (out.error) {
    return `error ${out.error.code}: ${out.error.message}`;
  }
  const r = out.result ?? {};
  const texts = (r.content ?? []).filter(c => c['type'] === 'text').map(c => String(c['text'] ?? ''));
  const body = texts.length ? texts.join('\n') : JSON.stringify(r.structuredContent ?? r.content ?? null);
  return `${r.isError ? 'tool error: ' : ''}${body}`;
}

/** A JSON Schema's skeleton of arguments: each property with an empty value of its type (what the form starts from). */
export function argumentsSkeleton(schema: Record<string, unknown> | null | undefined): Record<string, unknown> {
  const props = schema && typeof schema['properties'] === 'object' ? (schema['properties'] as Record<string, Record<string, unknown>>) : {};
  const empty: Record<string, unknown> = { string: '', integer: 0, number: 0, boolean: false, array: [], object: {}, null: null };
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(props)) {
    const t = Array.isArray(v?.['type']) ? (v['type'] as string[])[0] : (v?.['type'] as string | undefined);
    out[k] = 'default' in (v ?? {}) ? v['default'] : t !== undefined && t in empty ? empty[t] : null;
  }
  return out;
}

/** The body of `POST mcp/servers` for a stdio server: a catalog name, or a command line split on spaces. */
export function hostServerBody(name: string, source: string, network: string): { body: Record<string, unknown> } | { error: string } {
  const n = name.trim();
  if (!/^[A-Za-z][A-Za-z0-9_-]{0,62}$/.test(n)) {
    return { error: `${JSON.stringify(n)} is not a server name: letters, digits, - and _, a letter first` };
  }
  const src = source.trim();
  if (!src) {
    return { error: 'give a catalog name (e.g. time) or a command (e.g. python -m my_server)' };
  }
  const words = src.split(/\s+/);
  const body: Record<string, unknown> = { name: n, network };
  if (words.length === 1 && /^[a-z][a-z0-9-]*$/.test(words[0])) {
    body['catalog'] = words[0];
  } else {
    body['command'] = words;
  }
  return { body };
}

/** An answer of the API that is not 2xx, with the server's `{"error": {...}}`. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly kind: string,
    message: string
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

export interface FunctionRow {
  name: string;
  active_version: number;
  latest_version: number;
  created_at: number;
  updated_at: number;
}

export interface InstanceInfo {
  id: string;
  pid?: number | null;
  path?: string | null;
  isolation?: Record<string, unknown> | null;
  alive?: boolean;
  rss?: number | null;
  uss?: number | null;
}

export interface SessionRow {
  id: string;
  function: string;
  version: number;
  status: string;
  created_at: number;
  last_used_at?: number | null;
  calls: number;
  state_bytes?: number | null;
  instance_id?: string | null;
  age_s?: number | null;
  idle_s?: number | null;
  instance?: InstanceInfo | null;
  busy?: boolean;
}

export interface ColdStartRow {
  instance_id: string;
  function: string;
  version: number;
  path: string;
  spawn_ms: number;
  init_ms: number;
  first_call_ms: number | null;
  session_id?: string | null;
  at: number;
}

/** Per function, over the last invocations (`GET latency`). */
export interface LatencyRow {
  function: string;
  calls: number;
  errors: number;
  p50_ms: number;
  p95_ms: number;
}

export interface Handshake {
  version: string;
  api: number;
}

/** What a function's line in the sidebar shows. */
export interface FunctionSummary {
  name: string;
  version: number;
  latest: number;
  instances: number;
  sessions: number;
  calls: number;
  p50_ms: number | null;
  /** scaling on load, for a function with a warm pool or max_instances */
  scaling: string | null;
}

/** A function's scaling now (`GET scaling`: `functions`). */
export interface ScalingNow {
  min_instances: number;
  max_instances: number;
  target: number;
  ready: number;
  in_flight: number;
  queued: number;
}

/** A change of a warm-pool target (`GET scaling`: `events`). */
export interface ScaleEvent {
  function: string;
  at: number;
  from: number;
  to: number;
  in_flight: number;
  queued: number;
  reason: string;
}

export interface Scaling {
  functions: Record<string, ScalingNow>;
  events: ScaleEvent[];
}

/** The last scale events fetched with the rest. */
export const SCALE_EVENT_LIMIT = 50;

/** A function's scaling in a line: bounds, target and ready, load, the last change. */
export function scalingLine(now: ScalingNow | undefined, events: readonly ScaleEvent[]): string | null {
  if (!now) {
    return null;
  }
  const bounds = now.max_instances ? `scales ${now.min_instances}–${now.max_instances}` : `warm pool ${now.min_instances}`;
  const parts = [bounds, `target ${now.target}, ${now.ready} ready`];
  if (now.max_instances) {
    parts.push(`${now.in_flight} in flight, ${now.queued} queued`);
  }
  const last = events.length ? events[events.length - 1] : null;
  if (last) {
    parts.push(`last: ${last.reason} ${last.from} → ${last.to} at ${new Date(last.at * 1000).toLocaleTimeString()}`);
  }
  return parts.join(' · ');
}

export interface PathSummary {
  path: string;
  count: number;
  p50_ms: number;
}

export interface RunRow {
  id: string;
  notebook: string;
  name?: string | null;
  state: string;
  created_at?: number | null;
  started_at?: number | null;
  finished_at?: number | null;
  outputs?: Record<string, string> | null;
  error?: unknown;
  schedule_id?: string | null;
  attempts?: number | null;
}

export interface ScheduleRow {
  id: string;
  name?: string | null;
  notebook: string;
  cron: string | null;
  timezone: string;
  enabled: boolean;
  next_fire_times?: string[] | null;
}

export interface TaskRow {
  id: string;
  function: string;
  session_id?: string | null;
  state: string;
  attempts: number;
  progress?: number | null;
  progress_message?: string | null;
  created_at: number;
  error?: unknown;
}

export interface McpToolInfo {
  name: string;
  description?: string | null;
  inputSchema?: Record<string, unknown> | null;
  calls?: number;
  p50_ms?: number | null;
}

export interface McpServerRow {
  name: string;
  kind: string;
  path: string;
  tools: McpToolInfo[];
  live_sessions: number;
}

export interface McpSessionRow {
  id: string;
  server: string;
  status: string;
  client_info?: { name?: string; version?: string } | null;
  runtime_session?: string | null;
  in_flight?: number;
  created_at: number;
}

/** A slice of a GPU held by one instance (`GET gpus`). */
export interface GpuSlice {
  instance_id: string;
  function: string;
  devices: string[];
  memory_mib: number;
  whole: boolean;
  mig: boolean;
  /** how it is held to: mig, whole card, mps or watchdog */
  mode?: string;
}

export interface GpuDevice {
  index: number;
  uuid: string;
  name: string;
  memory_total_mib: number;
  memory_used_mib: number;
  free_mib: number | null;
  mig_enabled: boolean;
  mig: { index: number; uuid: string; memory_mib: number }[];
  slices: GpuSlice[];
  /** how a slice placed here now is held to */
  enforcement?: string;
}

export interface GpuInventory {
  available: boolean;
  reason: string;
  devices: GpuDevice[];
  slices: GpuSlice[];
}

/** A device in a line: name, memory in use and held by slices, what is free. */
export function gpuLine(d: GpuDevice): string {
  const gib = (mib: number): string => `${(mib / 1024).toFixed(mib % 1024 ? 1 : 0)} GiB`;
  const held = d.slices.reduce((n, s) => n + (s.whole ? 0 : s.memory_mib), 0);
  const parts = [`GPU ${d.index} · ${d.name}`, `${gib(d.memory_used_mib)} of ${gib(d.memory_total_mib)} in use`];
  if (d.mig_enabled) {
    parts.push(`MIG: ${d.mig.length} instances`);
  } else {
    parts.push(`${gib(held)} held by slices`);
    if (d.free_mib !== null) {
      parts.push(`${gib(d.free_mib)} free`);
    }
  }
  if (d.enforcement) {
    parts.push(`slices held by ${d.enforcement}`);
  }
  return parts.join(' · ');
}

/** A row of the usage ledger (`GET usage`): totals per function (and session), per step. */
export interface UsageRow {
  function: string;
  session: string | null;
  start: number | null;
  end: number | null;
  cpu_s: number;
  mem_gib_s: number;
  gpu_s: number;
  gpu_mem_gib_s: number;
  active_s: number;
  idle_s: number;
  cost?: number;
  currency?: string;
}

/** What the sidebar's Usage section shows: the last hour, in 5-minute steps. */
export const USAGE_WINDOW_S = 3600;
export const USAGE_STEP_S = 300;

export function usagePath(nowMs: number): string {
  const since = Math.floor(nowMs / 1000) - USAGE_WINDOW_S;
  return `usage?by=function&step=${USAGE_STEP_S}&since=${since}`;
}

export interface UsageTotal {
  function: string;
  cpu_s: number;
  mem_gib_s: number;
  gpu_s: number;
  active_s: number;
  idle_s: number;
  cost: number | null;
  currency: string;
}

/** Per function over all the rows, the most CPU first. */
export function usageByFunction(rows: readonly UsageRow[]): UsageTotal[] {
  const by = new Map<string, UsageTotal>();
  for (const r of rows) {
    let t = by.get(r.function);
    if (!t) {
      t = { function: r.function, cpu_s: 0, mem_gib_s: 0, gpu_s: 0, active_s: 0, idle_s: 0, cost: null, currency: r.currency ?? '' };
      by.set(r.function, t);
    }
    t.cpu_s += r.cpu_s;
    t.mem_gib_s += r.mem_gib_s;
    t.gpu_s += r.gpu_s;
    t.active_s += r.active_s;
    t.idle_s += r.idle_s;
    if (typeof r.cost === 'number') {
      t.cost = (t.cost ?? 0) + r.cost;
    }
  }
  return [...by.values()].sort((a, b) => b.cpu_s - a.cpu_s || a.function.localeCompare(b.function));
}

/** CPU-seconds per step, all functions together, oldest first. */
export function usageSteps(rows: readonly UsageRow[]): { start: number; cpu_s: number }[] {
  const by = new Map<number, number>();
  for (const r of rows) {
    if (r.start !== null) {
      by.set(r.start, (by.get(r.start) ?? 0) + r.cpu_s);
    }
  }
  return [...by.entries()].sort((a, b) => a[0] - b[0]).map(([start, cpu_s]) => ({ start, cpu_s }));
}

export interface Snapshot {
  usage: UsageRow[];
  gpus: GpuInventory;
  functions: FunctionRow[];
  sessions: SessionRow[];
  coldstarts: ColdStartRow[];
  latency: LatencyRow[];
  runs: RunRow[];
  schedules: ScheduleRow[];
  tasks: TaskRow[];
  mcpServers: McpServerRow[];
  mcpSessions: McpSessionRow[];
  scaling: Scaling;
}

/** The three parts of a cold start, in the order they happen. */
export const SEGMENTS: ReadonlyArray<[keyof ColdStartRow, string]> = [
  ['spawn_ms', 'spawn'],
  ['init_ms', 'init'],
  ['first_call_ms', 'first call']
];

/** Sessions shown: the open ones (ended sessions pile up; the API keeps them). */
export const OPEN_STATUSES = ['live', 'paused'];

/** Cold starts fetched per refresh (the newest). */
export const COLDSTART_LIMIT = 200;
export const RUN_LIMIT = 50;
export const TASK_LIMIT = 50;
/** Task states from which a task can be cancelled; and retried. */
export const CANCELLABLE_TASK_STATES = ['queued', 'running'];
export const RETRYABLE_TASK_STATES = ['failed', 'cancelled', 'timed_out'];

/** A tool's parameters in a line: `name: type` for each, `?` after the optional ones. */
export function paramsSummary(schema: Record<string, unknown> | null | undefined): string {
  const props = schema && typeof schema['properties'] === 'object' ? (schema['properties'] as Record<string, Record<string, unknown>>) : {};
  const required = new Set(Array.isArray(schema?.['required']) ? (schema?.['required'] as string[]) : []);
  const parts = Object.entries(props).map(([k, v]) => {
    const type = Array.isArray(v?.['type']) ? (v['type'] as string[]).join('|') : String(v?.['type'] ?? 'any');
    return `${k}${required.has(k) ? '' : '?'}: ${type}`;
  });
  return parts.length ? parts.join(', ') : 'no parameters';
}
/** Run states from which a run can still be cancelled. */
export const ACTIVE_RUN_STATES = ['queued', 'running'];
export const OVERLAPS = ['skip', 'queue', 'allow'];
export const CATCH_UPS = ['none', 'latest'];

// -- formatting ------------------------------------------------------------------

export function percentile(values: readonly number[], q: number): number {
  if (values.length === 0) {
    return NaN;
  }
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((q / 100) * sorted.length) - 1));
  return sorted[rank];
}

export function formatMs(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !isFinite(ms)) {
    return '—';
  }
  if (ms < 10) {
    return `${ms.toFixed(1)} ms`;
  }
  if (ms < 10_000) {
    return `${Math.round(ms)} ms`;
  }
  return `${(ms / 1000).toFixed(1)} s`;
}

export function formatDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !isFinite(seconds) || seconds < 0) {
    return '—';
  }
  if (seconds < 60) {
    return `${Math.floor(seconds)}s`;
  }
  if (seconds < 3600) {
    return `${Math.floor(seconds / 60)}m ${Math.floor(seconds % 60)}s`;
  }
  if (seconds < 86400) {
    return `${Math.floor(seconds / 3600)}h ${Math.floor((seconds % 3600) / 60)}m`;
  }
  return `${Math.floor(seconds / 86400)}d ${Math.floor((seconds % 86400) / 3600)}h`;
}

export function formatBytes(n: number | null | undefined): string {
  if (n === null || n === undefined || !isFinite(n) || n < 0) {
    return '—';
  }
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return i === 0 ? `${v} B` : `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

/** What isolation an instance achieved, in a few words (the full report goes in a tooltip). */
export function isolationSummary(iso: Record<string, unknown> | null | undefined): string {
  if (!iso) {
    return '—';
  }
  const parts: string[] = [];
  const ns = iso['namespaces'];
  if (ns && typeof ns === 'object') {
    const on = Object.entries(ns as Record<string, unknown>)
      .filter(([, v]) => v === true)
      .map(([k]) => k);
    if (on.length) {
      parts.push(`ns ${on.join('+')}`);
    }
  }
  if (iso['user_namespace'] === true) {
    parts.push('userns');
  }
  if (typeof iso['uid'] === 'number') {
    parts.push(`uid ${iso['uid']}`);
  }
  if (typeof iso['cgroup'] === 'string' && iso['cgroup']) {
    parts.push(`cgroup ${iso['cgroup']}`);
  }
  if (typeof iso['seccomp'] === 'string' && iso['seccomp'] !== 'off') {
    parts.push(`seccomp ${iso['seccomp']}`);
  }
  if (typeof iso['disk'] === 'string' && iso['disk']) {
    parts.push(`disk ${iso['disk']}`);
  }
  if (typeof iso['gpu'] === 'string' && iso['gpu']) {
    parts.push(`gpu ${iso['gpu']}`);
  }
  const missing = iso['missing'];
  if (missing && typeof missing === 'object' && Object.keys(missing as object).length) {
    parts.push(`missing ${Object.keys(missing as object).join(', ')}`);
  }
  return parts.join(' · ') || 'none';
}

export function coldstartTotal(row: ColdStartRow): number {
  let total = 0;
  for (const [key] of SEGMENTS) {
    const v = Number(row[key] ?? 0);
    total += isFinite(v) && v > 0 ? v : 0;
  }
  return total;
}

/** p50 of the total cold start per path, most frequent path first. */
export function coldstartsByPath(rows: readonly ColdStartRow[]): PathSummary[] {
  const by = new Map<string, number[]>();
  for (const r of rows) {
    const key = r.path || '?';
    const list = by.get(key) ?? [];
    list.push(coldstartTotal(r));
    by.set(key, list);
  }
  return [...by.entries()]
    .map(([path, totals]) => ({ path, count: totals.length, p50_ms: percentile(totals, 50) }))
    .sort((a, b) => b.count - a.count || a.path.localeCompare(b.path));
}

/** Each function with its live instances, open sessions, calls and p50 latency. */
export function summariseFunctions(snap: Snapshot): FunctionSummary[] {
  const latencies = new Map(snap.latency.map(l => [l.function, l]));
  return snap.functions.map(f => {
    const mine = snap.sessions.filter(s => s.function === f.name && OPEN_STATUSES.includes(s.status));
    const instances = new Set(mine.map(s => s.instance?.id ?? s.instance_id).filter(Boolean));
    const lat = latencies.get(f.name);
    return {
      name: f.name,
      version: f.active_version,
      latest: f.latest_version,
      instances: instances.size,
      sessions: mine.length,
      calls: mine.reduce((n, s) => n + (s.calls || 0), 0),
      p50_ms: lat ? lat.p50_ms : null,
      scaling: scalingLine(
        snap.scaling.functions[f.name],
        snap.scaling.events.filter(e => e.function === f.name)
      )
    };
  });
}

/** Open sessions, newest first. */
export function openSessions(rows: readonly SessionRow[]): SessionRow[] {
  return rows
    .filter(s => OPEN_STATUSES.includes(s.status))
    .sort((a, b) => (b.created_at || 0) - (a.created_at || 0) || a.id.localeCompare(b.id));
}

/**
 * The rows a virtualised list draws: those in view, plus `overscan` on either
 * side. `rowHeight` is fixed, so nothing needs measuring.
 */
export function visibleRange(
  count: number,
  scrollTop: number,
  viewHeight: number,
  rowHeight: number,
  overscan = 8
): { start: number; end: number } {
  if (count <= 0 || rowHeight <= 0) {
    return { start: 0, end: 0 };
  }
  const first = Math.floor(Math.max(0, scrollTop) / rowHeight);
  const shown = Math.ceil(Math.max(0, viewHeight) / rowHeight) + 1;
  const start = Math.max(0, Math.min(count, first - overscan));
  const end = Math.max(start, Math.min(count, first + shown + overscan));
  return { start, end };
}

/**
 * The handshake's verdict: `null` when the frontend and the server extension
 * agree, else the notice to show.
 */
export function handshakeNotice(frontend: string, server: Handshake | null, error?: string): string | null {
  if (server === null) {
    return `The FunctionAI server extension did not answer (${error ?? 'no answer'}): is jupyter_functionai installed and enabled in this server?`;
  }
  if (server.version !== frontend) {
    return (
      `FunctionAI versions differ: this page has the JupyterLab extension ${frontend}, ` +
      `the server runs ${server.version}. Reload the page; if it persists, reinstall jupyter-functionai and restart the server.`
    );
  }
  return null;
}

/** The message of an error, for a person. */
export function describeError(err: unknown): string {
  if (err instanceof ApiError) {
    return `${err.status} ${err.kind}: ${err.message}`;
  }
  if (err instanceof Error) {
    return err.message || err.name;
  }
  return String(err);
}

/** What the "Run as job" / "Schedule" form holds, as typed (all strings). */
export interface JobFormFields {
  name: string;
  parameters: string;
  kernel: string;
  tags: string;
  cron?: string;
  timezone?: string;
  overlap?: string;
  catch_up?: string;
}

/**
 * The body of `POST runs` (no cron) or `POST schedules` for `notebook`, or the
 * reason the form cannot be sent. The server validates again (cron, time zone,
 * kernel): this catches what is plainly wrong before a round trip.
 */
export function jobBody(notebook: string, f: JobFormFields, schedule: boolean): { body: Record<string, unknown> } | { error: string } {
  const body: Record<string, unknown> = { notebook };
  if (f.name.trim()) {
    body['name'] = f.name.trim();
  }
  if (f.parameters.trim()) {
    let params: unknown;
    try {
      params = JSON.parse(f.parameters);
    } catch (err) {
      return { error: `parameters must be a JSON object, like {"x": 1}: ${(err as Error).message}` };
    }
    if (params === null || typeof params !== 'object' || Array.isArray(params)) {
      return { error: 'parameters must be a JSON object, like {"x": 1}' };
    }
    body['parameters'] = params;
  }
  if (f.kernel.trim()) {
    body['kernel'] = f.kernel.trim();
  }
  const tags = f.tags
    .split(',')
    .map(t => t.trim())
    .filter(Boolean);
  if (tags.length) {
    body['tags'] = tags;
  }
  if (schedule) {
    const cron = (f.cron ?? '').trim();
    if (cron.split(/\s+/).length !== 5) {
      return { error: `cron must have five fields (minute hour day month weekday), like "0 6 * * *", got ${JSON.stringify(cron)}` };
    }
    body['cron'] = cron;
    body['timezone'] = (f.timezone ?? '').trim() || 'UTC';
    if (f.overlap) {
      if (!OVERLAPS.includes(f.overlap)) {
        return { error: `overlap must be one of ${OVERLAPS.join(', ')}` };
      }
      body['overlap'] = f.overlap;
    }
    if (f.catch_up) {
      if (!CATCH_UPS.includes(f.catch_up)) {
        return { error: `catch-up must be one of ${CATCH_UPS.join(', ')}` };
      }
      body['catch_up'] = f.catch_up;
    }
  }
  return { body };
}

/** A function name the server accepts (the spec's rule: letters, digits, -, _; 1–63; a letter first). */
export const FUNCTION_NAME = /^[A-Za-z][A-Za-z0-9_-]{0,62}$/;

/**
 * What "Promote cell to function" deploys from a cell's source: a leading
 * `%%function NAME` line gives the name (and is not deployed), and the code
 * must define the handler, as `%%function` asks.
 */
export function cellToFunction(source: string, handler = 'handler'): { name: string | null; code: string } | { error: string } {
  let code = source;
  let name: string | null = null;
  const first = source.split('\n', 1)[0];
  const magic = /^%%function(?:\s+(\S+))?/.exec(first);
  if (magic) {
    name = magic[1] && !magic[1].startsWith('-') ? magic[1] : null;
    code = source.slice(first.length + 1);
  } else if (first.startsWith('%%')) {
    return { error: `the cell is a ${first.split(/\s/)[0]} cell, not Python code` };
  }
  if (!code.trim()) {
    return { error: 'the cell is empty' };
  }
  const defines = new RegExp(`^(?:async\\s+)?def\\s+${handler}\\s*\\(|^${handler}\\s*=`, 'm');
  if (!defines.test(code)) {
    return { error: `the cell defines no handler: add \`def ${handler}(event, ctx): ...\`` };
  }
  return { name, code };
}

// -- the model -------------------------------------------------------------------

export type Listener = (model: SidebarModel) => void;

/**
 * The sidebar's state, fetched from the REST API. `refresh()` fetches
 * everything at once; calls while one is under way are folded into one more
 * after it (a burst of change events costs two fetches, not one each).
 */
export class SidebarModel {
  snapshot: Snapshot = {
    usage: [],
    gpus: { available: false, reason: '', devices: [], slices: [] },
    functions: [],
    sessions: [],
    coldstarts: [],
    latency: [],
    runs: [],
    schedules: [],
    tasks: [],
    mcpServers: [],
    mcpSessions: [],
    scaling: { functions: {}, events: [] }
  };
  /** Why the last refresh failed (the last good snapshot is kept and shown dimmed), or null. */
  error: string | null = null;
  /** When the last refresh succeeded (ms since the epoch), or null before the first. */
  updatedAt: number | null = null;
  /** How many refreshes fetched (for the tests and the benchmark). */
  refreshes = 0;
  private listeners: Listener[] = [];
  private running: Promise<void> | null = null;
  private again = false;
  private lastStart = 0;
  /** How long the last fetch took (ms). */
  lastDuration = 0;
  private pending: ReturnType<typeof setTimeout> | null = null;
  private pendingAt = 0;

  constructor(private readonly fetcher: Fetcher) {}

  subscribe(listener: Listener): () => void {
    this.listeners.push(listener);
    return () => {
      this.listeners = this.listeners.filter(l => l !== listener);
    };
  }

  get sessions(): SessionRow[] {
    return openSessions(this.snapshot.sessions);
  }

  get functions(): FunctionSummary[] {
    return summariseFunctions(this.snapshot);
  }

  get paths(): PathSummary[] {
    return coldstartsByPath(this.snapshot.coldstarts);
  }

  get lastColdStart(): ColdStartRow | null {
    let best: ColdStartRow | null = null;
    for (const r of this.snapshot.coldstarts) {
      if (best === null || r.at > best.at) {
        best = r;
      }
    }
    return best;
  }

  /**
   * A refresh that something pushed asks for (a change event, a poll): at
   * most one every `minIntervalMs`, the later ones folded into one at the end
   * of that interval. A burst of server events (every call commits a write)
   * so costs one fetch per interval, not one per event. The interval is at
   * least twice the last fetch's duration: a slow (busy) server is asked at
   * most half of the time.
   */
  requestRefresh(minIntervalMs: number): void {
    const due = this.lastStart + Math.max(minIntervalMs, 2 * this.lastDuration);
    if (this.pending !== null) {
      if (due >= this.pendingAt) {
        return; // one is due already, as soon: it will see this change too
      }
      clearTimeout(this.pending); // due later (asked while hidden): sooner now
      this.pending = null;
    }
    const wait = due - Date.now();
    if (wait <= 0) {
      void this.refresh();
      return;
    }
    this.pendingAt = due;
    this.pending = setTimeout(() => {
      this.pending = null;
      void this.refresh();
    }, wait);
  }

  /** Fetch everything again now; resolves once the model holds the answer (or the error). */
  refresh(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      try {
        do {
          this.again = false;
          await this.fetchOnce();
        } while (this.again);
      } finally {
        this.running = null;
      }
    })();
    return this.running;
  }

  async closeSession(id: string): Promise<void> {
    await this.fetcher.del(`sessions/${encodeURIComponent(id)}`);
    await this.refresh();
  }

  async rollback(name: string, version: number): Promise<void> {
    await this.fetcher.post(`functions/${encodeURIComponent(name)}/rollback`, { version });
    await this.refresh();
  }

  async startRun(body: Record<string, unknown>): Promise<RunRow> {
    const run = await this.fetcher.post<RunRow>('runs', body);
    await this.refresh();
    return run;
  }

  async createSchedule(body: Record<string, unknown>): Promise<ScheduleRow> {
    const schedule = await this.fetcher.post<ScheduleRow>('schedules', body);
    await this.refresh();
    return schedule;
  }

  async cancelRun(id: string): Promise<void> {
    await this.fetcher.post(`runs/${encodeURIComponent(id)}/cancel`, {});
    await this.refresh();
  }

  async scheduleAction(id: string, action: 'pause' | 'resume' | 'run'): Promise<void> {
    await this.fetcher.post(`schedules/${encodeURIComponent(id)}/${action}`, {});
    await this.refresh();
  }

  async taskAction(id: string, action: 'cancel' | 'retry'): Promise<void> {
    await this.fetcher.post(`tasks/${encodeURIComponent(id)}/${action}`, {});
    await this.refresh();
  }

  async hostServer(body: Record<string, unknown>): Promise<void> {
    await this.fetcher.post('mcp/servers', body);
    await this.refresh();
  }

  tryTool(server: string, tool: string, args: Record<string, unknown>, version: string): Promise<ToolCallOutcome> {
    return callTool(this.fetcher, server, tool, args, version);
  }

  async endMcpSession(id: string): Promise<void> {
    await this.fetcher.del(`mcp/sessions/${encodeURIComponent(id)}`);
    await this.refresh();
  }

  async deploy(name: string, code: string): Promise<{ name: string; version: number }> {
    const row = await this.fetcher.post<{ name: string; version: number }>('functions', { name, source: { kind: 'code', code } });
    await this.refresh();
    return row;
  }

  private async fetchOnce(): Promise<void> {
    this.lastStart = Date.now();
    if (this.pending !== null) {
      clearTimeout(this.pending); // this fetch sees what it was for
      this.pending = null;
    }
    try {
      const [functions, live, paused, coldstarts, latency, runs, schedules, tasks, mcpServers, mcpSessions, gpus, usage, scaling] = await Promise.all([
        this.fetcher.get<FunctionRow[]>('functions'),
        this.fetcher.get<SessionRow[]>('sessions?status=live'),
        this.fetcher.get<SessionRow[]>('sessions?status=paused'),
        this.fetcher.get<ColdStartRow[]>(`coldstarts?limit=${COLDSTART_LIMIT}`),
        this.fetcher.get<LatencyRow[]>('latency'),
        this.fetcher.get<RunRow[]>(`runs?limit=${RUN_LIMIT}`),
        this.fetcher.get<ScheduleRow[]>('schedules'),
        this.fetcher.get<TaskRow[]>(`tasks?limit=${TASK_LIMIT}`),
        this.fetcher.get<McpServerRow[]>('mcp/servers'),
        this.fetcher.get<McpSessionRow[]>('mcp/sessions?status=active'),
        this.fetcher.get<GpuInventory>('gpus'),
        this.fetcher.get<UsageRow[]>(usagePath(Date.now())),
        this.fetcher.get<Scaling>(`scaling?limit=${SCALE_EVENT_LIMIT}`)
      ]);
      this.snapshot = { usage, gpus, functions, sessions: [...live, ...paused], coldstarts, latency, runs, schedules, tasks, mcpServers, mcpSessions, scaling };
      this.error = null;
      this.updatedAt = Date.now();
    } catch (err) {
      this.error = describeError(err);
    }
    this.lastDuration = Date.now() - this.lastStart;
    this.refreshes += 1;
    for (const l of [...this.listeners]) {
      l(this);
    }
  }
}
