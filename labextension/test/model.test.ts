/**
 * The sidebar's data layer under jest. The Fetcher here answers from a
 * table of paths (this is the unit below the HTTP layer; the browser tests
 * drive the real server).
 */

import { describe, expect, it, jest } from '@jest/globals';

import {
  ApiError,
  ColdStartRow,
  argumentsSkeleton,
  callTool,
  hostServerBody,
  toolOutcomeText,
  FUNCTION_NAME,
  Fetcher,
  SessionRow,
  SidebarModel,
  cellToFunction,
  coldstartsByPath,
  formatBytes,
  formatDuration,
  formatMs,
  handshakeNotice,
  isolationSummary,
  jobBody,
  openSessions,
  paramsSummary,
  percentile,
  gpuLine,
  scalingLine,
  UsageRow,
  usageByFunction,
  usagePath,
  usageSteps,
  summariseFunctions,
  visibleRange
} from '../src/model';

function session(id: string, over: Partial<SessionRow> = {}): SessionRow {
  return { id, function: 'echo', version: 1, status: 'live', created_at: 100, calls: 0, instance: { id: `i-${id}`, pid: 10 }, ...over };
}

function start(path: string, spawn: number, over: Partial<ColdStartRow> = {}): ColdStartRow {
  return { instance_id: 'i', function: 'echo', version: 1, path, spawn_ms: spawn, init_ms: 1, first_call_ms: 2, at: 1, ...over };
}

class TableFetcher implements Fetcher {
  calls: string[] = [];
  deleted: string[] = [];
  posted: Array<[string, unknown]> = [];
  fail: Error | null = null;
  gate: Promise<void> | null = null;

  constructor(public table: Record<string, unknown>) {}

  async get<T>(path: string): Promise<T> {
    this.calls.push(path);
    if (this.gate) {
      await this.gate;
    }
    if (this.fail) {
      throw this.fail;
    }
    const key = path.replace(/since=\d+/, 'since=*'); // (a time: any)
    if (!(key in this.table)) {
      throw new ApiError(404, 'not_found', `no ${path}`);
    }
    return this.table[key] as T;
  }

  async post<T>(path: string, body: unknown): Promise<T> {
    this.posted.push([path, body]);
    return null as T;
  }

  async del(path: string): Promise<void> {
    this.deleted.push(path);
  }

  mcpLog: Array<[string, string | null, boolean]> = [];
  mcpAnswers: Record<string, unknown> = {};

  async mcp(server: string, message: Record<string, unknown> | null, sessionId: string | null, end?: boolean): Promise<{ body: unknown; sessionId: string | null }> {
    const method = end ? 'DELETE' : String(message?.['method']);
    this.mcpLog.push([method, sessionId, !!end]);
    if (method === 'initialize') {
      return { body: { jsonrpc: '2.0', id: 1, result: { protocolVersion: '2025-06-18' } }, sessionId: `mcp-${server}` };
    }
    return { body: this.mcpAnswers[method] ?? null, sessionId };
  }
}

function table(sessions: SessionRow[] = [], paused: SessionRow[] = []): Record<string, unknown> {
  return {
    functions: [{ name: 'echo', active_version: 2, latest_version: 3, created_at: 1, updated_at: 2 }],
    'sessions?status=live': sessions,
    'sessions?status=paused': paused,
    'coldstarts?limit=200': [start('template-fork', 10), start('warm-pool', 1), start('template-fork', 30)],
    'runs?limit=50': [],
    schedules: [],
    'tasks?limit=50': [],
    'mcp/servers': [],
    'mcp/sessions?status=active': [],
    gpus: { available: false, reason: 'no GPU found (no NVIDIA driver could be used)', devices: [], slices: [] },
    'usage?by=function&step=300&since=*': [],
    'scaling?limit=50': { functions: {}, events: [] },
    latency: [
      { function: 'echo', calls: 3, errors: 0, p50_ms: 5, p95_ms: 9 },
      { function: 'other', calls: 1, errors: 0, p50_ms: 100, p95_ms: 100 }
    ]
  };
}

