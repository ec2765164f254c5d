"""`batchline gateway`: one OpenAI-compatible endpoint in front of every LLMDeployment's Triton pods.

The model id is the LLMDeployment's name (`namespace/name` when the gateway serves several
namespaces). Requests go over Triton's gRPC streaming API to the ready pod with the fewest requests
in flight; requests for a model with no ready pod (or none with room) are held up to a deadline.

Modules: `routing` (the pure choice of an endpoint, and the in-memory table with its wait queue),
`discovery` (LLMDeployments and EndpointSlices to that table: pure functions, plus a watch thread),
`openai_api` (request validation and response bodies, pure), `triton` (the gRPC upstream), `server`
(aiohttp), `metrics`, `auth`. Nothing here imports the operator's controller.
"""
