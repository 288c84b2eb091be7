/**
 * The FunctionAI sidebar: a Lumino widget in JupyterLab's left area, drawn
 * with plain DOM from the `SidebarModel` (no kernel involved).
 *
 * Sections: Functions, Sessions (a virtualised list: only the rows in view
 * exist in the DOM, so 1,000 sessions cost what 30 do), Cold starts (an SVG
 * chart split into spawn / init / first call, coloured by path, with p50 per
 * path). A failed refresh shows its reason above the last good data, dimmed.
 */

import { Widget } from '@lumino/widgets';

import {
  ACTIVE_RUN_STATES,
  CANCELLABLE_TASK_STATES,
  RETRYABLE_TASK_STATES,
  TaskRow,
  argumentsSkeleton,
  hostServerBody,
  paramsSummary,
  toolOutcomeText,
  ColdStartRow,
  FunctionSummary,
  SEGMENTS,
  RunRow,
  ScheduleRow,
  SessionRow,
  SidebarModel,
  coldstartTotal,
  describeError,
  formatBytes,
  formatDuration,
  formatMs,
  gpuLine,
  isolationSummary,
  USAGE_STEP_S,
  USAGE_WINDOW_S,
  usageByFunction,
  usageSteps,
  visibleRange
} from './model';

/** A session row's height in px (fixed: the list is virtualised). */
export const ROW_HEIGHT = 46;
/** Cold starts drawn in the chart (newest). */
export const CHART_STARTS = 24;

/** The colour of each start path, as in the widget panels (theme-independent hues). */
export const PATH_COLOURS: Record<string, string> = {
  'warm-pool': '#2e7d32',
  'template-fork': '#1565c0',
  fresh: '#e65100'
};

export function pathColour(path: string | null | undefined): string {
  return PATH_COLOURS[path ?? ''] ?? '#757575';
}

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  text?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') {
      node.className = v;
    } else {
      node.setAttribute(k, v);
    }
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

const SVG = 'http://www.w3.org/2000/svg';

function svg(tag: string, attrs: Record<string, string | number>): SVGElement {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) {
    node.setAttribute(k, String(v));
  }
  return node;
}

/** CPU-seconds per step as bars (the Usage section's chart). */
function usageChart(steps: { start: number; cpu_s: number }[]): SVGElement {
  const width = 300;
  const height = 60;
  const chart = svg('svg', { class: 'fai-usage-chart', width, height, viewBox: `0 0 ${width} ${height}`, role: 'img' });
  const max = Math.max(...steps.map(s => s.cpu_s), 1e-9);
  const slots = USAGE_WINDOW_S / USAGE_STEP_S;
  const bar = width / slots;
  const first = Math.floor(Date.now() / 1000 / USAGE_STEP_S) * USAGE_STEP_S - (slots - 1) * USAGE_STEP_S;
  chart.setAttribute('aria-label', `CPU-seconds per ${USAGE_STEP_S / 60} minutes, the last hour`);
  for (const s of steps) {
    const i = Math.round((s.start - first) / USAGE_STEP_S);
    if (i < 0 || i >= slots) {
      continue;
    }
    const h = Math.max(1, (s.cpu_s / max) * (height - 2));
    const rect = svg('rect', { class: 'fai-usage-bar', x: i * bar + 1, y: height - h, width: bar - 2, height: h, 'data-cpu-s': s.cpu_s.toFixed(3) });
    const title = svg('title', {});
    title.textContent = `${new Date(s.start * 1000).toLocaleTimeString()}: ${s.cpu_s.toFixed(2)} CPU-s`;
    rect.appendChild(title);
    chart.appendChild(rect);
  }
  return chart;
}

export interface SidebarActions {
  /** Ask before closing a session (a dialog in Lab); resolve true to close. */
  confirmClose(session: SessionRow): Promise<boolean>;
  /** Put a text on the clipboard and say so. */
  copy(text: string, what: string): void;
  /** The invoke endpoint of a function (absolute URL). */
  endpoint(name: string): string;
  /** Open a run's output (a path under the server's root) in a Lab tab. */
  openOutput(path: string, format: string): void;
  /** This extension's version (the MCP client's, in the try-a-tool form). */
  version: string;
}