describe('formatting', () => {
  it('takes percentiles by rank', () => {
    expect(percentile([3, 1, 2], 50)).toBe(2);
    expect(percentile([1, 2, 3, 4], 50)).toBe(2);
    expect(percentile([1, 2, 3, 4], 100)).toBe(4);
    expect(percentile([], 50)).toBeNaN();
  });

  it('formats times, durations and sizes', () => {
    expect(formatMs(2.345)).toBe('2.3 ms');
    expect(formatMs(123.4)).toBe('123 ms');
    expect(formatMs(12345)).toBe('12.3 s');
    expect(formatMs(null)).toBe('—');
    expect(formatDuration(59)).toBe('59s');
    expect(formatDuration(61)).toBe('1m 1s');
    expect(formatDuration(3 * 3600 + 120)).toBe('3h 2m');
    expect(formatDuration(-1)).toBe('—');
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(300 * 1024 * 1024)).toBe('300 MiB');
    expect(formatBytes(undefined)).toBe('—');
  });

  it('sums up the isolation an instance achieved, and what is missing', () => {
    const text = isolationSummary({ namespaces: { pid: true, net: true, ipc: false }, user_namespace: true, cgroup: 'v2', seccomp: 'default', missing: { cgroup: 'not delegated' } });
    expect(text).toContain('ns pid+net');
    expect(text).not.toContain('ipc');
    expect(text).toContain('userns');
    expect(text).toContain('seccomp default');
    expect(text).toContain('missing cgroup');
    expect(isolationSummary(null)).toBe('—');
    expect(isolationSummary({ gpu: 'GPU-0 4096 MiB (watchdog)' })).toBe('gpu GPU-0 4096 MiB (watchdog)');
  });
});

describe('derived views', () => {
  it('gives p50 per cold-start path, the commonest first', () => {
    const paths = coldstartsByPath([start('template-fork', 10), start('warm-pool', 1), start('template-fork', 30)]);
    expect(paths.map(p => p.path)).toEqual(['template-fork', 'warm-pool']);
    expect(paths[0]).toEqual({ path: 'template-fork', count: 2, p50_ms: 13 });
    expect(paths[1].p50_ms).toBe(4);
  });

  it('counts a start without a first call as spawn + init', () => {
    expect(coldstartsByPath([start('fresh', 10, { first_call_ms: null })])[0].p50_ms).toBe(11);
  });

  it('summarises each function from sessions and invocations', () => {
    const snap = {
      usage: [],
      gpus: table()['gpus'] as never,
      functions: table()['functions'] as never,
      sessions: [session('a', { calls: 2 }), session('b', { calls: 1, instance: { id: 'i-a', pid: 10 } }), session('c', { status: 'closed', calls: 7 })],
      coldstarts: [],
      latency: table()['latency'] as never,
      runs: [],
      schedules: [],
      tasks: [],
      mcpServers: [],
      mcpSessions: [],
      scaling: { functions: {}, events: [] }
    };
    const [echo] = summariseFunctions(snap);
    expect(echo).toEqual({ name: 'echo', version: 2, latest: 3, instances: 1, sessions: 2, calls: 3, p50_ms: 5, scaling: null });
  });

  it('says how a function scales, its load now and its last scale event', () => {
    const now = { min_instances: 1, max_instances: 8, target: 3, ready: 2, in_flight: 1, queued: 0 };
    const events = [
      { function: 'echo', at: 10, from: 1, to: 3, in_flight: 3, queued: 2, reason: 'up' },
      { function: 'echo', at: 20, from: 3, to: 1, in_flight: 0, queued: 0, reason: 'down' }
    ];
    const line = scalingLine(now, events) ?? '';
    expect(line.startsWith('scales 1–8 · target 3, 2 ready · 1 in flight, 0 queued · last: down 3 → 1 at ')).toBe(true);
    expect(scalingLine({ ...now, max_instances: 0, target: 2, ready: 2 }, [])).toBe('warm pool 1 · target 2, 2 ready');
    expect(scalingLine(undefined, events)).toBeNull();
  });

  it('lists open sessions newest first', () => {
    const rows = openSessions([session('old', { created_at: 1 }), session('gone', { status: 'closed', created_at: 9 }), session('new', { created_at: 5, status: 'paused' })]);
    expect(rows.map(r => r.id)).toEqual(['new', 'old']);
  });

  it('draws only the rows in view of a virtualised list', () => {
    expect(visibleRange(1000, 0, 400, 40, 0)).toEqual({ start: 0, end: 11 });
    expect(visibleRange(1000, 4000, 400, 40, 5)).toEqual({ start: 95, end: 116 });
    expect(visibleRange(1000, 1e9, 400, 40, 5)).toEqual({ start: 1000, end: 1000 });
    expect(visibleRange(3, 0, 400, 40)).toEqual({ start: 0, end: 3 });
    expect(visibleRange(0, 0, 400, 40)).toEqual({ start: 0, end: 0 });
  });
});

