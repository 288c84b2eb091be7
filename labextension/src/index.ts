/**
 * jupyter-functionai's JupyterLab extension: the FunctionAI sidebar (left
 * area), its palette commands, a Launcher tile and a status-bar item, all
 * reading the server extension's REST API (no kernel needed), kept live by its
 * server-sent events with polling as the fallback.
 */

import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Clipboard, Dialog, ICommandPalette, Notification, showDialog } from '@jupyterlab/apputils';
import { PageConfig, URLExt } from '@jupyterlab/coreutils';
import { ILauncher } from '@jupyterlab/launcher';
import { INotebookTracker } from '@jupyterlab/notebook';
import { ServerConnection } from '@jupyterlab/services';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { ApiError, Fetcher, Handshake, MCP_PROTOCOL_VERSION, SidebarModel, describeError, formatMs, handshakeNotice } from './model';
import { addToolbarButtons, promoteCell, runAsJob } from './notebook';
import { FunctionAISidebar } from './sidebar';

import iconSvg from '../style/icon.svg';
import { version as FRONTEND_VERSION } from '../package.json';

const PLUGIN_ID = 'jupyter-functionai:plugin';
/** Polling when the events stream is down (ms), and as a slow safety net while it is up. */
const POLL_FALLBACK_MS = 3000;
const POLL_SAFETY_MS = 30000;
/**
 * The most often a change event refetches: while the sidebar is shown, and
 * while it is hidden (only the status bar shows then). A busy server sends
 * a change event every tick; this bounds what the page asks of it.
 */
const REFRESH_SHOWN_MS = 250;
const REFRESH_HIDDEN_MS = 10000;

export const functionaiIcon = new LabIcon({ name: 'jupyter-functionai:icon', svgstr: iconSvg });

export namespace CommandIDs {
  export const open = 'functionai:open-sidebar';
  export const refresh = 'functionai:refresh';
  export const closeSession = 'functionai:close-session';
  export const copyEndpoint = 'functionai:copy-endpoint';
  export const promoteCell = 'functionai:promote-cell';
  export const runAsJob = 'functionai:run-as-job';
  export const schedule = 'functionai:schedule-notebook';
}

/** The REST API over Jupyter's own connection (its token, its XSRF cookie). */
export function serverFetcher(settings: ServerConnection.ISettings = ServerConnection.makeSettings()): Fetcher {
  const call = async (path: string, init: RequestInit): Promise<Response> => {
    const url = URLExt.join(settings.baseUrl, 'functionai/api', path);
    let resp: Response;
    try {
      resp = await ServerConnection.makeRequest(url, init, settings);
    } catch (err) {
      throw new Error(`no answer from ${settings.baseUrl} (${describeError(err)})`);
    }
    if (!resp.ok) {
      let kind = 'error';
      let message = resp.statusText || `HTTP ${resp.status}`;
      try {
        const body = await resp.json();
        kind = body?.error?.kind ?? kind;
        message = body?.error?.message ?? body?.message ?? message;
      } catch {
        // not JSON: keep the status text
      }
      throw new ApiError(resp.status, kind, message);
    }
    return resp;
  };
  return {
    async get<T>(path: string): Promise<T> {
      return (await (await call(path, { method: 'GET' })).json()) as T;
    },
    async post<T>(path: string, body: unknown): Promise<T> {
      const resp = await call(path, { method: 'POST', body: JSON.stringify(body), headers: { 'Content-Type': 'application/json' } });
      return (resp.status === 204 ? null : await resp.json()) as T;
    },
    async del(path: string): Promise<void> {
      await call(path, { method: 'DELETE' });
    },
    async mcp(server, message, sessionId, end) {
      const url = URLExt.join(settings.baseUrl, 'functionai/mcp', encodeURIComponent(server), 'mcp');
      const headers: Record<string, string> = { Accept: 'application/json, text/event-stream', 'Content-Type': 'application/json', 'MCP-Protocol-Version': MCP_PROTOCOL_VERSION };
      if (sessionId) {
        headers['Mcp-Session-Id'] = sessionId;
      }
      const init: RequestInit = end ? { method: 'DELETE', headers } : { method: 'POST', headers, body: JSON.stringify(message) };
      const resp = await ServerConnection.makeRequest(url, init, settings);
      const text = await resp.text();
      let body: unknown = null;
      if (text) {
        // a JSON answer, or server-sent events whose data lines carry it
        const data = resp.headers.get('Content-Type')?.startsWith('text/event-stream')
          ? text.split('\n').filter(l => l.startsWith('data:')).map(l => l.slice(5).trim()).pop() ?? 'null'
          : text;
        body = JSON.parse(data);
      }
      if (!resp.ok && !(body as { error?: unknown } | null)?.error) {
        throw new ApiError(resp.status, 'error', resp.statusText || `HTTP ${resp.status}`);
      }
      return { body, sessionId: resp.headers.get('Mcp-Session-Id') ?? sessionId };
    }
  };
}