export class FunctionAISidebar extends Widget {
  readonly model: SidebarModel;
  private readonly actions: SidebarActions;
  private readonly notice: HTMLDivElement;
  private readonly status: HTMLDivElement;
  private readonly functionsBody: HTMLDivElement;
  private readonly sessionsSummary: HTMLDivElement;
  private readonly sessionsView: HTMLDivElement;
  private readonly sessionsSpacer: HTMLDivElement;
  private readonly coldBody: HTMLDivElement;
  private readonly runsBody: HTMLDivElement;
  private readonly tasksBody: HTMLDivElement;
  private readonly toolsBody: HTMLDivElement;
  private readonly gpusBody: HTMLDivElement;
  private readonly usageBody: HTMLDivElement;
  private rows: SessionRow[] = [];
  private readonly closing = new Set<string>();
  private drawn = { start: -1, end: -1, version: -1 };
  private version = 0;
  private handshake: string | null = null;

  constructor(model: SidebarModel, actions: SidebarActions) {
    super();
    this.model = model;
    this.actions = actions;
    this.id = 'functionai-sidebar';
    this.addClass('fai-sidebar');
    this.title.caption = 'FunctionAI';

    const root = this.node;
    root.setAttribute('role', 'region');
    root.setAttribute('aria-label', 'FunctionAI');
    const header = el('div', { class: 'fai-header' });
    header.appendChild(el('h2', { class: 'fai-title' }, 'FunctionAI'));
    const refresh = el('button', { class: 'fai-button fai-refresh', 'aria-label': 'Refresh FunctionAI', title: 'Refresh' }, '⟳');
    refresh.addEventListener('click', () => void this.model.refresh());
    header.appendChild(refresh);
    root.appendChild(header);

    this.notice = el('div', { class: 'fai-notice', role: 'alert', hidden: '' });
    root.appendChild(this.notice);
    this.status = el('div', { class: 'fai-error', role: 'status', 'aria-live': 'polite', hidden: '' });
    root.appendChild(this.status);

    this.functionsBody = el('div', { class: 'fai-functions' });
    root.appendChild(this.section('Functions', 'functions', this.functionsBody));

    const sessions = el('div', { class: 'fai-sessions' });
    this.sessionsSummary = el('div', { class: 'fai-summary' });
    this.sessionsView = el('div', { class: 'fai-sessions-view', role: 'list', 'aria-label': 'Open sessions' });
    this.sessionsSpacer = el('div', { class: 'fai-sessions-spacer' });
    this.sessionsView.appendChild(this.sessionsSpacer);
    this.sessionsView.addEventListener('scroll', () => this.drawSessions(false));
    sessions.appendChild(this.sessionsSummary);
    sessions.appendChild(this.sessionsView);
    root.appendChild(this.section('Sessions', 'sessions', sessions));

    this.coldBody = el('div', { class: 'fai-coldstarts' });
    root.appendChild(this.section('Cold starts', 'coldstarts', this.coldBody));

    this.runsBody = el('div', { class: 'fai-runs' });
    root.appendChild(this.section('Runs and schedules', 'runs', this.runsBody));

    this.tasksBody = el('div', { class: 'fai-tasks' });
    root.appendChild(this.section('Tasks', 'tasks', this.tasksBody));

    this.toolsBody = el('div', { class: 'fai-tools-section' });
    root.appendChild(this.section('Tools (MCP)', 'tools', this.toolsBody));

    this.gpusBody = el('div', { class: 'fai-gpus', role: 'list', 'aria-label': 'GPUs' });
    root.appendChild(this.section('GPUs', 'gpus', this.gpusBody));

    this.usageBody = el('div', { class: 'fai-usage' });
    root.appendChild(this.section('Usage (last hour)', 'usage', this.usageBody));

    this.model.subscribe(() => this.render());
    this.render();
  }

  /** Show (or clear, with null) the handshake's notice. */
  setHandshake(notice: string | null): void {
    this.handshake = notice;
    this.notice.hidden = notice === null;
    this.notice.textContent = notice ?? '';
  }

  protected onAfterShow(): void {
    void this.model.refresh(); // while hidden it refetched seldom
    this.drawSessions(true);
  }

  protected onResize(): void {
    this.drawSessions(false);
  }

  private section(title: string, key: string, body: HTMLElement): HTMLElement {
    const details = el('details', { class: `fai-section fai-section-${key}`, open: '' });
    const summary = el('summary', { class: 'fai-section-title' }, title);
    details.appendChild(summary);
    details.appendChild(body);
    details.addEventListener('toggle', () => this.drawSessions(true));
    return details;
  }

  render(): void {
    // User Timing: each render shows as "functionai:render" in the browser's performance tools
    const t0 = performance.now();
    try {
      this.draw();
    } finally {
      performance.measure('functionai:render', { start: t0, end: performance.now() });
    }
  }