describe('usage', () => {
  const row = (fn: string, start: number, cpu: number, over: Partial<UsageRow> = {}): UsageRow => ({
    function: fn,
    session: null,
    start,
    end: start + 300,
    cpu_s: cpu,
    mem_gib_s: 1,
    gpu_s: 0,
    gpu_mem_gib_s: 0,
    active_s: 10,
    idle_s: 50,
    ...over
  });

  it('asks for the last hour per function in 5-minute steps', () => {
    expect(usagePath(7_200_000)).toBe('usage?by=function&step=300&since=3600');
  });

  it('totals per function, the most CPU first, with the cost when priced', () => {
    const totals = usageByFunction([row('a', 0, 1), row('b', 0, 5, { cost: 0.5, currency: 'EUR' }), row('a', 300, 2), row('b', 300, 1, { cost: 0.25, currency: 'EUR' })]);
    expect(totals.map(t => [t.function, t.cpu_s, t.idle_s, t.cost])).toEqual([
      ['b', 6, 100, 0.75],
      ['a', 3, 100, null]
    ]);
    expect(totals[0].currency).toBe('EUR');
  });

  it('sums CPU per step across functions, oldest first', () => {
    expect(usageSteps([row('a', 300, 1), row('b', 0, 2), row('b', 300, 3)])).toEqual([
      { start: 0, cpu_s: 2 },
      { start: 300, cpu_s: 4 }
    ]);
  });
});

describe('GPUs', () => {
  const slice = (id: string, mib: number, whole = false) => ({ instance_id: id, function: 'f', devices: ['GPU-0'], memory_mib: mib, whole, mig: false });
  const dev = { index: 0, uuid: 'GPU-0', name: 'H100', memory_total_mib: 81920, memory_used_mib: 10240, free_mib: 51200, mig_enabled: false, mig: [], slices: [slice('a', 20480), slice('b', 10240)] };

  it('sums what the slices hold on a card and says what is free', () => {
    expect(gpuLine(dev)).toBe('GPU 0 · H100 · 10 GiB of 80 GiB in use · 30 GiB held by slices · 50 GiB free');
  });

  it('names how the slices of a card are held to', () => {
    expect(gpuLine({ ...dev, enforcement: 'mps' })).toBe('GPU 0 · H100 · 10 GiB of 80 GiB in use · 30 GiB held by slices · 50 GiB free · slices held by mps');
  });

  it('counts MIG instances instead of free memory', () => {
    const mig = { ...dev, mig_enabled: true, free_mib: null, mig: [{ index: 0, uuid: 'MIG-0', memory_mib: 10240 }], slices: [] };
    expect(gpuLine(mig)).toBe('GPU 0 · H100 · 10 GiB of 80 GiB in use · MIG: 1 instances');
  });

  it('is fetched with the rest, and says why there is none', async () => {
    const model = new SidebarModel(new TableFetcher(table()));
    await model.refresh();
    expect(model.snapshot.gpus.available).toBe(false);
    expect(model.snapshot.gpus.reason).toContain('no GPU found');
  });
});

