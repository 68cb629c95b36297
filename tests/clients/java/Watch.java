// Bench client (bench/propagation_runtimes.py, bench/handover.py): `count` in-process flagd providers, each its own
// OpenFeature domain; prints {"ready": n} once all have their flags, then one JSON line per value
// change a client sees: {"c": client, "f": flag, "v": value, "t": unix seconds}. A client looks
// again on every READY too: after a reconnect, flagd's provider 0.11.15 reports a change made while
// it was away as READY, not as a configuration change (it passes that on only when its previous
// event was READY); listening to configuration changes alone, no client saw such a change in 120 s.
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.openfeature.contrib.providers.flagd.Config;
import dev.openfeature.contrib.providers.flagd.FlagdOptions;
import dev.openfeature.contrib.providers.flagd.FlagdProvider;
import dev.openfeature.sdk.ImmutableContext;
import dev.openfeature.sdk.OpenFeatureAPI;
import java.util.HashMap;
import java.util.Map;
import java.util.concurrent.atomic.AtomicInteger;

public class Watch {
    public static void main(String[] args) throws Exception {
        JsonNode job = new ObjectMapper().readTree(args[0]);
        OpenFeatureAPI api = OpenFeatureAPI.getInstance();
        int count = job.get("count").asInt();
        AtomicInteger ready = new AtomicInteger();
        ImmutableContext context = new ImmutableContext("bench-user");
        for (int c = 0; c < count; c++) {
            final int id = c;
            String domain = "c" + c;
            dev.openfeature.sdk.Client client = api.getClient(domain);
            Map<String, Boolean> last = new HashMap<>();
            Runnable check = () -> {
                synchronized (last) {
                    for (JsonNode f : job.get("flags")) {
                        String flag = f.asText();
                        boolean value = client.getBooleanValue(flag, false, context);
                        if (value != last.getOrDefault(flag, false)) {
                            last.put(flag, value);
                            emit(String.format("{\"c\":%d,\"f\":\"%s\",\"v\":%b,\"t\":%.6f}", id, flag, value,
                                    System.currentTimeMillis() / 1000.0));
                        }
                    }
                }
            };
            client.onProviderConfigurationChanged(details -> check.run());
            client.onProviderReady(details -> {
                check.run();
                if (ready.incrementAndGet() == count) emit("{\"ready\":" + count + "}");
            });
            api.setProvider(domain, new FlagdProvider(FlagdOptions.builder()
                    .resolverType(Config.Resolver.IN_PROCESS)
                    .host(job.get("host").asText()).port(job.get("syncPort").asInt())
                    .selector(job.get("namespace").asText()).build()));
        }
        Thread.currentThread().join();
    }

    static synchronized void emit(String line) {
        System.out.println(line);
        System.out.flush();
    }
}