  private draw(): void {
    const m = this.model;
    this.status.hidden = m.error === null;
    this.status.textContent = m.error === null ? '' : `Cannot reach the FunctionAI server: ${m.error}` + (m.updatedAt ? ` (showing what it said at ${new Date(m.updatedAt).toLocaleTimeString()})` : '');
    this.toggleClass('fai-stale', m.error !== null);
    this.renderFunctions(m.functions);
    this.rows = m.sessions;
    this.version += 1;
    const counts = new Map<string, number>();
    for (const s of this.rows) {
      counts.set(s.status, (counts.get(s.status) ?? 0) + 1);
    }
    this.sessionsSummary.textContent = this.rows.length
      ? [...counts.entries()].map(([k, n]) => `${n} ${k}`).join(' · ')
      : m.updatedAt === null && m.error === null
        ? 'loading…'
        : 'no open sessions';
    this.drawSessions(true);
    this.renderColdStarts();
    this.renderRuns();
    this.renderTasks();
    this.renderTools();
    this.renderGpus();
    this.renderUsage();
    void this.handshake;
  }

  // -- usage ------------------------------------------------------------------------------

  private renderUsage(): void {
    const body = this.usageBody;
    body.textContent = '';
    const rows = this.model.snapshot.usage;
    if (!rows.length) {
      body.appendChild(el('div', { class: 'fai-empty' }, this.model.updatedAt === null ? 'loading…' : 'no usage in the last hour'));
      return;
    }
    body.appendChild(usageChart(usageSteps(rows)));
    for (const t of usageByFunction(rows)) {
      const cost = t.cost !== null ? ` · ${t.cost.toFixed(4)} ${t.currency}`.trimEnd() : '';
      body.appendChild(
        el(
          'div',
          { class: 'fai-line fai-usage-row', 'data-function': t.function },
          `${t.function} · ${t.cpu_s.toFixed(2)} CPU-s · ${t.mem_gib_s.toFixed(3)} GiB-s` +
            (t.gpu_s ? ` · ${t.gpu_s.toFixed(1)} GPU-s` : '') +
            ` · active ${formatDuration(t.active_s)}, idle ${formatDuration(t.idle_s)}${cost}`
        )
      );
    }
  }

  // -- GPUs -------------------------------------------------------------------------------

  private renderGpus(): void {
    const body = this.gpusBody;
    body.textContent = '';
    const inv = this.model.snapshot.gpus;
    if (!inv.available) {
      body.appendChild(el('div', { class: 'fai-empty fai-no-gpu' }, this.model.updatedAt === null ? 'loading…' : inv.reason || 'no GPU found'));
      return;
    }
    for (const d of inv.devices) {
      const row = el('div', { class: 'fai-gpu', role: 'listitem', 'data-gpu-uuid': d.uuid });
      row.appendChild(el('div', { class: 'fai-line' }, gpuLine(d)));
      for (const s of d.slices) {
        const what = s.whole ? 'whole card' : `${(s.memory_mib / 1024).toFixed(0)} GiB (${s.mode ?? (s.mig ? 'mig' : 'watchdog')})`;
        row.appendChild(el('div', { class: 'fai-line fai-dim fai-gpu-slice', 'data-instance-id': s.instance_id }, `${s.function} · ${s.instance_id} · ${what}`));
      }
      body.appendChild(row);
    }
  }

  // -- functions ---------------------------------------------------------------

