"""Unmodified tritonclient.http against an idunno node (run by serve.rs).

Usage: triton_http.py HOST:PORT TOKEN CA_PEM MODEL INPUT_NAME INPUT_NPY OUTPUT_NAME OUT_PREFIX

Checks liveness, readiness and the model's metadata, then runs the input
twice (outputs as raw bytes, then as JSON) and writes OUT_PREFIX-binary.npy
and OUT_PREFIX-json.npy; asks for an unknown model and prints the error.
"""

import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.http import InferenceServerClientPlugin
from tritonclient.utils import InferenceServerException

url, token, ca, model, in_name, in_npy, out_name, out_prefix = sys.argv[1:9]


class Bearer(InferenceServerClientPlugin):
    """The cluster's HTTP token on every request."""

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {token}"


# The node's certificate is checked against the cluster's authority; its
# name (idunno-node) is not the address dialled, so the name is not.
client = httpclient.InferenceServerClient(url, ssl=True, insecure=True, ssl_options={"ca_certs": ca})
client.register_plugin(Bearer())
assert client.is_server_live(), "not live"
assert client.is_server_ready(), "not ready"
assert client.is_model_ready(model), "model not ready"
meta = client.get_model_metadata(model)
assert meta["name"] == model and meta["inputs"][0]["name"] == in_name, meta

x = np.load(in_npy)
inp = httpclient.InferInput(in_name, list(x.shape), np.dtype(x.dtype).name.upper().replace("FLOAT32", "FP32").replace("FLOAT64", "FP64"))
inp.set_data_from_numpy(x)
binary = client.infer(model, [inp], request_id="b").as_numpy(out_name)
asked = [httpclient.InferRequestedOutput(out_name, binary_data=False)]
inp.set_data_from_numpy(x, binary_data=False)
as_json = client.infer(model, [inp], outputs=asked).as_numpy(out_name)
np.save(f"{out_prefix}-binary.npy", binary)
np.save(f"{out_prefix}-json.npy", as_json)
try:
    client.infer("no-such-model", [inp])
    print("unknown model: answered")
except InferenceServerException as e:
    print(f"unknown model: {e}")
print("ok")
