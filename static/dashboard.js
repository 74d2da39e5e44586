// jobcast demo page, project dashboard (static/index.html with ?group=):
// every job of one group on one connection (shared by this browser's tabs),
// each with its bar and a stalled badge, and the finished ones in a list.
// Reads ?group=&token=[&transports=ws,poll] from the URL. The element ids
// and data- attributes are used by tests.
import { watchGroup, progressColor } from './jobcast.js';
import { $, pctOf, setBar, showState } from './demo-ui.js';

const params = new URLSearchParams(location.search);
const group = (params.get('group') || '').trim();
const token = (params.get('token') || '').trim();



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
  const code = document.createElement('a');
  code.className = 'job-link';
  code.href = '/?' + new URLSearchParams(token ? { job: jobId, token } : { job: jobId });
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
  const raw = pctOf(doc);
  if (raw !== null) {
    const pct = Math.max(0, Math.min(100, raw));
    li.dataset.pct = String(Math.floor(pct));
    li.querySelector('.pct').textContent = Math.floor(pct) + '%';
    setBar(li.querySelector('.bar'), pct, progressColor(pct));
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
  showState($('group-conn'), state);
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
  const cached = [];
  const handle = watchGroup(group, {
    token: token || undefined,
    transports: transports.length ? transports : undefined,
    onJoined: (jobId) => row(jobId),
    onProgress(jobId, doc, meta) {
      (seen[jobId] ||= []).push(Number(meta.id));
      if (meta.cached) cached.push(jobId);
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
  window.__jobcastGroup = { handle, seen, done, cached };
}