  private renderFunctions(rows: FunctionSummary[]): void {
    const body = this.functionsBody;
    body.textContent = '';
    if (!rows.length) {
      body.appendChild(el('div', { class: 'fai-empty' }, this.model.updatedAt === null ? 'loading…' : 'no functions deployed (use %%function in a notebook)'));
      return;
    }
    for (const f of rows) {
      const row = el('div', { class: 'fai-function', 'data-function': f.name, role: 'group', 'aria-label': `function ${f.name}` });
      const line = el('div', { class: 'fai-line' });
      line.appendChild(el('span', { class: 'fai-name' }, f.name));
      line.appendChild(el('span', { class: 'fai-dim' }, ` v${f.version}${f.latest !== f.version ? ` (latest v${f.latest})` : ''}`));
      row.appendChild(line);
      row.appendChild(
        el(
          'div',
          { class: 'fai-line fai-dim fai-function-stats' },
          `${f.instances} instance${f.instances === 1 ? '' : 's'} · ${f.sessions} session${f.sessions === 1 ? '' : 's'} · p50 ${formatMs(f.p50_ms)}`
        )
      );
      if (f.scaling) {
        row.appendChild(el('div', { class: 'fai-line fai-dim fai-function-scaling' }, f.scaling));
      }
      const tools = el('div', { class: 'fai-line fai-tools' });
      const copyUrl = el('button', { class: 'fai-button', 'aria-label': `Copy the endpoint of ${f.name}` }, 'Copy endpoint');
      copyUrl.addEventListener('click', () => this.actions.copy(this.actions.endpoint(f.name), 'endpoint'));
      const copyCurl = el('button', { class: 'fai-button', 'aria-label': `Copy a curl command calling ${f.name}` }, 'Copy curl');
      copyCurl.addEventListener('click', () =>
        this.actions.copy(
          `curl -X POST ${this.actions.endpoint(f.name)} -H "Authorization: token $FUNCTIONAI_TOKEN" -H "X-Functionai-Session-Id: my-session" -H "Content-Type: application/json" -d '{"hello": "world"}'`,
          'curl command'
        )
      );
      tools.appendChild(copyUrl);
      tools.appendChild(copyCurl);
      if (f.latest > 1) {
        const pick = el('select', { class: 'fai-rollback-version', 'aria-label': `Version of ${f.name} to roll back to` });
        for (let v = f.latest; v >= 1; v--) {
          const opt = el('option', { value: String(v) }, `v${v}`);
          if (v === f.version) {
            opt.selected = true;
          }
          pick.appendChild(opt);
        }
        const go = el('button', { class: 'fai-button fai-rollback', 'aria-label': `Roll ${f.name} back to the chosen version` }, 'Roll back');
        go.addEventListener('click', () => {
          go.disabled = true;
          this.model
            .rollback(f.name, Number(pick.value))
            .catch(err => this.showError(`rollback of ${f.name} failed: ${describeError(err)}`))
            .finally(() => (go.disabled = false));
        });
        tools.appendChild(pick);
        tools.appendChild(go);
      }
      row.appendChild(tools);
      body.appendChild(row);
    }
  }

  // -- sessions: a virtualised list --------------------------------------------------

  private drawSessions(force: boolean): void {
    const view = this.sessionsView;
    const count = this.rows.length;
    this.sessionsSpacer.style.height = `${count * ROW_HEIGHT}px`;
    const height = view.clientHeight || 400;
    const { start, end } = visibleRange(count, view.scrollTop, height, ROW_HEIGHT);
    if (!force && start === this.drawn.start && end === this.drawn.end && this.drawn.version === this.version) {
      return;
    }
    this.drawn = { start, end, version: this.version };
    for (const old of Array.from(view.querySelectorAll('.fai-session'))) {
      old.remove();
    }
    const frag = document.createDocumentFragment();
    for (let i = start; i < end; i++) {
      frag.appendChild(this.sessionRow(this.rows[i], i));
    }
    view.appendChild(frag);
  }

  private sessionRow(s: SessionRow, index: number): HTMLElement {
    const inst = s.instance ?? null;
    const row = el('div', {
      class: `fai-session fai-status-${s.status}`,
      role: 'listitem',
      'data-session-id': s.id,
      'data-instance-id': inst?.id ?? s.instance_id ?? '',
      'data-pid': inst?.pid !== null && inst?.pid !== undefined ? String(inst.pid) : ''
    });
    row.style.top = `${index * ROW_HEIGHT}px`;
    row.style.height = `${ROW_HEIGHT}px`;
    const top = el('div', { class: 'fai-line' });
    top.appendChild(el('span', { class: 'fai-session-id', title: s.id }, s.id));
    top.appendChild(el('span', { class: `fai-badge fai-badge-${s.status}` }, s.status));
    const closing = this.closing.has(s.id);
    const close = el('button', { class: 'fai-button fai-close', 'aria-label': `Close session ${s.id}`, title: `Close session ${s.id}` }, closing ? 'closing…' : 'Close');
    close.disabled = closing;
    close.addEventListener('click', () => void this.closeSession(s));
    top.appendChild(close);
    row.appendChild(top);
    const iso = isolationSummary(inst?.isolation ?? null);
    const path = inst?.path ?? '';
    const detail = el('div', { class: 'fai-line fai-dim fai-session-detail' });
    detail.title = `isolation: ${iso}`;
    const pathSpan = el('span', { class: 'fai-path' }, path || '—');
    pathSpan.style.color = pathColour(path);
    detail.appendChild(el('span', {}, `${s.function} v${s.version} → `));
    detail.appendChild(el('span', { class: 'fai-instance' }, inst?.id ?? s.instance_id ?? '—'));
    detail.appendChild(el('span', {}, ' → pid '));
    detail.appendChild(el('span', { class: 'fai-pid' }, inst?.pid !== null && inst?.pid !== undefined ? String(inst.pid) : '—'));
    detail.appendChild(el('span', {}, ' · '));
    detail.appendChild(pathSpan);
    detail.appendChild(
      el(
        'span',
        {},
        ` · age ${formatDuration(s.age_s)} · idle ${formatDuration(s.idle_s)} · ${s.calls} call${s.calls === 1 ? '' : 's'} · state ${formatBytes(s.state_bytes)} · ${iso}`
      )
    );
    row.appendChild(detail);
    return row;
  }