describe('the handshake', () => {
  it('is silent when the versions agree', () => {
    expect(handshakeNotice('1.2.0', { version: '1.2.0', api: 1 })).toBeNull();
  });

  it('names both versions when they differ', () => {
    const notice = handshakeNotice('1.2.0', { version: '1.1.0', api: 1 });
    expect(notice).toContain('1.2.0');
    expect(notice).toContain('1.1.0');
    expect(notice).toContain('Reload');
  });

  it('says the server extension is missing when nothing answers', () => {
    expect(handshakeNotice('1.2.0', null, '404 not_found: nope')).toContain('404 not_found: nope');
  });
});

describe('SidebarModel', () => {
  it('fetches everything and tells its listeners', async () => {
    const f = new TableFetcher(table([session('a')], [session('p', { status: 'paused' })]));
    const model = new SidebarModel(f);
    let told = 0;
    model.subscribe(() => (told += 1));
    await model.refresh();
    expect(told).toBe(1);
    expect(model.error).toBeNull();
    expect(model.sessions.map(s => s.id).sort()).toEqual(['a', 'p']);
    expect(model.functions[0].p50_ms).toBe(5);
    expect(model.lastColdStart?.path).toBe('template-fork');
  });

  it('keeps the last good data and says why a refresh failed', async () => {
    const f = new TableFetcher(table([session('a')]));
    const model = new SidebarModel(f);
    await model.refresh();
    const good = model.updatedAt;
    f.fail = new ApiError(503, 'unavailable', 'the server is stopping');
    await model.refresh();
    expect(model.error).toBe('503 unavailable: the server is stopping');
    expect(model.sessions.map(s => s.id)).toEqual(['a']);
    expect(model.updatedAt).toBe(good);
    f.fail = null;
    await model.refresh();
    expect(model.error).toBeNull();
  });

  it('folds refreshes asked for meanwhile into one more fetch', async () => {
    const f = new TableFetcher(table());
    const model = new SidebarModel(f);
    let open: () => void = () => undefined;
    f.gate = new Promise(resolve => (open = resolve));
    const first = model.refresh();
    const burst = [model.refresh(), model.refresh(), model.refresh()];
    f.gate = null;
    open();
    await Promise.all([first, ...burst]);
    expect(model.refreshes).toBe(2); // the first, then one for the whole burst
    expect(f.calls.filter(c => c === 'functions')).toHaveLength(2);
  });

  it('closes a session by id (escaped) and refetches', async () => {
    const f = new TableFetcher(table([session('a/b')]));
    const model = new SidebarModel(f);
    await model.closeSession('a/b');
    expect(f.deleted).toEqual(['sessions/a%2Fb']);
    expect(model.refreshes).toBe(1);
  });

  it('rolls back with the version asked for', async () => {
    const f = new TableFetcher(table());
    const model = new SidebarModel(f);
    await model.rollback('echo', 1);
    expect(f.posted).toEqual([['functions/echo/rollback', { version: 1 }]]);
  });
});

