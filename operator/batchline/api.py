"""Names of the LLMDeployment API and of the labels and annotations Batchline owns."""

GROUP = "batchline.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "LLMDeployment"
PLURAL = "llmdeployments"

FIELD_MANAGER = "batchline-operator"

LABEL_LLMD = f"{GROUP}/llmdeployment"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "batchline"
ANNOTATION_APPLIED_HASH = f"{GROUP}/applied-hash"
ANNOTATION_BUILD_KEY = f"{GROUP}/build-key"  # on Triton pod templates: the build they serve
LABEL_BUILD_KEY = f"{GROUP}/build-key"  # on build Jobs and their pods
LABEL_CACHE = f"{GROUP}/model-cache"  # on the cache catalogue ConfigMap and cache clean-up Jobs
ANNOTATION_BUILD_ATTEMPT = f"{GROUP}/build-attempt"

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"

TRITON_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
# Where InferencePools are served, each Triton pod also answers OpenAI requests here (the gateway beside it).
OPENAI_PORT = 8080
