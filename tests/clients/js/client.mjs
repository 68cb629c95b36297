// The OpenFeature JavaScript server SDK against flag-scheduler, driven by tests/integration/test_sdk_clients.py.
//
// One run: connect flagd's provider in-process (sync port) and the OFREP provider, evaluate the
// rollout flags for every key, print one JSON line; then wait until the watched flag turns true in
// BOTH providers without restarting them, print a second line, and exit.
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

// The bits of one flag over the first `count` keys: "1" where the client answers true.
async function bits(client, flag, count) {
  let out = '';
  for (let i = 0; i < count; i++) {
    out += (await client.getBooleanValue(flag, false, { targetingKey: `user-${i}` })) ? '1' : '0';
  }
  return out;
}

async function details(client, flag) {
  const d = await client.getBooleanDetails(flag, true, { targetingKey: 'user-1' });
  return { value: d.value, variant: d.variant ?? null, reason: d.reason ?? null, errorCode: d.errorCode ?? null,
           flagMetadata: d.flagMetadata ?? {} };
}

while ((await details(sync, job.watch)).errorCode) await sleep(100); // the flag set has arrived
const first = { watch: { sync: await details(sync, job.watch), ofrep: await details(ofrep, job.watch) },
                missing: { sync: await details(sync, 'no-such-flag'), ofrep: await details(ofrep, 'no-such-flag') },
                sync: {}, ofrep: {} };
for (const flag of job.rollouts) {
  first.sync[flag] = await bits(sync, flag, job.keys);
  first.ofrep[flag] = await bits(ofrep, flag, job.ofrepKeys);
}
console.log(JSON.stringify(first));

const seen = {};
while (Object.keys(seen).length < 2) {
  for (const [name, client] of [['sync', sync], ['ofrep', ofrep]]) {
    if (!seen[name] && (await client.getBooleanValue(job.watch, false, { targetingKey: 'user-1' }))) {
      seen[name] = await details(client, job.watch);
    }
  }
  await sleep(50);
}
console.log(JSON.stringify({ changed: seen }));
await OpenFeature.close();
process.exit(0);
