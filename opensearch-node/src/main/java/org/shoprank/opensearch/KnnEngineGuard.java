package org.shoprank.opensearch;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;

import org.opensearch.action.ActionRequest;
import org.opensearch.action.admin.indices.create.CreateIndexRequest;
import org.opensearch.action.admin.indices.mapping.put.PutMappingRequest;
import org.opensearch.action.admin.indices.template.put.PutComponentTemplateAction;
import org.opensearch.action.admin.indices.template.put.PutComposableIndexTemplateAction;
import org.opensearch.action.admin.indices.template.put.PutIndexTemplateRequest;
import org.opensearch.action.support.ActionFilter;
import org.opensearch.action.support.ActionFilterChain;
import org.opensearch.cluster.metadata.Template;
import org.opensearch.common.xcontent.XContentHelper;
import org.opensearch.core.action.ActionListener;
import org.opensearch.core.action.ActionResponse;
import org.opensearch.core.common.bytes.BytesArray;
import org.opensearch.core.common.bytes.BytesReference;
import org.opensearch.plugins.ActionPlugin;
import org.opensearch.plugins.Plugin;
import org.opensearch.tasks.Task;

/**
 * Rejects knn_vector mappings that would need the faiss/nmslib native libraries.
 *
 * <p>This node carries only the k-NN jars, not its JNI libraries. A faiss field (the 2.19
 * default engine when none is named) is accepted at mapping time, but the first flush then
 * throws UnsatisfiedLinkError on a write thread: the request hangs forever and the shard logs
 * a stack trace every few seconds. A 400 at mapping time is the useful failure instead.
 * Production clusters have the native engines; requiring {@code "engine": "lucene"} here is
 * stricter than production, never looser.
 */
public final class KnnEngineGuard extends Plugin implements ActionPlugin {

    @Override
    public List<ActionFilter> getActionFilters() {
        return List.of(new Filter());
    }

    private static final class Filter implements ActionFilter {
        @Override
        public int order() {
            return Integer.MIN_VALUE;
        }

        @Override
        public <Request extends ActionRequest, Response extends ActionResponse> void apply(
                Task task, String action, Request request, ActionListener<Response> listener,
                ActionFilterChain<Request, Response> chain) {
            List<String> bad = new ArrayList<>();
            try {
                for (BytesReference mapping : mappingsOf(request)) {
                    Map<String, Object> map = XContentHelper.convertToMap(mapping, false).v2();
                    collect(map, "", bad);
                }
            } catch (RuntimeException unparsable) {
                // not ours to report: OpenSearch rejects the malformed mapping itself
            }
            if (bad.isEmpty()) {
                chain.proceed(task, action, request, listener);
            } else {
                listener.onFailure(new IllegalArgumentException(
                    "knn_vector field(s) " + bad + " must use \"method\": {\"engine\": \"lucene\", ...}"
                        + " on this local node: it has no faiss/nmslib native libraries"));
            }
        }
    }

    private static List<BytesReference> mappingsOf(ActionRequest request) {
        List<BytesReference> out = new ArrayList<>();
        if (request instanceof CreateIndexRequest) {
            addString(out, ((CreateIndexRequest) request).mappings());
        } else if (request instanceof PutMappingRequest) {
            addString(out, ((PutMappingRequest) request).source());
        } else if (request instanceof PutIndexTemplateRequest) {
            addString(out, ((PutIndexTemplateRequest) request).mappings());
        } else if (request instanceof PutComposableIndexTemplateAction.Request) {
            var t = ((PutComposableIndexTemplateAction.Request) request).indexTemplate();
            addTemplate(out, t == null ? null : t.template());
        } else if (request instanceof PutComponentTemplateAction.Request) {
            var t = ((PutComponentTemplateAction.Request) request).componentTemplate();
            addTemplate(out, t == null ? null : t.template());
        }
        return out;
    }

    private static void addString(List<BytesReference> out, String json) {
        if (json != null && !json.isBlank()) {
            out.add(new BytesArray(json));
        }
    }

    private static void addTemplate(List<BytesReference> out, Template template) {
        if (template != null && template.mappings() != null) {
            out.add(template.mappings().uncompressed());
        }
    }

    /** Walks every object and array, so properties, multi-fields, nested and dynamic templates are all seen. */
    @SuppressWarnings("unchecked")
    private static void collect(Object node, String path, List<String> bad) {
        if (node instanceof Map) {
            Map<String, Object> map = (Map<String, Object>) node;
            if ("knn_vector".equals(map.get("type")) && !usesLucene(map)) {
                bad.add(path.isEmpty() ? "<root>" : path);
            }
            for (Map.Entry<String, Object> e : map.entrySet()) {
                String key = e.getKey();
                // structural keys are not part of a field's path
                boolean structural = key.equals("properties") || key.equals("fields")
                    || key.equals("mappings") || key.equals("_doc");
                String child = structural ? path : (path.isEmpty() ? key : path + "." + key);
                collect(e.getValue(), child, bad);
            }
        } else if (node instanceof List) {
            for (Object item : (List<Object>) node) {
                collect(item, path, bad);
            }
        }
    }

    private static boolean usesLucene(Map<String, Object> field) {
        if (field.containsKey("model_id")) {
            return false; // trained models are faiss/nmslib only
        }
        Object method = field.get("method");
        return method instanceof Map && "lucene".equals(((Map<?, ?>) method).get("engine"));
    }
}
