package org.shoprank.opensearch;

import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.opensearch.analysis.common.CommonAnalysisPlugin;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.index.mapper.MapperExtrasPlugin;
import org.opensearch.index.reindex.ReindexPlugin;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.painless.PainlessPlugin;
import org.opensearch.plugins.Plugin;
import org.opensearch.transport.Netty4Plugin;

/**
 * Single-node OpenSearch for local development and tests, started in-process.
 *
 * <p>Why not bin/opensearch: Bootstrap refuses to run as root (CI does), and there is no
 * distribution to download here. Node's protected constructor accepts plugin classes from the
 * classpath, which skips plugin descriptors, the security manager and jar-hell checks.
 * Not for production: production runs the official OpenSearch images.
 *
 * <p>Arguments are {@code key=value} node settings that override the defaults below;
 * {@code path.home} is required.
 */
public final class EmbeddedNode extends Node {

    /** k-NN ships only as a plugin zip (no compile-time jar); its unpacked jars are on the runtime classpath. */
    private static final String KNN_PLUGIN = "org.opensearch.knn.plugin.KNNPlugin";

    private static List<Class<? extends Plugin>> plugins() throws ClassNotFoundException {
        return List.of(
            Netty4Plugin.class,          // HTTP + transport
            PainlessPlugin.class,        // scripts; k-NN declares it as its parent plugin
            CommonAnalysisPlugin.class,  // stemmers, stop filters, language analyzers
            MapperExtrasPlugin.class,    // rank_feature, scaled_float, search_as_you_type
            ReindexPlugin.class,         // _reindex, _update_by_query, _delete_by_query
            // knn_vector + knn query; Lucene engine only, the faiss/nmslib JNI libraries are absent
            Class.forName(KNN_PLUGIN).asSubclass(Plugin.class),
            KnnEngineGuard.class         // turns the missing-JNI hang into a 400 at mapping time
        );
    }

    private EmbeddedNode(Environment env, Collection<Class<? extends Plugin>> plugins) {
        super(env, plugins, true);
    }

    public static void main(String[] args) throws Exception {
        Settings.Builder overrides = Settings.builder();
        for (String arg : args) {
            int eq = arg.indexOf('=');
            if (eq <= 0) {
                System.err.println("expected key=value, got: " + arg);
                System.exit(2);
            }
            overrides.put(arg.substring(0, eq), arg.substring(eq + 1));
        }
        Settings given = overrides.build();
        String home = given.get("path.home");
        if (home == null) {
            System.err.println("path.home=... is required");
            System.exit(2);
        }
        Path homeDir = Paths.get(home).toAbsolutePath();
        Path configDir = homeDir.resolve("config");
        Files.createDirectories(configDir);

        Settings settings = Settings.builder()
            .put("cluster.name", "shoprank-dev")
            .put("node.name", "shoprank-dev-node")
            .put("discovery.type", "single-node")
            .put("network.host", "127.0.0.1")
            .put("http.port", "9200")
            .put("path.data", homeDir.resolve("data").toString())
            .put("path.logs", homeDir.resolve("logs").toString())
            // dev disks are often >90% full; the watermark would block shard allocation
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            .put(given)
            .put("path.home", homeDir.toString())
            .build();

        EmbeddedNode node;
        try {
            Environment env = InternalSettingsPreparer.prepareEnvironment(
                settings, Map.of(), configDir, () -> settings.get("node.name"));
            node = new EmbeddedNode(env, plugins());
        } catch (Throwable t) {
            t.printStackTrace();
            // construction may already have started non-daemon threads; exit explicitly
            System.exit(1);
            return;
        }

        CountDownLatch closed = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
                node.awaitClose(30, TimeUnit.SECONDS);
            } catch (Exception e) {
                e.printStackTrace();
            } finally {
                closed.countDown();
            }
        }, "shoprank-node-shutdown"));

        try {
            node.start();
        } catch (Throwable t) {
            t.printStackTrace();
            System.exit(1); // the shutdown hook closes the half-started node
        }
        // start() returns once the node is up; the node's own threads do the work
        closed.await();
    }
}
