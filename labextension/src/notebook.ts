/**
 * In the notebook: the toolbar's "Run as job" and "Schedule" buttons (a form,
 * then the same REST calls as `functionai run` / `functionai schedule`), and
 * "Promote cell to function" (the active cell deployed as `%%function` does).
 */

import { Dialog, Notification, ToolbarButton, showDialog } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { CATCH_UPS, FUNCTION_NAME, JobFormFields, OVERLAPS, SidebarModel, cellToFunction, describeError, jobBody } from './model';

function field(form: HTMLElement, label: string, input: HTMLElement, help?: string): void {
  const id = `fai-${label.toLowerCase().replace(/[^a-z]+/g, '-')}-${Math.random().toString(36).slice(2, 8)}`;
  input.id = id;
  const row = document.createElement('div');
  row.className = 'fai-form-row';
  const l = document.createElement('label');
  l.htmlFor = id;
  l.textContent = label;
  row.appendChild(l);
  row.appendChild(input);
  if (help) {
    const h = document.createElement('div');
    h.className = 'fai-form-help';
    h.textContent = help;
    row.appendChild(h);
  }
  form.appendChild(row);
}

function input(name: string, value = '', placeholder = ''): HTMLInputElement {
  const i = document.createElement('input');
  i.name = name;
  i.value = value;
  i.placeholder = placeholder;
  i.className = 'jp-mod-styled';
  return i;
}

function select(name: string, options: string[], value: string): HTMLSelectElement {
  const s = document.createElement('select');
  s.name = name;
  s.className = 'jp-mod-styled';
  for (const o of options) {
    const opt = document.createElement('option');
    opt.value = o;
    opt.textContent = o;
    opt.selected = o === value;
    s.appendChild(opt);
  }
  return s;
}

/** The form of "Run as job" and "Schedule": a dialog body whose value is what was typed. */
export class JobForm extends Widget implements Dialog.IBodyWidget<JobFormFields> {
  private readonly inputs: Record<string, HTMLInputElement | HTMLTextAreaElement | HTMLSelectElement> = {};

