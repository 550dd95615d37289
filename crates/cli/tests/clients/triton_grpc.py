"""Unmodified tritonclient.grpc against an idunno node (run by serve.rs).

Usage: triton_grpc.py HOST:PORT TOKEN CA_PEM MODEL INPUT_NAME INPUT_NPY OUTPUT_NAME OUT_NPY

Over TLS checked against the cluster's authority, with the cluster's
token as the credential: liveness, readiness, metadata, one inference
(written to OUT_NPY), an unknown model, and a call without the token.
"""

import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

url, token, ca, model, in_name, in_npy, out_name, out_npy = sys.argv[1:9]
auth = {"authorization": f"Bearer {token}"}
# The node's certificate is named idunno-node, not after the address.
client = grpcclient.InferenceServerClient(
    url, ssl=True, root_certificates=ca, channel_args=[("grpc.ssl_target_name_override", "idunno-node")]
)
assert client.is_server_live(headers=auth), "not live"
assert client.is_server_ready(headers=auth), "not ready"
assert client.is_model_ready(model, headers=auth), "model not ready"
meta = client.get_model_metadata(model, headers=auth, as_json=True)
assert meta["name"] == model and meta["inputs"][0]["name"] == in_name, meta
x = np.load(in_npy)
inp = grpcclient.InferInput(in_name, list(x.shape), "FP32")
inp.set_data_from_numpy(x)
r = client.infer(model, [inp], headers=auth, client_timeout=30)
np.save(out_npy, r.as_numpy(out_name))
try:
    client.infer("no-such-model", [inp], headers=auth)
    print("unknown model: answered")
except InferenceServerException as e:
    print(f"unknown model: {e.status()} {e.message()}")
try:
    client.infer(model, [inp])
    print("without the token: answered")
except InferenceServerException as e:
    print(f"without the token: {e.status()}")
print("ok")
