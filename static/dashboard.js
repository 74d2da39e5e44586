// jobcast demo page, project dashboard (static/index.html with ?group=):
// every job of one group on one connection (shared by this browser's tabs),
// each with its bar and a stalled badge, and the finished ones in a list.
// Reads ?group=&token=[&transports=ws,poll] from the URL. The element ids
// and data- attributes are used by tests.
import { watchGroup, progressColor } from './jobcast.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const group = (params.get('group') || '').trim();
const token = (params.get('token') || '').trim();

const STATE_TEXT = {
  connecting: 'Connecting…',
  live: 'Live',
  reconnecting: 'Reconnecting…',
  failed: 'Disconnected',
  closed: 'Disconnected',
  done: 'Finished',
};

function pctOf(doc) {
  for (const k of ['overall_progress', 'progress', 'percent']) {
    const v = Number(doc && doc[k]);
    if (doc && doc[k] !== undefined && doc[k] !== null && Number.isFinite(v)) return Math.max(0, Math.min(100, v));
  }
  return null;
}

/** The running row of a job (created on first sight). */
function row(jobId) {
  let li = document.querySelector(`#jobs li[data-job="${CSS.escape(jobId)}"]`);
  if (li) return li;
  li = document.createElement('li');
  li.className = 'job';
  li.dataset.job = jobId;
  li.dataset.seq = '';
  li.dataset.stalled = 'false';
  const head = document.createElement('div');
  head.className = 'meter-label';
  const name = document.createElement('span');
  name.className = 'name';
  const code = document.createElement('code');
  code.textContent = jobId;
  const badge = document.createElement('span');
  badge.className = 'stalled-badge';
  badge.hidden = true;
  name.append(code, ' ', badge);
  const pct = document.createElement('span');
  pct.className = 'pct';
  pct.textContent = '—';
  head.append(name, pct);
  const bar = document.createElement('div');
  bar.className = 'bar';
  bar.setAttribute('role', 'progressbar');
  bar.setAttribute('aria-label', `Progress of ${jobId}`);
  bar.setAttribute('aria-valuemin', '0');
  bar.setAttribute('aria-valuemax', '100');
  bar.setAttribute('aria-valuenow', '0');
  bar.append(Object.assign(document.createElement('div'), { className: 'fill' }));
  const stage = document.createElement('p');
  stage.className = 'stage-line';
  li.append(head, bar, stage);
  $('jobs').append(li);
  counts();
  return li;
}

function counts() {
  $('running-count').textContent = String($('jobs').children.length);
  $('finished-count').textContent = String($('finished').children.length);
  $('jobs-empty').hidden = $('jobs').children.length > 0;
}

function render(jobId, doc, meta) {
  const li = row(jobId);
  li.dataset.seq = meta.id ?? '';
  const pct = pctOf(doc);
  if (pct !== null) {
    li.dataset.pct = String(Math.floor(pct));
    li.querySelector('.pct').textContent = Math.floor(pct) + '%';
    const bar = li.querySelector('.bar');
    bar.style.setProperty('--pct', pct.toFixed(2) + '%');
    bar.style.setProperty('--fill', progressColor(pct));
    bar.setAttribute('aria-valuenow', String(Math.floor(pct)));
  }
  const stage = doc.stage ? String(doc.stage).replace(/_/g, ' ') : '';
  li.querySelector('.stage-line').textContent = [doc.status, stage, doc.message].filter(Boolean).join(' · ');
}

function setStalled(jobId, seconds) {
  const li = row(jobId);
  const badge = li.querySelector('.stalled-badge');
  li.dataset.stalled = seconds === null ? 'false' : 'true';
  badge.hidden = seconds === null;
  badge.textContent = seconds === null ? '' : `stalled · no update for ${Math.round(seconds)} s`;
}

function finish(jobId, status, doc) {
  const running = document.querySelector(`#jobs li[data-job="${CSS.escape(jobId)}"]`);
  if (running) running.remove();
  const li = document.createElement('li');
  li.dataset.job = jobId;
  li.dataset.status = status || '';
  const ok = status === 'completed';
  li.className = ok ? 'ok' : 'bad';
  const code = document.createElement('code');
  code.textContent = jobId;
  const why = !ok && doc && (doc.message || doc.error) ? ` — ${doc.message || doc.error}` : '';
  li.append(code, ` ${status || 'ended'}${why}`);
  $('finished').prepend(li);
  counts();
}

function setConn(state) {
  const el = $('group-conn');
  el.dataset.state = state;
  el.textContent = STATE_TEXT[state] || state;
}

export function startDashboard() {
  $('group-view').hidden = false;
  document.querySelector('.top .sub').textContent = "Live progress of a project's jobs";
  $('group-id').textContent = group;
  document.title = `${group} — jobcast`;
  const transports = (params.get('transports') || '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  // For tests and for people poking around in the console.
  const seen = {};
  const done = {};
  const handle = watchGroup(group, {
    token: token || undefined,
    transports: transports.length ? transports : undefined,
    onJoined: (jobId) => row(jobId),
    onProgress(jobId, doc, meta) {
      (seen[jobId] ||= []).push(Number(meta.id));
      render(jobId, doc, meta);
    },
    onStalled: setStalled,
    onDone(jobId, status, doc) {
      done[jobId] = status;
      finish(jobId, status, doc);
    },
    onError(err) {
      $('group-error').textContent = err.message;
      $('group-error').hidden = false;
    },
    onTransport: (name) => {
      $('group-transport').textContent = name;
    },
    onState: setConn,
    onRole: (role) => {
      $('group-role').textContent = role === 'holder' ? 'this tab holds the connection' : 'shared with another tab';
      $('group-role').dataset.role = role;
    },
  });
  window.__jobcastGroup = { handle, seen, done };
}