  constructor(notebook: string, kernel: string, schedule: boolean) {
    super();
    this.addClass('fai-job-form');
    const form = this.node;
    const nb = document.createElement('div');
    nb.className = 'fai-form-help';
    nb.textContent = `notebook: ${notebook}`;
    form.appendChild(nb);
    this.inputs['name'] = input('name', '', schedule ? 'e.g. daily-report' : 'optional');
    field(form, 'Name', this.inputs['name']);
    const params = document.createElement('textarea');
    params.name = 'parameters';
    params.rows = 3;
    params.placeholder = '{"x": 1}';
    params.className = 'jp-mod-styled';
    this.inputs['parameters'] = params;
    field(form, 'Parameters', params, 'JSON, injected as papermill parameters');
    this.inputs['kernel'] = input('kernel', kernel);
    field(form, 'Kernel', this.inputs['kernel']);
    if (schedule) {
      this.inputs['cron'] = input('cron', '0 6 * * *');
      field(form, 'Cron', this.inputs['cron'], 'minute hour day month weekday');
      this.inputs['timezone'] = input('timezone', Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC');
      field(form, 'Time zone', this.inputs['timezone'], 'an IANA name, e.g. Europe/Paris');
      this.inputs['overlap'] = select('overlap', OVERLAPS, 'skip');
      field(form, 'Overlap', this.inputs['overlap'], 'when the last run is still going');
      this.inputs['catch_up'] = select('catch_up', CATCH_UPS, 'none');
      field(form, 'Catch-up', this.inputs['catch_up'], 'fire times missed while the server was down');
    }
    this.inputs['tags'] = input('tags', '', 'comma,separated');
    field(form, 'Tags', this.inputs['tags']);
  }

  getValue(): JobFormFields {
    const v = (k: string): string => this.inputs[k]?.value ?? '';
    return {
      name: v('name'),
      parameters: v('parameters'),
      kernel: v('kernel'),
      tags: v('tags'),
      cron: this.inputs['cron'] ? v('cron') : undefined,
      timezone: this.inputs['timezone'] ? v('timezone') : undefined,
      overlap: this.inputs['overlap'] ? v('overlap') : undefined,
      catch_up: this.inputs['catch_up'] ? v('catch_up') : undefined
    };
  }
}

/** Ask for the job's fields, then start the run or create the schedule (the form again after an error). */
export async function runAsJob(model: SidebarModel, panel: NotebookPanel, schedule: boolean, onDone: (what: string) => void): Promise<void> {
  if (panel.context.model.dirty) {
    await panel.context.save(); // the job runs the notebook as saved
  }
  const path = panel.context.path;
  const kernel = panel.sessionContext.kernelPreference.name || panel.sessionContext.session?.kernel?.name || 'python3';
  for (;;) {
    const answer = await showDialog({
      title: schedule ? 'Schedule this notebook' : 'Run this notebook as a job',
      body: new JobForm(path, kernel, schedule),
      buttons: [Dialog.cancelButton(), Dialog.okButton({ label: schedule ? 'Create schedule' : 'Run' })],
      focusNodeSelector: 'input'
    });
    if (!answer.button.accept || !answer.value) {
      return;
    }
    const made = jobBody(path, answer.value, schedule);
    if ('error' in made) {
      await showDialog({ title: 'Check the form', body: made.error, buttons: [Dialog.okButton({ label: 'Back to the form' })] });
      continue;
    }
    try {
      if (schedule) {
        const sc = await model.createSchedule(made.body);
        Notification.success(`FunctionAI: schedule ${sc.name || sc.id} created; next ${sc.next_fire_times?.[0] ?? '—'}`, { autoClose: 5000 });
      } else {
        const run = await model.startRun(made.body);
        Notification.success(`FunctionAI: run ${run.id} of ${path} started`, { autoClose: 5000 });
      }
      onDone(schedule ? 'schedule' : 'run');
      return;
    } catch (err) {
      await showDialog({ title: schedule ? 'The schedule was not created' : 'The run did not start', body: describeError(err), buttons: [Dialog.okButton({ label: 'Back to the form' })] });
    }
  }
}

/** "Promote cell to function": the active cell's code, deployed under a name asked for. */
export async function promoteCell(model: SidebarModel, tracker: INotebookTracker, onDone: (name: string) => void): Promise<void> {
  const cell = tracker.activeCell;
  if (!cell || cell.model.type !== 'code') {
    Notification.warning('FunctionAI: select a code cell to promote');
    return;
  }
  const parsed = cellToFunction(cell.model.sharedModel.getSource());
  if ('error' in parsed) {
    Notification.error(`FunctionAI: cannot promote this cell: ${parsed.error}`);
    return;
  }
  const name = input('function', parsed.name ?? '', 'my-function');
  name.setAttribute('aria-label', 'Function name');
  const body = new Widget({ node: document.createElement('div') });
  field(body.node, 'Function name', name, 'letters, digits, - and _; a letter first');
  for (;;) {
    const answer = await showDialog({
      title: 'Promote cell to function',
      body,
      buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Deploy' })],
      focusNodeSelector: 'input'
    });
    if (!answer.button.accept) {
      return;
    }
    const chosen = name.value.trim();
    if (!FUNCTION_NAME.test(chosen)) {
      await showDialog({ title: 'Check the name', body: `${JSON.stringify(chosen)} is not a function name: letters, digits, - and _, a letter first, at most 63`, buttons: [Dialog.okButton({ label: 'Back' })] });
      continue;
    }
    try {
      const row = await model.deploy(chosen, parsed.code);
      Notification.success(`FunctionAI: deployed ${chosen} version ${row.version}`, { autoClose: 5000 });
      onDone(chosen);
      return;
    } catch (err) {
      await showDialog({ title: `The deploy of ${chosen} failed`, body: describeError(err), buttons: [Dialog.okButton({ label: 'Back' })] });
    }
  }
}

/** The two toolbar buttons, on every notebook. */
export function addToolbarButtons(tracker: INotebookTracker, run: (panel: NotebookPanel, schedule: boolean) => void): void {
  tracker.widgetAdded.connect((_, panel) => {
    const job = new ToolbarButton({
      className: 'fai-toolbar-run-as-job',
      label: 'Run as job',
      tooltip: 'FunctionAI: run this notebook as a job (papermill, in a sandbox)',
      onClick: () => run(panel, false)
    });
    const sched = new ToolbarButton({
      className: 'fai-toolbar-schedule',
      label: 'Schedule',
      tooltip: 'FunctionAI: run this notebook on a schedule',
      onClick: () => run(panel, true)
    });
    panel.toolbar.insertAfter('cellType', 'functionai-run-as-job', job) || panel.toolbar.addItem('functionai-run-as-job', job);
    panel.toolbar.insertAfter('functionai-run-as-job', 'functionai-schedule', sched) || panel.toolbar.addItem('functionai-schedule', sched);
  });
}
