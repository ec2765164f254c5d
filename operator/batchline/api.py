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

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"

TRITON_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