describe('the job form', () => {
  const blank = { name: '', parameters: '', kernel: 'python3', tags: '' };

  it('makes a run body from what was typed', () => {
    const made = jobBody('nbs/a.ipynb', { ...blank, name: ' daily ', parameters: '{"x": 7}', tags: 'a, b,,' }, false);
    expect(made).toEqual({ body: { notebook: 'nbs/a.ipynb', name: 'daily', parameters: { x: 7 }, kernel: 'python3', tags: ['a', 'b'] } });
  });

  it('refuses parameters that are not a JSON object, saying why', () => {
    const bad = jobBody('a.ipynb', { ...blank, parameters: '{x: 1}' }, false);
    expect('error' in bad && bad.error).toContain('parameters must be a JSON object');
    const list = jobBody('a.ipynb', { ...blank, parameters: '[1]' }, false);
    expect('error' in list && list.error).toContain('JSON object');
  });

  it('needs five cron fields for a schedule, and defaults the time zone', () => {
    const bad = jobBody('a.ipynb', { ...blank, cron: '0 6 * *' }, true);
    expect('error' in bad && bad.error).toContain('five fields');
    const ok = jobBody('a.ipynb', { ...blank, cron: ' 0 6 * * 1-5 ', timezone: '', overlap: 'queue', catch_up: 'latest' }, true);
    expect(ok).toEqual({ body: { notebook: 'a.ipynb', kernel: 'python3', cron: '0 6 * * 1-5', timezone: 'UTC', overlap: 'queue', catch_up: 'latest' } });
    const overlap = jobBody('a.ipynb', { ...blank, cron: '* * * * *', overlap: 'sometimes' }, true);
    expect('error' in overlap && overlap.error).toContain('overlap must be one of skip, queue, allow');
  });
});

describe('promoting a cell', () => {
  it('takes the name from a %%function line and deploys the rest', () => {
    expect(cellToFunction('%%function adder --memory 256\ndef handler(event, ctx):\n    return 1\n')).toEqual({ name: 'adder', code: 'def handler(event, ctx):\n    return 1\n' });
  });

  it('deploys a plain cell that defines the handler, asking for a name', () => {
    expect(cellToFunction('import os\nasync def handler(e, c):\n    return 2')).toEqual({ name: null, code: 'import os\nasync def handler(e, c):\n    return 2' });
    expect(cellToFunction('handler = lambda e, c: 3')).toEqual({ name: null, code: 'handler = lambda e, c: 3' });
  });

  it('refuses a cell without a handler, an empty one and other cell magics', () => {
    const none = cellToFunction('def other(e, c):\n    return 1');
    expect('error' in none && none.error).toContain('defines no handler');
    const nested = cellToFunction('def f():\n    def handler(e, c):\n        pass');
    expect('error' in nested && nested.error).toContain('defines no handler');
    const empty = cellToFunction('%%function x\n');
    expect('error' in empty && empty.error).toBe('the cell is empty');
    const bash = cellToFunction('%%bash\necho hi');
    expect('error' in bash && bash.error).toContain('%%bash');
  });

  it('knows a function name', () => {
    expect(FUNCTION_NAME.test('my-fn_2')).toBe(true);
    expect(FUNCTION_NAME.test('2fn')).toBe(false);
    expect(FUNCTION_NAME.test('a'.repeat(63))).toBe(true);
    expect(FUNCTION_NAME.test('a'.repeat(64))).toBe(false);
  });
});

describe('tool parameters', () => {
  it('lists each parameter with its type, optional ones marked', () => {
    expect(paramsSummary({ properties: { city: { type: 'string' }, days: { type: ['integer', 'null'] } }, required: ['city'] })).toBe('city: string, days?: integer|null');
    expect(paramsSummary({})).toBe('no parameters');
    expect(paramsSummary(null)).toBe('no parameters');
  });
});

