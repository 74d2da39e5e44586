#!/usr/bin/env node
// Report a job's progress to jobcast from Node (ioredis), as docs/protocol.md says.
//
//   node examples/node/publish_progress.mjs JOB_ID [OWNER_ID [GROUP]]
//
// Environment: REDIS_URL (default redis://127.0.0.1:6379/0), JOBCAST_KEY_PREFIX
// (default progress:job:), JOBCAST_GROUP_PREFIX (default progress:group:),
// JOB_ID / OWNER_ID / JOB_GROUP when not given as arguments,
// STEP_SECONDS (pause between updates, default 0.3). Needs `npm install ioredis`
// (examples/node/package.json: `npm install --prefix examples/node`).
//
// Every update is ONE atomic round trip: MULTI, SET the state key with a TTL,
// PUBLISH the same JSON on the job channel, EXEC. `seq` increases with every
// update (and across runs: it never falls below the clock in milliseconds).
// A job in a GROUP (a project, a batch) carries `group_id` in its document and
// is added to the group's set, SADD + EXPIRE with the state key's TTL, sent
// right behind the transaction on the same connection: outside it, because in
// a Redis Cluster the set and the state key live in different slots.

import Redis from 'ioredis';

const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379/0';
const PREFIX = process.env.JOBCAST_KEY_PREFIX ?? 'progress:job:';
const GROUP_PREFIX = process.env.JOBCAST_GROUP_PREFIX ?? 'progress:group:';
const TTL_SECONDS = 7200;
const STEP_MS = 1000 * Number(process.env.STEP_SECONDS ?? '0.3');

// [stage, weight in % of the job, steps]; the weights sum to 100.
const STAGES = [['loading_data', 5, 3], ['clustering', 10, 4], ['solving', 60, 10],
  ['validating', 15, 4], ['exporting', 10, 3]];

const jobId = process.argv[2] ?? process.env.JOB_ID ?? 'node-demo';
const ownerId = process.argv[3] ?? process.env.OWNER_ID ?? 'demo-user';
const group = process.argv[4] ?? process.env.JOB_GROUP;
// Group names follow the job id rules, like every name spliced into a key.
const NAME = /^[A-Za-z0-9._:-]{1,200}$/;
for (const [what, name] of [['job id', jobId], ['group', group]]) {
  if (name !== undefined && !NAME.test(name)) {
    console.error(`${what} ${JSON.stringify(name)}: 1-200 characters from A-Z a-z 0-9 . _ : -`);
    process.exit(2);
  }
}
const key = PREFIX + jobId;
const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 3 });

const doc = {
  job_id: jobId, owner_id: ownerId, seq: 0, status: 'running',
  stages: STAGES.map(([name, weight]) => ({ name, weight })),
  started_at: new Date().toISOString(),
  ...(group === undefined ? {} : { group_id: group }),
};

async function publish(fields) {
  Object.assign(doc, fields);
  // Strictly increasing, and above anything an earlier run of this job wrote.
  doc.seq = Math.max(doc.seq + 1, Date.now());
  doc.last_updated = new Date().toISOString();
  const payload = JSON.stringify(doc);
  const writes = [redis.multi().set(key, payload, 'EX', TTL_SECONDS).publish(key, payload).exec()];
  if (group !== undefined) {
    const set = GROUP_PREFIX + group;
    writes.push(redis.pipeline().sadd(set, jobId).expire(set, TTL_SECONDS).exec());
  }
  for (const replies of await Promise.all(writes)) {
    for (const [err] of replies) if (err) throw err;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

try {
  const started = Date.now();
  let doneWeight = 0;
  for (const [name, weight, steps] of STAGES) {
    for (let step = 0; step <= steps; step++) {
      const stagePct = (100 * step) / steps;
      const overall = doneWeight + (weight * stagePct) / 100;
      const elapsed = (Date.now() - started) / 1000;
      const eta = overall > 0 ? Math.round((elapsed * (100 - overall)) / overall) : null;
      await publish({
        stage: name,
        stage_progress: Math.round(stagePct * 100) / 100,
        overall_progress: Math.round(overall * 100) / 100,
        eta_seconds: eta,
      });
      await sleep(STEP_MS);
    }
    doneWeight += weight;
  }
  await publish({ status: 'completed', stage_progress: 100, overall_progress: 100, eta_seconds: 0 });
  console.log(`${jobId}: completed (seq ${doc.seq})`);
} catch (e) {
  process.exitCode = 1;
  console.error(e);
  await publish({ status: 'failed', error: String(e.message ?? e), message: String(e.message ?? e) }).catch(() => {});
} finally {
  redis.disconnect();
}
