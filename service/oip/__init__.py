"""The Open Inference Protocol (KServe V2 / Triton HTTP REST) under ``/v2``.

    GET  /v2                                              server metadata
    GET  /v2/health/live, /v2/health/ready                200; ready: 503 while loading
    GET  /v2/models/{name}[/versions/{version}]           model metadata
    GET  /v2/models/{name}[/versions/{version}]/ready     200; 503 while loading
    POST /v2/models/{name}[/versions/{version}]/infer     MC dropout inference

The model name is the store name of the served tag (``uq-classifier``), the
version its store version; any other name or version: 404. One input tensor
(any name): a numeric datatype of the protocol, shape ``[batch, *input_shape]``
or ``[batch, size]``, data flat or nested in row-major order, or binary (the
binary tensor data extension). Output tensors are named as the prediction's
fields (:data:`OUTPUTS`, with the N each row used and each row's
``feedback_token``, which ``POST /feedback`` redeems); the request's ``outputs``
selects a subset, its ``parameters`` carry what ``/predict`` reads (``n_samples``, an
integer or "auto"; ``latency_budget_ms`` and ``min_samples``; ``seed``;
``risk_threshold``), and the response's ``parameters`` report the N used, whether a
budget lowered it, the model tag and the risk policy applied. The classification
extension (``"classification": k`` in an output's parameters) answers the top k
classes as BYTES ``"score:index:label"``.

Errors are ``{"error": message}``: 400 for a bad request (naming the field), 404
for an unknown model, version or V2 endpoint, 405, 413 for a body over
UQ_MAX_BODY_BYTES, 415 for an unknown Content-Encoding, 429 with Retry-After when
the service is overloaded or a latency budget cannot be met, 503 while the model loads.

A Starlette app of its own, mounted on the BentoML service (a route with path
parameters cannot be a ``@bentoml.api``), in three rooms: ``types`` (the protocol's
JSON objects and outputs), ``codec`` (request bodies to arrays, predictions to output
tensors) and ``app`` (the routes). The service hands the app its predictor and its
predictions; nothing here imports TensorFlow.
"""