/**
 * Keep the model live: refetch on each `changed` event of the server's
 * stream; poll every few seconds while the stream is down (and now and then
 * while it is up, in case a change slipped by).
 */
export class LiveUpdates {
  private source: EventSource | null = null;
  private timer: number | null = null;
  private connected = false;
  private disposed = false;

  constructor(
    private readonly model: SidebarModel,
    private readonly settings: ServerConnection.ISettings,
    private readonly shown: () => boolean
  ) {}

  private changed(): void {
    this.model.requestRefresh(this.shown() ? REFRESH_SHOWN_MS : REFRESH_HIDDEN_MS);
  }

  start(): void {
    this.open();
    this.schedule();
  }

  get streaming(): boolean {
    return this.connected;
  }

  dispose(): void {
    this.disposed = true;
    this.source?.close();
    if (this.timer !== null) {
      window.clearTimeout(this.timer);
    }
  }

  private open(): void {
    let url = URLExt.join(this.settings.baseUrl, 'functionai/api/events');
    const token = this.settings.token || PageConfig.getToken();
    if (token) {
      url += `?token=${encodeURIComponent(token)}`;
    }
    const source = new EventSource(url, { withCredentials: true });
    this.source = source;
    source.addEventListener('hello', () => {
      const was = this.connected;
      this.connected = true;
      if (!was) {
        this.changed(); // what changed while the stream was down
      }
    });
    source.addEventListener('changed', () => this.changed());
    source.onerror = () => {
      // EventSource retries by itself (the server's `retry`); poll meanwhile.
      // Only the drop itself reschedules: each failed retry fires this again,
      // every `retry` ms, and rearming the poll each time (its period is
      // longer) would put it off for as long as the server stays down.
      if (!this.connected) {
        return;
      }
      this.connected = false;
      void this.model.refresh(); // the stream dropped: is the server still there?
      this.schedule();
    };
  }

  private schedule(): void {
    if (this.disposed) {
      return;
    }
    if (this.timer !== null) {
      window.clearTimeout(this.timer);
    }
    this.timer = window.setTimeout(
      () => {
        this.timer = null;
        void this.model.refresh().finally(() => this.schedule());
      },
      this.connected ? POLL_SAFETY_MS : this.shown() ? POLL_FALLBACK_MS : REFRESH_HIDDEN_MS
    );
  }
}

