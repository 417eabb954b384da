"""OpenAI-compatible HTTP server and web page over `specvlm.api` (`specvlm serve`).

Reading order: `app.py` (routes) -> `protocol.py` (the OpenAI format) -> `worker.py` (the one
decoding thread and its bounded queue) -> `images.py` (data URLs, the allowed folder) ->
`stops.py`. Needs the `serve` extra (fastapi, uvicorn, prometheus-client).
"""
