"""Continuous requests from unmodified tritonclient.http (run by serve.rs).

Usage: triton_load.py HOST:PORT TOKEN CA_PEM MODEL INPUT_NAME INPUT_NPY OUTPUT_NAME WANT_NPY SECONDS IN_FLIGHT

Keeps IN_FLIGHT requests in flight for SECONDS, each the input in
INPUT_NPY; every answer must equal WANT_NPY (to 1e-5). Prints one JSON
line: answers, correct, failed, and the first few errors.
"""

import json
import sys
import time

import numpy as np
import tritonclient.http as httpclient
from tritonclient.http import InferenceServerClientPlugin

url, token, ca, model, in_name, in_npy, out_name, want_npy, seconds, in_flight = sys.argv[1:11]
seconds, in_flight = float(seconds), int(in_flight)


class Bearer(InferenceServerClientPlugin):
    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {token}"


client = httpclient.InferenceServerClient(
    url, ssl=True, insecure=True, ssl_options={"ca_certs": ca}, concurrency=in_flight, network_timeout=120.0
)
client.register_plugin(Bearer())
x = np.load(in_npy)
want = np.load(want_npy)
inp = httpclient.InferInput(in_name, list(x.shape), "FP32")
inp.set_data_from_numpy(x)

answers = correct = failed = 0
errors = []
pending = []
end = time.monotonic() + seconds
while time.monotonic() < end or pending:
    while time.monotonic() < end and len(pending) < in_flight:
        pending.append(client.async_infer(model, [inp]))
    done = pending.pop(0)
    try:
        got = done.get_result().as_numpy(out_name)
        answers += 1
        if got.shape == want.shape and np.abs(got - want).max() <= 1e-5:
            correct += 1
    except Exception as e:  # a failed request: counted and shown
        failed += 1
        if len(errors) < 5:
            errors.append(str(e))
print(json.dumps({"answers": answers, "correct": correct, "failed": failed, "errors": errors}))
