// The page's program: read the job from the query string, evaluate, report, wait for the change.
import { OpenFeature } from '@openfeature/web-sdk';
import { OFREPWebProvider } from '@openfeature/ofrep-web-provider';

const job = JSON.parse(new URLSearchParams(location.search).get('job'));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const report = (body) => fetch('/report', { method: 'POST', body: JSON.stringify(body) });

function details(client, flag) {
  const d = client.getBooleanDetails(flag, true);
  return { value: d.value, variant: d.variant ?? null, reason: d.reason ?? null, errorCode: d.errorCode ?? null,
           flagMetadata: d.flagMetadata ?? {} };
}

try {
  await OpenFeature.setContext({ targetingKey: 'user-1' });
  await OpenFeature.setProviderAndWait(new OFREPWebProvider({
    baseUrl: job.ofrepUrl, pollInterval: job.pollIntervalMs, cacheMode: 'disabled',
  }));
  const client = OpenFeature.getClient();
  const first = { watch: { ofrep: details(client, job.watch) }, missing: { ofrep: details(client, 'no-such-flag') },
                  ofrep: {} };
  // A web provider evaluates for one context at a time: each new targeting key is one bulk request.
  for (const flag of job.rollouts) first.ofrep[flag] = '';
  for (let i = 0; i < job.ofrepKeys; i++) {
    await OpenFeature.setContext({ targetingKey: `user-${i}` });
    for (const flag of job.rollouts) first.ofrep[flag] += client.getBooleanValue(flag, false) ? '1' : '0';
  }
  await OpenFeature.setContext({ targetingKey: 'user-1' });
  await report(first);
  while (!client.getBooleanValue(job.watch, false)) await sleep(50);
  await report({ changed: { ofrep: details(client, job.watch) } });
} catch (err) {
  await report({ error: String(err && err.stack || err) });
}
