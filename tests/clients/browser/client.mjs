// The page's program: read the job from the query string, evaluate, report, wait for the changes.
import { OpenFeature } from '@openfeature/web-sdk';
import { OFREPWebProvider } from '@openfeature/ofrep-web-provider';

const job = JSON.parse(new URLSearchParams(location.search).get('job'));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const report = (body) => fetch('/report', { method: 'POST', body: JSON.stringify(body) });

const shown = (d) => ({ value: d.value, variant: d.variant ?? null, reason: d.reason ?? null,
                        errorCode: d.errorCode ?? null, flagMetadata: d.flagMetadata ?? {} });

function details(client, flag) {
  return shown(client.getBooleanDetails(flag, true));
}

// One evaluation of the job's `typed` list with the SDK's method for its type, in the current context.
function typed(client, e) {
  const method = { string: 'getStringDetails', integer: 'getNumberDetails', float: 'getNumberDetails',
                   object: 'getObjectDetails' }[e.type];
  return shown(client[method](e.flag, e.default));
}

try {
  await OpenFeature.setContext({ targetingKey: 'user-1' });
  await OpenFeature.setProviderAndWait(new OFREPWebProvider({
    baseUrl: job.ofrepUrl, pollInterval: job.pollIntervalMs, cacheMode: 'disabled',
  }));
  const client = OpenFeature.getClient();
  const first = { watch: { ofrep: details(client, job.watch) }, missing: { ofrep: details(client, 'no-such-flag') },
                  ofrep: {}, typed: { ofrep: {} }, split: { ofrep: [] } };
  // A web provider evaluates for one context at a time: each new context is one bulk request.
  for (const e of job.typed ?? []) {
    if (e.attributes) await OpenFeature.setContext({ targetingKey: 'user-1', ...e.attributes });
    first.typed.ofrep[e.name] = typed(client, e);
    if (e.attributes) await OpenFeature.setContext({ targetingKey: 'user-1' });
  }
  for (const flag of job.rollouts) first.ofrep[flag] = '';
  for (let i = 0; i < job.ofrepKeys; i++) {
    await OpenFeature.setContext({ targetingKey: `user-${i}` });
    for (const flag of job.rollouts) first.ofrep[flag] += client.getBooleanValue(flag, false) ? '1' : '0';
    if (job.split) first.split.ofrep.push(client.getStringDetails(job.split.flag, job.split.default).variant ?? null);
  }
  await OpenFeature.setContext({ targetingKey: 'user-1' });
  await report(first);
  // Both scheduled changes, landing together: the watched flag on, the switched flag's new variant.
  const switchedTo = () => !job.switch || typed(client, job.switch).variant === job.switch.variant;
  while (!client.getBooleanValue(job.watch, false) || !switchedTo()) await sleep(50);
  await report({ changed: { ofrep: details(client, job.watch) },
                switched: { ofrep: job.switch ? typed(client, job.switch) : null } });
} catch (err) {
  await report({ error: String(err && err.stack || err) });
}
