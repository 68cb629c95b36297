// Bench client (bench/propagation_runtimes.py, bench/handover.py): `count` in-process flagd providers, each its own
// OpenFeature domain; prints {"ready": n} once all have their flags, then one JSON line per value
// change a client sees: {"c": client, "f": flag, "v": value, "t": unix seconds}. A client looks
// again on every Ready too (after a reconnect), as the Java watch must (see Watch.java).
import { OpenFeature, ProviderEvents } from '@openfeature/server-sdk';
import { FlagdProvider } from '@openfeature/flagd-provider';

const job = JSON.parse(process.argv[2]);
const context = { targetingKey: 'bench-user' };
let ready = 0;

for (let c = 0; c < job.count; c++) {
  const domain = `c${c}`;
  const last = Object.fromEntries(job.flags.map((f) => [f, false]));
  const client = OpenFeature.getClient(domain);
  const check = async () => {
    for (const flag of job.flags) {
      const value = await client.getBooleanValue(flag, false, context);
      if (value !== last[flag]) {
        last[flag] = value;
        process.stdout.write(JSON.stringify({ c, f: flag, v: value, t: Date.now() / 1000 }) + '\n');
      }
    }
  };
  client.addHandler(ProviderEvents.ConfigurationChanged, check);
  client.addHandler(ProviderEvents.Ready, async () => {
    await check();
    if (++ready === job.count) process.stdout.write(JSON.stringify({ ready }) + '\n');
  });
  OpenFeature.setProvider(domain, new FlagdProvider({
    resolverType: 'in-process', host: job.host, port: job.syncPort, selector: job.namespace,
  }));
}
