// The OpenFeature Java SDK with flagd's provider in-process and the OFREP provider against
// flag-scheduler, driven by tests/integration/test_sdk_clients.py: evaluate the rollout flags for
// every key (OFREP: the first ofrepKeys) and print one JSON line, then wait until the watched flag
// turns true in both without restarting, print a second line, exit.
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.openfeature.contrib.providers.flagd.Config;
import dev.openfeature.contrib.providers.flagd.FlagdOptions;
import dev.openfeature.contrib.providers.flagd.FlagdProvider;
import dev.openfeature.contrib.providers.ofrep.OfrepProvider;
import dev.openfeature.contrib.providers.ofrep.OfrepProviderOptions;

import dev.openfeature.sdk.FlagEvaluationDetails;
import dev.openfeature.sdk.ImmutableContext;
import dev.openfeature.sdk.OpenFeatureAPI;
import java.util.LinkedHashMap;
import java.util.Map;

public class FlagClient {
    static final ObjectMapper JSON = new ObjectMapper();

    public static void main(String[] args) throws Exception {
        JsonNode job = JSON.readTree(args[0]);
        FlagdProvider provider = new FlagdProvider(FlagdOptions.builder()
                .resolverType(Config.Resolver.IN_PROCESS)
                .host(job.get("host").asText()).port(job.get("syncPort").asInt())
                .selector(job.get("namespace").asText()).build());
        OpenFeatureAPI api = OpenFeatureAPI.getInstance();
        // Not setProviderAndWait: its wait is the provider's deadline (1 s by default), shorter than a
        // cold JVM on a busy machine needs; an application would also carry on and get defaults meanwhile.
        api.setProvider("sync", provider);
        api.setProviderAndWait("ofrep", OfrepProvider.constructProvider(
                OfrepProviderOptions.builder().baseUrl(job.get("ofrepUrl").asText()).build()));
        dev.openfeature.sdk.Client sync = api.getClient("sync");
        dev.openfeature.sdk.Client ofrep = api.getClient("ofrep");
        String watch = job.get("watch").asText();

        while (details(sync, watch).get("errorCode") != null) Thread.sleep(100); // the flag set has arrived
        Map<String, Object> first = new LinkedHashMap<>();
        first.put("watch", Map.of("sync", details(sync, watch), "ofrep", details(ofrep, watch)));
        first.put("missing", Map.of("sync", details(sync, "no-such-flag"), "ofrep", details(ofrep, "no-such-flag")));
        Map<String, String> syncBits = new LinkedHashMap<>();
        Map<String, String> ofrepBits = new LinkedHashMap<>();
        for (JsonNode flag : job.get("rollouts")) {
            syncBits.put(flag.asText(), bits(sync, flag.asText(), job.get("keys").asInt()));
            ofrepBits.put(flag.asText(), bits(ofrep, flag.asText(), job.get("ofrepKeys").asInt()));
        }
        first.put("sync", syncBits);
        first.put("ofrep", ofrepBits);
        System.out.println(JSON.writeValueAsString(first));
        System.out.flush();

        Map<String, Object> changed = new LinkedHashMap<>();
        while (changed.size() < 2) {
            for (Map.Entry<String, dev.openfeature.sdk.Client> c : Map.of("sync", sync, "ofrep", ofrep).entrySet()) {
                if (!changed.containsKey(c.getKey()) && c.getValue().getBooleanValue(watch, false, new ImmutableContext("user-1"))) {
                    changed.put(c.getKey(), details(c.getValue(), watch));
                }
            }
            Thread.sleep(50);
        }
        System.out.println(JSON.writeValueAsString(Map.of("changed", changed)));
        System.out.flush();
        api.shutdown();
        System.exit(0);
    }

    static String bits(dev.openfeature.sdk.Client client, String flag, int count) {
        StringBuilder out = new StringBuilder(count);
        for (int i = 0; i < count; i++) {
            out.append(client.getBooleanValue(flag, false, new ImmutableContext("user-" + i)) ? '1' : '0');
        }
        return out.toString();
    }

    static Map<String, Object> details(dev.openfeature.sdk.Client client, String flag) {
        FlagEvaluationDetails<Boolean> d = client.getBooleanDetails(flag, true, new ImmutableContext("user-1"));
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("value", d.getValue());
        out.put("variant", d.getVariant());
        out.put("reason", d.getReason());
        out.put("errorCode", d.getErrorCode() == null ? null : d.getErrorCode().name());
        out.put("flagMetadata", d.getFlagMetadata() == null ? Map.of() : d.getFlagMetadata().asUnmodifiableMap());
        return out;
    }
}
