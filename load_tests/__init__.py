"""Load tests of the ChatGLM Triton server: one load-generation library and its front ends.

Library: ``workload`` (request shapes, with the prompt sets of ``prompts``), ``stats``
(records, percentiles, tokens/s, TTFT, ITL), ``streaming`` (gRPC and HTTP/SSE transports
over the client library), ``runner`` (client processes, closed/open loops, static
batches, soak samples), ``report`` (the benchmark's files). Front ends: ``locustfile``
(``make load-test``, with ``summarize``), ``sweep`` (the serving benchmark,
``--protocol grpc|http``), ``http_bench`` (the same, in its earlier command line and
files) and ``soak_decoder`` (Locust soak of ``chatglm_decoder``). See README.md.
"""