  private async closeSession(s: SessionRow): Promise<void> {
    if (!(await this.actions.confirmClose(s))) {
      return;
    }
    this.closing.add(s.id);
    this.drawSessions(true);
    try {
      await this.model.closeSession(s.id);
    } catch (err) {
      this.showError(`closing session ${s.id} failed: ${describeError(err)}`);
    } finally {
      this.closing.delete(s.id);
      this.version += 1;
      this.drawSessions(true);
    }
  }

  private showError(text: string): void {
    this.status.hidden = false;
    this.status.textContent = text;
  }

  // -- cold starts --------------------------------------------------------------------

  private renderColdStarts(): void {
    const body = this.coldBody;
    body.textContent = '';
    const rows = [...this.model.snapshot.coldstarts].sort((a, b) => b.at - a.at).slice(0, CHART_STARTS);
    if (!rows.length) {
      body.appendChild(el('div', { class: 'fai-empty' }, this.model.updatedAt === null ? 'loading…' : 'no cold starts yet'));
      return;
    }
    const paths = el('div', { class: 'fai-paths' });
    for (const p of this.model.paths) {
      const chip = el('span', { class: 'fai-path-p50', 'data-path': p.path }, `${p.path}: p50 ${formatMs(p.p50_ms)} (n=${p.count})`);
      chip.style.borderColor = pathColour(p.path);
      paths.appendChild(chip);
    }
    body.appendChild(paths);
    body.appendChild(coldstartChart(rows));
  }

  // -- runs and schedules --------------------------------------------------------------

  private renderRuns(): void {
    const body = this.runsBody;
    body.textContent = '';
    const { runs, schedules } = this.model.snapshot;
    if (!runs.length && !schedules.length) {
      body.appendChild(el('div', { class: 'fai-empty' }, this.model.updatedAt === null ? 'loading…' : 'no runs or schedules (Run as job / Schedule on a notebook\'s toolbar)'));
      return;
    }
    for (const sc of schedules) {
      body.appendChild(this.scheduleRow(sc));
    }
    for (const run of runs) {
      body.appendChild(this.runRow(run));
    }
  }

  private act(button: HTMLButtonElement, what: string, fn: () => Promise<unknown>): void {
    button.disabled = true;
    fn()
      .catch(err => this.showError(`${what} failed: ${describeError(err)}`))
      .finally(() => (button.disabled = false));
  }

  // -- tasks ------------------------------------------------------------------------------

  private renderTasks(): void {
    const body = this.tasksBody;
    body.textContent = '';
    const tasks = this.model.snapshot.tasks;
    if (!tasks.length) {
      body.appendChild(el('div', { class: 'fai-empty' }, this.model.updatedAt === null ? 'loading…' : 'no tasks (submit one: POST …/functions/NAME/tasks)'));
      return;
    }
    for (const t of tasks) {
      body.appendChild(this.taskRow(t));
    }
  }

  private taskRow(t: TaskRow): HTMLElement {
    const row = el('div', { class: `fai-task fai-task-${t.state}`, 'data-task-id': t.id });
    const top = el('div', { class: 'fai-line' });
    top.appendChild(el('span', { class: 'fai-name', title: t.id }, t.function));
    top.appendChild(el('span', { class: `fai-badge fai-task-state fai-badge-${t.state}` }, t.state));
    if (CANCELLABLE_TASK_STATES.includes(t.state)) {
      const cancel = el('button', { class: 'fai-button fai-close fai-task-cancel', 'aria-label': `Cancel task ${t.id}` }, 'Cancel');
      cancel.addEventListener('click', () => this.act(cancel, `cancelling task ${t.id}`, () => this.model.taskAction(t.id, 'cancel')));
      top.appendChild(cancel);
    } else if (RETRYABLE_TASK_STATES.includes(t.state)) {
      const retry = el('button', { class: 'fai-button fai-task-retry', 'aria-label': `Retry task ${t.id}` }, 'Retry');
      retry.addEventListener('click', () => this.act(retry, `retrying task ${t.id}`, () => this.model.taskAction(t.id, 'retry')));
      top.appendChild(retry);
    }
    row.appendChild(top);
    const progress = t.progress !== null && t.progress !== undefined ? ` · ${Math.round(t.progress * 100)}%${t.progress_message ? ` ${t.progress_message}` : ''}` : '';
    row.appendChild(el('div', { class: 'fai-line fai-dim' }, `${t.id} · attempt ${t.attempts}${progress}${t.session_id ? ` · session ${t.session_id}` : ''}`));
    return row;
  }

