// jobcast demo page logic (static/index.html). Reads ?job=&token=[&transports=ws,poll]
// [&connect_timeout_ms=] from the URL, watches the job with jobcast.js and renders it;
// with ?group= instead, shows that project's dashboard (static/dashboard.js).
import { watch, smoothProgress, etaSmoother, progressColor, formatDuration } from './jobcast.js';
import { startDashboard } from './dashboard.js';
import { $, pctOf, setBar, showState } from './demo-ui.js';

const params = new URLSearchParams(location.search);
const jobId = (params.get('job') || '').trim();
const token = (params.get('token') || '').trim();


function humanError(err) {
  const text = humanText(err);
  // The gateway's own words on a refused token (expired, bad signature…).
  return err && err.detail && err.status === 401 ? `${text} (${err.detail})` : text;
}

function humanText(err) {
  switch (err && err.code) {
    case 'token_expired':
      return 'Your session has expired. Sign in again, then reload this page.';
    case 'unauthorized':
      return token
        ? 'Your session has expired. Sign in again, then reload this page.'
        : 'You need to sign in to watch this job: no access token was given.';
    case 'forbidden':
      return "You don't have access to this job.";
    case 'not_found':
      return "This job doesn't exist. Check the link or the job id.";
    case 'bad_request':
      return 'This job id is not valid.';
    default:
      return (err && err.message) || 'Something went wrong while watching this job.';
  }
}

function showError(text) {
  $('error').textContent = text;
  $('error').hidden = !text;
}


// --- rendering -------------------------------------------------------------

const smooth = smoothProgress({ ease: 0.35 });
const eta = etaSmoother(0.3);
let lastDoc = null;
let finished = null; // the done payload, once the job ended
let failedJob = false;
let ticker = null;


function renderOverall(value) {
  const shown = finished && !failedJob ? 100 : Math.floor(value);
  $('overall-pct').textContent = shown + '%';
  setBar($('overall-bar'), finished && !failedJob ? 100 : value, failedJob ? 'var(--bad)' : progressColor(value));
  document.title = `${shown}% · ${jobId} — jobcast`;
}

function animate() {
  // Ease the bar toward the latest target a little per frame, then stop.
  if (ticker) return;
  ticker = setInterval(() => {
    const v = smooth.tick();
    renderOverall(v);
    if (v >= smooth.target) {
      clearInterval(ticker);
      ticker = null;
    }
  }, 50);
}

function stageNames(doc) {
  if (!Array.isArray(doc.stages)) return null;
  return doc.stages
    .map((s) => (typeof s === 'string' ? { name: s, weight: 1 } : s && { name: String(s.name ?? ''), weight: Number(s.weight) || 1 }))
    .filter((s) => s && s.name);
}

function renderStages(doc) {
  const list = $('stages');
  const stages = stageNames(doc);
  if (!stages || !stages.length) {
    list.hidden = true;
    return;
  }
  const status = String((finished && finished.status) || doc.status || '').toLowerCase();
  const current = stages.findIndex((s) => s.name === doc.stage);
  list.replaceChildren(
    ...stages.map((s, i) => {
      const li = document.createElement('li');
      let state = current === -1 ? 'pending' : i < current ? 'done' : i === current ? 'current' : 'pending';
      if (status === 'completed') state = 'done';
      if (status === 'failed' && i === current) state = 'failed';
      li.className = state;
      li.style.setProperty('--w', String(s.weight));
      li.textContent = s.name.replace(/_/g, ' ');
      li.title = `${s.name}: ${state}`;
      li.setAttribute('aria-label', `${s.name.replace(/_/g, ' ')}: ${state}`);
      if (state === 'current') li.setAttribute('aria-current', 'step');
      return li;
    }),
  );
  list.hidden = false;
}

function renderEta() {
  if (finished) {
    $('eta').textContent = '—';
    return;
  }
  const s = eta(null);
  $('eta').textContent = s === null ? '—' : s < 1 ? 'almost done' : 'about ' + formatDuration(s);
}

