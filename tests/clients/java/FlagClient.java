// The OpenFeature Java SDK with flagd's provider in-process and the OFREP provider against
// flag-scheduler, driven by tests/integration/test_sdk_clients.py: evaluate the rollout flags and the
// split flag for every key (OFREP: the first ofrepKeys) and the typed flags with the SDK's typed
// methods, print one JSON line; then wait until the watched flag turns true and the switched flag
// shows its new variant in both without restarting, print a second line, exit.
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
import dev.openfeature.sdk.Value;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
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
        Map<String, dev.openfeature.sdk.Client> clients = new LinkedHashMap<>();
        clients.put("sync", sync);
        clients.put("ofrep", ofrep);
        Map<String, Map<String, Object>> typed = new LinkedHashMap<>();
        for (Map.Entry<String, dev.openfeature.sdk.Client> c : clients.entrySet()) {
            Map<String, Object> byName = new LinkedHashMap<>();
            for (JsonNode e : job.path("typed")) byName.put(e.get("name").asText(), typed(c.getValue(), e));
            typed.put(c.getKey(), byName);
        }
        first.put("typed", typed);
        JsonNode split = job.get("split");
        if (split != null) {
            first.put("split", Map.of("sync", variants(sync, split, job.get("keys").asInt()),
                                      "ofrep", variants(ofrep, split, job.get("ofrepKeys").asInt())));
        }
        System.out.println(JSON.writeValueAsString(first));
        System.out.flush();

        // Both scheduled changes, landing together: the watched flag on, the switched flag's new variant.
        JsonNode change = job.get("switch");
        Map<String, Object> changed = new LinkedHashMap<>();
        Map<String, Object> switched = new HashMap<>();  // a null value: no switch asked for
        while (changed.size() < clients.size()) {
            for (Map.Entry<String, dev.openfeature.sdk.Client> c : clients.entrySet()) {
                if (changed.containsKey(c.getKey()) || !c.getValue().getBooleanValue(watch, false, new ImmutableContext("user-1"))) continue;
                Map<String, Object> now = change == null ? null : typed(c.getValue(), change);
                if (now != null && !change.get("variant").asText().equals(now.get("variant"))) continue;
                changed.put(c.getKey(), details(c.getValue(), watch));
                switched.put(c.getKey(), now);
            }
            Thread.sleep(50);
        }
        Map<String, Object> second = new LinkedHashMap<>();
        second.put("changed", changed);
        second.put("switched", switched);
        System.out.println(JSON.writeValueAsString(second));
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

    // The variant of the split flag for each of the first `count` keys (null where none came back).
    static List<String> variants(dev.openfeature.sdk.Client client, JsonNode split, int count) {
        List<String> out = new ArrayList<>(count);
        for (int i = 0; i < count; i++) {
            out.add(client.getStringDetails(split.get("flag").asText(), split.get("default").asText(),
                                            new ImmutableContext("user-" + i)).getVariant());
        }
        return out;
    }

    // One evaluation of the job's `typed` list with the SDK's method for its type.
    static Map<String, Object> typed(dev.openfeature.sdk.Client client, JsonNode e) throws Exception {
        Map<String, Value> attributes = new HashMap<>();
        e.path("attributes").properties().forEach(a -> attributes.put(a.getKey(), new Value(a.getValue().asText())));
        ImmutableContext context = new ImmutableContext("user-1", attributes);
        String flag = e.get("flag").asText();
        JsonNode fallback = e.get("default");
        switch (e.get("type").asText()) {
            case "string": return shown(client.getStringDetails(flag, fallback.asText(), context), x -> x);
            case "integer": return shown(client.getIntegerDetails(flag, fallback.asInt(), context), x -> x);
            case "float": return shown(client.getDoubleDetails(flag, fallback.asDouble(), context), x -> x);
            case "object":
                Value code = Value.objectToValue(JSON.convertValue(fallback, Object.class));
                return shown(client.getObjectDetails(flag, code, context), FlagClient::plain);
            default: throw new IllegalArgumentException("typed[].type: unknown " + e.get("type"));
        }
    }

    // A Value as plain maps, lists and scalars, for JSON.
    static Object plain(Value v) {
        if (v == null || v.isNull()) return null;
        if (v.isStructure()) {
            Map<String, Object> out = new LinkedHashMap<>();
            v.asStructure().asMap().forEach((k, x) -> out.put(k, plain(x)));
            return out;
        }
        if (v.isList()) {
            List<Object> out = new ArrayList<>();
            for (Value x : v.asList()) out.add(plain(x));
            return out;
        }
        return v.asObject();
    }

    static Map<String, Object> details(dev.openfeature.sdk.Client client, String flag) {
        return shown(client.getBooleanDetails(flag, true, new ImmutableContext("user-1")), x -> x);
    }

    static <T> Map<String, Object> shown(FlagEvaluationDetails<T> d, java.util.function.Function<T, Object> value) {
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("value", value.apply(d.getValue()));
        out.put("variant", d.getVariant());
        out.put("reason", d.getReason());
        out.put("errorCode", d.getErrorCode() == null ? null : d.getErrorCode().name());
        out.put("flagMetadata", d.getFlagMetadata() == null ? Map.of() : d.getFlagMetadata().asUnmodifiableMap());
        return out;
    }
}