  // -- tools ------------------------------------------------------------------------------

  private readonly toolsForms = el('div', { class: 'fai-tool-forms' });
  private readonly toolsList = el('div', { class: 'fai-tool-list' });
  private toolsFormsMade = false;

  /** The try-a-tool and host-a-server forms: made once (what is typed survives refreshes). */
  private makeToolForms(): void {
    this.toolsFormsMade = true;
    const tryForm = el('form', { class: 'fai-try-tool', 'aria-label': 'Try a tool' });
    tryForm.appendChild(el('div', { class: 'fai-form-title' }, 'Try a tool'));
    const pick = el('select', { class: 'fai-try-tool-pick', 'aria-label': 'Tool to try' });
    const args = el('textarea', { class: 'fai-try-tool-args', 'aria-label': 'Arguments (JSON)', rows: '3' });
    const go = el('button', { class: 'fai-button fai-try-tool-call', type: 'submit', 'aria-label': 'Call the tool' }, 'Call');
    const out = el('pre', { class: 'fai-try-tool-result', 'aria-live': 'polite' });
    pick.addEventListener('change', () => {
      const [srv, tool] = JSON.parse(pick.value || '["",""]') as [string, string];
      const info = this.model.snapshot.mcpServers.find(s => s.name === srv)?.tools.find(t => t.name === tool);
      args.value = JSON.stringify(argumentsSkeleton(info?.inputSchema), null, 1);
    });
    tryForm.addEventListener('submit', ev => {
      ev.preventDefault();
      if (!pick.value) {
        return;
      }
      const [srv, tool] = JSON.parse(pick.value) as [string, string];
      let parsed: unknown;
      try {
        parsed = args.value.trim() ? JSON.parse(args.value) : {};
      } catch (err) {
        out.textContent = `the arguments are not JSON: ${(err as Error).message}`;
        return;
      }
      if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
        out.textContent = 'the arguments must be a JSON object';
        return;
      }
      go.disabled = true;
      out.textContent = `calling ${tool}…`;
      this.model
        .tryTool(srv, tool, parsed as Record<string, unknown>, this.actions.version)
        .then(r => (out.textContent = `${toolOutcomeText(r)}  (${formatMs(r.ms)})`))
        .catch(err => (out.textContent = `the call failed: ${describeError(err)}`))
        .finally(() => (go.disabled = false));
    });
    tryForm.appendChild(pick);
    tryForm.appendChild(args);
    tryForm.appendChild(go);
    tryForm.appendChild(out);
    this.toolsForms.appendChild(tryForm);

