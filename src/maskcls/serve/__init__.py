"""``maskcls serve``: a trained run as a web service (JSON API) and a web page.

Layout: :mod:`.limits` (what a request may cost and the errors it gets), :mod:`.model`
(the served model: ONNX Runtime sessions — one or several streams — or torch, preprocessing,
answers), :mod:`.exported` (serving a file ``maskcls export`` wrote: ``--model``, ``--int8``), :mod:`.images`
(upload decoding and preprocessing, off the event loop), :mod:`.batcher` (micro-batching),
:mod:`.app` (the FastAPI application), :mod:`.origins` (Host and Origin checks),
:mod:`.connections` (time limits on slow clients, connections per client), :mod:`.server`
(binding and uvicorn), ``static/`` (the self-contained page).
"""
