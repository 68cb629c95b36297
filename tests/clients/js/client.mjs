// The OpenFeature JavaScript server SDK against flag-scheduler, driven by tests/integration/test_sdk_clients.py.
//
// One run: connect flagd's provider in-process (sync port) and the OFREP provider; evaluate the
// rollout flags and the split flag for every key and the typed flags with the SDK's typed methods;
// print one JSON line; then wait until the watched flag turns true and the switched flag shows its
// new variant in BOTH providers without restarting them, print a second line, and exit.
import { OpenFeature } from '@openfeature/server-sdk';
import { FlagdProvider } from '@openfeature/flagd-provider';
import { OFREPProvider } from '@openfeature/ofrep-provider';

const job = JSON.parse(process.argv[2]);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Not setProviderAndWait: its first connection attempt must succeed within the provider's deadline
// (500 ms by default), tight on a busy machine; the provider keeps reconnecting after it, and an
// application would carry on with code defaults meanwhile.
OpenFeature.setProvider('sync', new FlagdProvider({
  resolverType: 'in-process', host: job.host, port: job.syncPort, selector: job.namespace,
}));
OpenFeature.setProvider('ofrep', new OFREPProvider({ baseUrl: job.ofrepUrl }));
const sync = OpenFeature.getClient('sync');
const ofrep = OpenFeature.getClient('ofrep');
const clients = [['sync', sync], ['ofrep', ofrep]];

// The bits of one flag over the first `count` keys: "1" where the client answers true.
async function bits(client, flag, count) {
  let out = '';
  for (let i = 0; i < count; i++) {
    out += (await client.getBooleanValue(flag, false, { targetingKey: `user-${i}` })) ? '1' : '0';
  }
  return out;
}

// The variant of the split flag for each of the first `count` keys (null where none came back).
async function variants(client, split, count) {
  const out = [];
  for (let i = 0; i < count; i++) {
    out.push((await client.getStringDetails(split.flag, split.default, { targetingKey: `user-${i}` })).variant ?? null);
  }
  return out;
}

const shown = (d) => ({ value: d.value, variant: d.variant ?? null, reason: d.reason ?? null,
                        errorCode: d.errorCode ?? null, flagMetadata: d.flagMetadata ?? {} });

async function details(client, flag) {
  return shown(await client.getBooleanDetails(flag, true, { targetingKey: 'user-1' }));
}

// One evaluation of the job's `typed` list with the SDK's method for its type.
async function typed(client, e) {
  const context = { targetingKey: 'user-1', ...(e.attributes ?? {}) };
  const method = { string: 'getStringDetails', integer: 'getNumberDetails', float: 'getNumberDetails',
                   object: 'getObjectDetails' }[e.type];
  return shown(await client[method](e.flag, e.default, context));
}

while ((await details(sync, job.watch)).errorCode) await sleep(100); // the flag set has arrived
const first = { watch: { sync: await details(sync, job.watch), ofrep: await details(ofrep, job.watch) },
                missing: { sync: await details(sync, 'no-such-flag'), ofrep: await details(ofrep, 'no-such-flag') },
                sync: {}, ofrep: {}, typed: { sync: {}, ofrep: {} }, split: {} };
for (const flag of job.rollouts) {
  first.sync[flag] = await bits(sync, flag, job.keys);
  first.ofrep[flag] = await bits(ofrep, flag, job.ofrepKeys);
}
for (const e of job.typed ?? []) {
  for (const [name, client] of clients) first.typed[name][e.name] = await typed(client, e);
}
if (job.split) {
  first.split = { sync: await variants(sync, job.split, job.keys), ofrep: await variants(ofrep, job.split, job.ofrepKeys) };
}
console.log(JSON.stringify(first));

// Both scheduled changes, landing together: the watched flag on, the switched flag's new variant.
const seen = {};
const switched = {};
while (Object.keys(seen).length < clients.length) {
  for (const [name, client] of clients) {
    if (seen[name] || !(await client.getBooleanValue(job.watch, false, { targetingKey: 'user-1' }))) continue;
    const now = job.switch ? await typed(client, job.switch) : null;
    if (job.switch && now.variant !== job.switch.variant) continue;
    seen[name] = await details(client, job.watch);
    switched[name] = now;
  }
  await sleep(50);
}
console.log(JSON.stringify({ changed: seen, switched }));
await OpenFeature.close();
process.exit(0);