    const host = el('form', { class: 'fai-host-server', 'aria-label': 'Host an MCP server' });
    host.appendChild(el('div', { class: 'fai-form-title' }, 'Host an MCP server'));
    const name = el('input', { class: 'fai-host-name', 'aria-label': 'Server name', placeholder: 'name' });
    const source = el('input', { class: 'fai-host-source', 'aria-label': 'Catalog name or command', placeholder: 'catalog name (time) or command' });
    const network = el('select', { class: 'fai-host-network', 'aria-label': 'Network of the server' });
    for (const n of ['none', 'loopback', 'host']) {
      network.appendChild(el('option', { value: n }, `network: ${n}`));
    }
    const add = el('button', { class: 'fai-button fai-host-add', type: 'submit', 'aria-label': 'Host the server' }, 'Host');
    const said = el('div', { class: 'fai-dim fai-host-result', 'aria-live': 'polite' });
    host.addEventListener('submit', ev => {
      ev.preventDefault();
      const made = hostServerBody(name.value, source.value, network.value);
      if ('error' in made) {
        said.textContent = made.error;
        return;
      }
      add.disabled = true;
      said.textContent = 'starting it…';
      this.model
        .hostServer(made.body)
        .then(() => (said.textContent = `hosted ${String(made.body['name'])}`))
        .catch(err => (said.textContent = `not hosted: ${describeError(err)}`))
        .finally(() => (add.disabled = false));
    });
    for (const e of [name, source, network, add, said]) {
      host.appendChild(e);
    }
    this.toolsForms.appendChild(host);
    this.toolsBody.appendChild(this.toolsList);
    this.toolsBody.appendChild(this.toolsForms);
  }

  private updateToolPicker(): void {
    const pick = this.toolsForms.querySelector('select.fai-try-tool-pick') as HTMLSelectElement | null;
    if (!pick) {
      return;
    }
    const keep = pick.value;
    const options = this.model.snapshot.mcpServers.flatMap(s => s.tools.map(t => JSON.stringify([s.name, t.name])));
    if (options.join('\n') === Array.from(pick.options).map(o => o.value).join('\n')) {
      return;
    }
    pick.textContent = '';
    for (const v of options) {
      const [srv, tool] = JSON.parse(v) as [string, string];
      pick.appendChild(el('option', { value: v }, `${srv} · ${tool}`));
    }
    if (options.includes(keep)) {
      pick.value = keep;
    } else if (options.length) {
      pick.value = options[0];
      pick.dispatchEvent(new Event('change'));
    }
  }

  private renderTools(): void {
    if (!this.toolsFormsMade) {
      this.makeToolForms();
    }
    this.updateToolPicker();
    const body = this.toolsList;
    body.textContent = '';
    const { mcpServers, mcpSessions } = this.model.snapshot;
    if (!mcpServers.length) {
      body.appendChild(el('div', { class: 'fai-empty' }, this.model.updatedAt === null ? 'loading…' : 'no MCP servers hosted (%fai mcp …, or functionai mcp add)'));
      return;
    }
    for (const srv of mcpServers) {
      const block = el('div', { class: 'fai-mcp-server', 'data-server': srv.name });
      const top = el('div', { class: 'fai-line' });
      top.appendChild(el('span', { class: 'fai-name' }, srv.name));
      top.appendChild(el('span', { class: 'fai-dim' }, `${srv.kind} · ${srv.tools.length} tool${srv.tools.length === 1 ? '' : 's'} · ${srv.live_sessions} live`));
      block.appendChild(top);
      for (const tool of srv.tools) {
        const line = el('div', { class: 'fai-line fai-dim fai-mcp-tool', 'data-tool': tool.name, title: tool.description ?? '' });
        line.textContent = `${tool.name}(${paramsSummary(tool.inputSchema)})${tool.calls ? ` · ${tool.calls} calls · p50 ${formatMs(tool.p50_ms)}` : ''}`;
        block.appendChild(line);
      }
      for (const ms of mcpSessions.filter(m => m.server === srv.name)) {
        const line = el('div', { class: 'fai-line fai-mcp-session', 'data-mcp-session-id': ms.id });
        const who = ms.client_info?.name ? `${ms.client_info.name}${ms.client_info.version ? ` ${ms.client_info.version}` : ''}` : 'client';
        line.appendChild(el('span', { class: 'fai-dim', title: ms.id }, `${who} · ${ms.id.slice(0, 12)}… · ${ms.in_flight ?? 0} in flight`));
        const end = el('button', { class: 'fai-button fai-close fai-mcp-end', 'aria-label': `End MCP session ${ms.id}` }, 'End');
        end.addEventListener('click', () => this.act(end, `ending MCP session ${ms.id}`, () => this.model.endMcpSession(ms.id)));
        line.appendChild(end);
        block.appendChild(line);
      }
      body.appendChild(block);
    }
  }

  private scheduleRow(sc: ScheduleRow): HTMLElement {
    const row = el('div', { class: 'fai-schedule', 'data-schedule-id': sc.id });
    const top = el('div', { class: 'fai-line' });
    top.appendChild(el('span', { class: 'fai-name', title: sc.notebook }, sc.name || sc.notebook));
    top.appendChild(el('span', { class: `fai-badge ${sc.enabled ? 'fai-badge-live' : 'fai-badge-paused'}` }, sc.enabled ? 'scheduled' : 'paused'));
    const toggle = el('button', { class: 'fai-button fai-schedule-toggle', 'aria-label': `${sc.enabled ? 'Pause' : 'Resume'} schedule ${sc.name || sc.id}` }, sc.enabled ? 'Pause' : 'Resume');
    toggle.addEventListener('click', () => this.act(toggle, 'the schedule', () => this.model.scheduleAction(sc.id, sc.enabled ? 'pause' : 'resume')));
    const now = el('button', { class: 'fai-button fai-schedule-run-now', 'aria-label': `Run schedule ${sc.name || sc.id} now` }, 'Run now');
    now.addEventListener('click', () => this.act(now, 'run now', () => this.model.scheduleAction(sc.id, 'run')));
    top.appendChild(toggle);
    top.appendChild(now);
    row.appendChild(top);
    const next = sc.enabled && sc.next_fire_times && sc.next_fire_times.length ? `next ${sc.next_fire_times[0]}` : 'not firing';
    row.appendChild(el('div', { class: 'fai-line fai-dim fai-schedule-next' }, `${sc.cron ?? 'no cron'} (${sc.timezone}) · ${next}`));
    return row;
  }

  private runRow(run: RunRow): HTMLElement {
    const row = el('div', { class: `fai-run fai-run-${run.state}`, 'data-run-id': run.id });
    const top = el('div', { class: 'fai-line' });
    top.appendChild(el('span', { class: 'fai-name', title: run.notebook }, run.name || run.notebook));
    top.appendChild(el('span', { class: `fai-badge fai-run-state fai-badge-${run.state}` }, run.state));
    if (ACTIVE_RUN_STATES.includes(run.state)) {
      const cancel = el('button', { class: 'fai-button fai-close fai-run-cancel', 'aria-label': `Cancel run ${run.id}` }, 'Cancel');
      cancel.addEventListener('click', () => this.act(cancel, `cancelling run ${run.id}`, () => this.model.cancelRun(run.id)));
      top.appendChild(cancel);
    }
    row.appendChild(top);
    const links = el('div', { class: 'fai-line fai-dim' });
    const when = run.finished_at ?? run.started_at ?? run.created_at;
    links.appendChild(el('span', {}, `${run.id}${when ? ` · ${new Date(when * 1000).toLocaleString()}` : ''}${run.attempts ? ` · attempt ${run.attempts}` : ''}`));
    const outputs = run.outputs ?? {};
    for (const fmt of Object.keys(outputs).sort((a, b) => (a === 'ipynb' ? -1 : b === 'ipynb' ? 1 : a.localeCompare(b)))) {
      const a = el('a', { class: 'fai-run-link', 'data-format': fmt, href: '#', title: outputs[fmt], 'aria-label': `Open the ${fmt} output of run ${run.id}` }, fmt);
      a.addEventListener('click', ev => {
        ev.preventDefault();
        this.actions.openOutput(outputs[fmt], fmt);
      });
      links.appendChild(a);
    }
    row.appendChild(links);
    return row;
  }
}