describe('refreshes pushed by events', () => {
  it('fetch at most once per interval, a burst folded into one at its end', async () => {
    jest.useFakeTimers();
    try {
      const f = new TableFetcher(table());
      const model = new SidebarModel(f);
      const fetches = (): number => f.calls.filter(c => c === 'functions').length;
      model.requestRefresh(1000); // the first: now
      await jest.advanceTimersByTimeAsync(0);
      expect(fetches()).toBe(1);
      for (let i = 0; i < 50; i++) {
        model.requestRefresh(1000); // a burst of change events
        await jest.advanceTimersByTimeAsync(10);
      }
      expect(fetches()).toBe(1); // none yet: the interval has not passed
      await jest.advanceTimersByTimeAsync(1000);
      expect(fetches()).toBe(2); // the whole burst: one fetch
      await jest.advanceTimersByTimeAsync(5000);
      expect(fetches()).toBe(2); // and nothing more without a new event
      // asked with a long interval (hidden), then a short one (shown): the short one wins
      model.requestRefresh(60_000);
      model.requestRefresh(1000);
      await jest.advanceTimersByTimeAsync(0);
      expect(fetches()).toBe(3);
      // a refresh made meanwhile (the sidebar shown) takes the place of a pending one
      await jest.advanceTimersByTimeAsync(100);
      model.requestRefresh(60_000);
      await model.refresh();
      expect(fetches()).toBe(4);
      await jest.advanceTimersByTimeAsync(120_000);
      expect(fetches()).toBe(4);
    } finally {
      jest.useRealTimers();
    }
  });

  it('ask a slow server at most half of the time', async () => {
    jest.useFakeTimers();
    try {
      const f = new TableFetcher(table());
      let release: () => void = () => undefined;
      f.gate = new Promise<void>(r => (release = r));
      const model = new SidebarModel(f);
      const fetches = (): number => f.calls.filter(c => c === 'functions').length;
      const first = model.refresh();
      await jest.advanceTimersByTimeAsync(400); // the server takes 400 ms to answer
      release();
      f.gate = null;
      await first;
      expect(model.lastDuration).toBe(400);
      model.requestRefresh(250); // due 800 ms after the last start, not 250
      await jest.advanceTimersByTimeAsync(300);
      expect(fetches()).toBe(1);
      await jest.advanceTimersByTimeAsync(500);
      expect(fetches()).toBe(2);
    } finally {
      jest.useRealTimers();
    }
  });
});

describe('trying a tool', () => {
  it('speaks MCP in a session of its own, ended after', async () => {
    const f = new TableFetcher({});
    f.mcpAnswers['tools/call'] = { jsonrpc: '2.0', id: 2, result: { content: [{ type: 'text', text: '5' }] } };
    const out = await callTool(f, 'kit', 'add', { a: 2, b: 3 }, '0.1.0');
    expect(toolOutcomeText(out)).toBe('5');
    expect(f.mcpLog).toEqual([
      ['initialize', null, false],
      ['notifications/initialized', 'mcp-kit', false],
      ['tools/call', 'mcp-kit', false],
      ['DELETE', 'mcp-kit', true]
    ]);
  });

  it('shows a JSON-RPC error and a tool error for what they are', async () => {
    const f = new TableFetcher({});
    f.mcpAnswers['tools/call'] = { jsonrpc: '2.0', id: 2, error: { code: -32602, message: 'b: required' } };
    expect(toolOutcomeText(await callTool(f, 'kit', 'add', {}, '0'))).toBe('error -32602: b: required');
    f.mcpAnswers['tools/call'] = { jsonrpc: '2.0', id: 2, result: { isError: true, content: [{ type: 'text', text: 'boom' }] } };
    expect(toolOutcomeText(await callTool(f, 'kit', 'add', {}, '0'))).toBe('tool error: boom');
    expect(toolOutcomeText({ result: { structuredContent: { x: 1 } }, ms: 1 })).toBe('{"x":1}');
  });

  it('starts the arguments from the schema', () => {
    expect(argumentsSkeleton({ properties: { a: { type: 'integer' }, s: { type: ['string', 'null'] }, d: { type: 'number', default: 2.5 }, x: {} } })).toEqual({ a: 0, s: '', d: 2.5, x: null });
  });
});

describe('hosting a server', () => {
  it('takes a catalog name or a command', () => {
    expect(hostServerBody(' t1 ', 'time', 'none')).toEqual({ body: { name: 't1', network: 'none', catalog: 'time' } });
    expect(hostServerBody('srv', 'python -m my_server --flag', 'loopback')).toEqual({ body: { name: 'srv', network: 'loopback', command: ['python', '-m', 'my_server', '--flag'] } });
  });

  it('refuses a bad name or nothing to run', () => {
    const bad = hostServerBody('1x', 'time', 'none');
    expect('error' in bad && bad.error).toContain('not a server name');
    const none = hostServerBody('ok', '  ', 'none');
    expect('error' in none && none.error).toContain('catalog name');
  });
});