function render(doc) {
  lastDoc = doc;
  if (!finished) $('status').textContent = doc.status ? String(doc.status) : 'in progress';

  const pct = pctOf(doc);
  if (pct !== null) {
    smooth(pct);
    animate();
  }

  const hasStage = doc.stage !== undefined && doc.stage !== null && doc.stage !== '';
  $('stage').textContent = hasStage ? String(doc.stage) : '—';
  const sp = Number(doc.stage_progress);
  const hasSp = doc.stage_progress !== undefined && doc.stage_progress !== null && Number.isFinite(sp);
  $('stage-pct').textContent = hasSp ? Math.floor(sp) + '%' : '';
  setBar($('stage-bar'), hasSp ? sp : 0, 'var(--accent)');
  $('stage-meter').hidden = !hasStage && !hasSp;
  renderStages(doc);

  if (doc.eta_seconds !== undefined && doc.eta_seconds !== null) eta(doc.eta_seconds);
  renderEta();

  $('doc').textContent = JSON.stringify(doc, null, 2);
}

function logEvent(meta, doc) {
  const li = document.createElement('li');
  li.dataset.id = meta.id ?? '';
  const t = new Date().toLocaleTimeString();
  const pct = pctOf(doc);
  li.textContent = `#${meta.id ?? '?'} · ${meta.cached ? 'cached' : meta.transport} · ${t} · ${doc.status ?? ''}${pct !== null ? ' ' + pct + '%' : ''}`;
  const log = $('log');
  log.prepend(li);
  while (log.children.length > 200) log.lastChild.remove();
}

function showResult(done) {
  const status = String(done.status || (lastDoc && lastDoc.status) || '').toLowerCase();
  const el = $('result');
  if (status === 'failed' || status === 'error') {
    failedJob = true;
    const why = (lastDoc && (lastDoc.message || lastDoc.error)) || done.message || done.error || 'no reason was given';
    el.textContent = 'Failed: ' + why;
    el.className = 'result bad';
  } else if (status === 'cancelled' || status === 'canceled') {
    failedJob = true;
    el.textContent = 'Cancelled';
    el.className = 'result bad';
  } else {
    el.textContent = 'Completed';
    el.className = 'result ok';
  }
  el.hidden = false;
}

// --- wiring ----------------------------------------------------------------

function start() {
  $('job-view').hidden = false;
  $('job-id').textContent = jobId;
  if (token) $('other-job').href = '/?' + new URLSearchParams({ token });

  if (!/^[A-Za-z0-9._:-]{1,200}$/.test(jobId)) {
    $('status').textContent = 'not watched';
    showError('This job id is not valid.');
    setConn('failed');
    return;
  }

  const transports = (params.get('transports') || '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  const timeout = Number(params.get('connect_timeout_ms'));

  const ids = [];
  const handle = watch(jobId, {
    token: token || undefined,
    transports: transports.length ? transports : undefined,
    connectTimeoutMs: Number.isFinite(timeout) && timeout > 0 ? timeout : undefined,
    onProgress(doc, meta) {
      ids.push(meta.id);
      logEvent(meta, doc);
      render(doc);
    },
    onDone(doc, done) {
      finished = done;
      showResult(done);
      if (doc && doc !== lastDoc) render(doc);
      if (!failedJob) smooth.done();
      renderOverall(smooth.value);
      if (lastDoc) renderStages(lastDoc);
      renderEta();
      $('status').textContent = 'done';
    },
    onError(err) {
      showError(humanError(err));
      if (!lastDoc) {
        // Nothing to show: do not leave empty bars that look like a job at 0%.
        $('status').textContent = 'not available';
        for (const id of ['overall-bar', 'stage-meter']) $(id).closest('.meter').hidden = true;
      }
    },
    onStalled(seconds) {
      $('stalled').hidden = seconds === null;
      $('stalled').textContent = seconds === null ? '' : `stalled · no update for ${Math.round(seconds)} s`;
    },
    onTransport(name) {
      $('transport').textContent = name;
    },
    onState(state) {
      setConn(state);
    },
  });
  // For people poking around in the console, and for tests.
  window.__jobcast = { handle, ids };
  setInterval(() => lastDoc && !finished && renderEta(), 1000);
}

function setConn(state) {
  showState($('conn-state'), state);
}

if (jobId) {
  start();
} else if ((params.get('group') || '').trim()) {
  startDashboard();
} else {
  const form = $('job-form');
  form.hidden = false;
  $('token-input').value = token;
  $('job-input').focus();
}