/** The status-bar item: live sessions and the last cold start. */
class StatusItem extends Widget {
  constructor(model: SidebarModel, onClick: () => void) {
    super();
    this.addClass('fai-statusbar');
    this.node.title = 'FunctionAI: open the sidebar';
    this.node.setAttribute('role', 'button');
    this.node.setAttribute('aria-label', 'FunctionAI sessions and last cold start');
    this.node.addEventListener('click', onClick);
    const draw = (): void => {
      if (model.error !== null) {
        this.node.textContent = 'FunctionAI: unreachable';
        return;
      }
      const live = model.sessions.filter(s => s.status === 'live').length;
      const last = model.lastColdStart;
      this.node.textContent =
        `FunctionAI: ${live} live session${live === 1 ? '' : 's'}` + (last ? ` · last cold start ${formatMs(last.spawn_ms + last.init_ms + (last.first_call_ms ?? 0))} (${last.path})` : '');
    };
    model.subscribe(draw);
    draw();
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'The FunctionAI sidebar: functions, sessions and cold starts of the FunctionAI runtime',
  autoStart: true,
  optional: [ICommandPalette, ILauncher, IStatusBar, ILayoutRestorer, INotebookTracker],
  activate: (
    app: JupyterFrontEnd,
    palette: ICommandPalette | null,
    launcher: ILauncher | null,
    statusBar: IStatusBar | null,
    restorer: ILayoutRestorer | null,
    notebooks: INotebookTracker | null
  ): void => {
    const settings = ServerConnection.makeSettings();
    const model = new SidebarModel(serverFetcher(settings));
    const sidebar = new FunctionAISidebar(model, {
      confirmClose: async s => {
        const answer = await showDialog({
          title: 'Close session',
          body: `Close session ${s.id} of ${s.function}? Its instance stops and its state is kept.`,
          buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Close session' })]
        });
        return answer.button.accept;
      },
      copy: (text, what) => {
        Clipboard.copyToSystem(text);
        Notification.info(`Copied the ${what}`, { autoClose: 2000 });
      },
      version: FRONTEND_VERSION,
      endpoint: name => URLExt.join(window.location.origin, settings.baseUrl, 'functionai/invoke', encodeURIComponent(name)),
      openOutput: (path, format) => {
        if (format === 'ipynb') {
          void app.commands.execute('docmanager:open', { path });
        } else {
          window.open(URLExt.join(settings.baseUrl, 'files', URLExt.encodeParts(path)), '_blank', 'noopener');
        }
      }
    });
    sidebar.title.icon = functionaiIcon;
    app.shell.add(sidebar, 'left', { rank: 900 });
    if (restorer) {
      restorer.add(sidebar, 'functionai-sidebar');
    }

    // the handshake: say so when this page and the server extension differ
    serverFetcher(settings)
      .get<Handshake>('version')
      .then(
        hs => handshakeNotice(FRONTEND_VERSION, hs),
        err => handshakeNotice(FRONTEND_VERSION, null, describeError(err))
      )
      .then(notice => {
        sidebar.setHandshake(notice);
        if (notice) {
          Notification.warning(notice, { autoClose: false });
        }
      });

    const live = new LiveUpdates(model, settings, () => sidebar.isVisible);
    // after the layout is restored: the page's own requests (kernelspecs,
    // sessions, the open notebooks' kernels) go first, and the event stream
    // does not take one of the browser's few connections to this host meanwhile
    void app.restored.then(() => {
      live.start();
      void model.refresh();
    });

    app.commands.addCommand(CommandIDs.open, {
      label: 'FunctionAI',
      caption: 'Open the FunctionAI sidebar: functions, sessions, cold starts',
      icon: args => (args['isLauncher'] ? functionaiIcon : undefined),
      execute: () => {
        app.shell.activateById(sidebar.id);
      }
    });
    app.commands.addCommand(CommandIDs.refresh, {
      label: 'FunctionAI: Refresh',
      execute: () => model.refresh()
    });
    app.commands.addCommand(CommandIDs.closeSession, {
      label: args => (args['session'] ? `FunctionAI: Close Session ${args['session']}` : 'FunctionAI: Close a Session…'),
      execute: async args => {
        let id = args['session'] as string | undefined;
        if (!id) {
          const open = model.sessions.map(s => s.id);
          if (!open.length) {
            Notification.info('FunctionAI: no open sessions');
            return;
          }
          const pick = await showDialog({
            title: 'Close a FunctionAI session',
            body: new SessionPicker(open),
            buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Close session' })]
          });
          if (!pick.button.accept || !pick.value) {
            return;
          }
          id = pick.value;
        }
        try {
          await model.closeSession(id);
          Notification.success(`FunctionAI: closed session ${id}`, { autoClose: 3000 });
        } catch (err) {
          Notification.error(`FunctionAI: closing session ${id} failed: ${describeError(err)}`);
        }
      }
    });
    app.commands.addCommand(CommandIDs.copyEndpoint, {
      label: args => (args['function'] ? `FunctionAI: Copy Endpoint of ${args['function']}` : 'FunctionAI: Copy a Function Endpoint'),
      execute: args => {
        const name = (args['function'] as string | undefined) ?? model.functions[0]?.name;
        if (!name) {
          Notification.info('FunctionAI: no functions deployed');
          return;
        }
        Clipboard.copyToSystem(URLExt.join(window.location.origin, settings.baseUrl, 'functionai/invoke', encodeURIComponent(name)));
        Notification.info(`Copied the endpoint of ${name}`, { autoClose: 2000 });
      }
    });
    const show = (): void => app.shell.activateById(sidebar.id);
    let paletteCommands = [CommandIDs.open, CommandIDs.refresh, CommandIDs.closeSession, CommandIDs.copyEndpoint];
    if (notebooks) {
      const tracker = notebooks;
      const hasNotebook = (): boolean => tracker.currentWidget !== null;
      app.commands.addCommand(CommandIDs.promoteCell, {
        label: 'Promote Cell to Function',
        caption: 'FunctionAI: deploy the active cell as a sandbox function, as %%function does',
        isEnabled: () => tracker.activeCell?.model.type === 'code',
        execute: () => promoteCell(model, tracker, show)
      });
      app.commands.addCommand(CommandIDs.runAsJob, {
        label: 'FunctionAI: Run Notebook as Job…',
        isEnabled: hasNotebook,
        execute: () => (tracker.currentWidget ? runAsJob(model, tracker.currentWidget, false, show) : undefined)
      });
      app.commands.addCommand(CommandIDs.schedule, {
        label: 'FunctionAI: Schedule Notebook…',
        isEnabled: hasNotebook,
        execute: () => (tracker.currentWidget ? runAsJob(model, tracker.currentWidget, true, show) : undefined)
      });
      app.contextMenu.addItem({ command: CommandIDs.promoteCell, selector: '.jp-Notebook .jp-CodeCell', rank: 20 });
      addToolbarButtons(tracker, (panel, schedule) => void runAsJob(model, panel, schedule, show));
      paletteCommands = [...paletteCommands, CommandIDs.promoteCell, CommandIDs.runAsJob, CommandIDs.schedule];
    }
    if (palette) {
      for (const command of paletteCommands) {
        palette.addItem({ command, category: 'FunctionAI' });
      }
    }
    if (launcher) {
      launcher.add({ command: CommandIDs.open, category: 'Other', rank: 1 });
    }
    if (statusBar) {
      statusBar.registerStatusItem('jupyter-functionai:status', {
        item: new StatusItem(model, () => app.shell.activateById(sidebar.id)),
        align: 'left',
        rank: 50
      });
    }
  }
};

/** A dialog body: a list of the open sessions to pick one. */
class SessionPicker extends Widget implements Dialog.IBodyWidget<string> {
  private readonly select: HTMLSelectElement;

  constructor(ids: string[]) {
    super();
    this.select = document.createElement('select');
    this.select.setAttribute('aria-label', 'Session');
    for (const id of ids) {
      const opt = document.createElement('option');
      opt.value = id;
      opt.textContent = id;
      this.select.appendChild(opt);
    }
    this.node.appendChild(this.select);
  }

  getValue(): string {
    return this.select.value;
  }
}

export default plugin;