/** Bars of recent cold starts (newest on top), each split into spawn / init / first call. */
export function coldstartChart(rows: ColdStartRow[], width = 280): SVGElement {
  const barH = 12;
  const gap = 4;
  const labelW = 70;
  const rightW = 52;
  const axisH = 18;
  const plotW = width - labelW - rightW;
  const top = Math.max(1, ...rows.map(coldstartTotal));
  const height = rows.length * (barH + gap) + axisH;
  const chart = svg('svg', { class: 'fai-chart', width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': 'Recent cold starts' });
  rows.forEach((r, i) => {
    const y = i * (barH + gap);
    const total = coldstartTotal(r);
    const colour = pathColour(r.path);
    const g = svg('g', { class: 'fai-bar', 'data-path': r.path, 'data-instance': r.instance_id, 'data-session': r.session_id ?? '', 'data-total-ms': total.toFixed(3) });
    const tip = svg('title', {});
    tip.textContent =
      `${r.function} v${r.version} · ${r.path} · instance ${r.instance_id}${r.session_id ? ` · session ${r.session_id}` : ''}\n` +
      SEGMENTS.map(([k, name]) => `${name} ${formatMs(Number(r[k] ?? 0))}`).join(' + ') +
      ` = ${formatMs(total)}`;
    g.appendChild(tip);
    const label = svg('text', { x: labelW - 4, y: y + barH - 2, 'text-anchor': 'end', fill: 'currentColor' });
    const who = r.session_id || r.instance_id;
    label.textContent = who.length > 11 ? `${who.slice(0, 10)}…` : who;
    g.appendChild(label);
    let x = labelW;
    SEGMENTS.forEach(([k, name], j) => {
      const ms = Math.max(0, Number(r[k] ?? 0));
      const w = (ms * plotW) / top;
      g.appendChild(
        svg('rect', { class: 'fai-seg', 'data-segment': name, 'data-ms': ms.toFixed(3), x: x.toFixed(2), y, width: w.toFixed(2), height: barH, fill: colour, 'fill-opacity': [1, 0.6, 0.3][j] })
      );
      x += w;
    });
    const value = svg('text', { x: (x + 3).toFixed(2), y: y + barH - 2, fill: 'currentColor' });
    value.textContent = formatMs(total);
    g.appendChild(value);
    chart.appendChild(g);
  });
  const legend = svg('text', { x: labelW, y: height - 4, fill: 'currentColor', class: 'fai-legend' });
  legend.textContent = 'spawn ▮ init ▮ first call (lighter) · ms';
  chart.appendChild(legend);
  return chart;
}
