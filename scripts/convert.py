"""Builds idunno's derived assets from packaged sources. Run by
scripts/assets inside its tools virtualenv (numpy, onnx, pillow, tokenizers,
onnxruntime from pinned wheels); never run directly by users.

  convert.py efficientnet <weights.pth> <out.onnx>
      EfficientNet-Lite0 as ONNX, built node by node from a legacy (pre-zip)
      torch.save state dict, read without torch by a restricted unpickler.
  convert.py photos <out-dir> <class-names.json> <model.onnx> <photo>=<label>...
      The photos preprocessed as the model expects (RGB, short side 256,
      centre crop 224, (x - 127) / 128, NCHW float32) into photos.npy, their
      labels (ImageNet class, -1 when unknown) into photos-labels.npy, and the
      check that the model gets the known ones right.
  convert.py minilm-embed <minilm-int8.onnx> <out.onnx>
      The int8 MiniLM with sentence-transformers' pooling appended (mean over
      the tokens the attention mask keeps, then L2 normalisation), so its
      output is one 384-vector per sentence: `sentence_embedding`.
  convert.py tiny <out.onnx> <out.npy>
  convert.py widen <out.onnx>
      A one-operator model (y = x + 1 over [batch, 16] f32) and 4096 inputs
      for it: what a query costs when the model costs nothing.
  convert.py minilm <tokenizer.json> <out-dir>
      Tokenized sentences for all-MiniLM-L6-v2: input_ids, attention_mask,
      token_type_ids as int64 [n, 128] .npy files, plus the sentences.

Every output is written beside its final name and renamed into place.
"""

import json
import os
import pickle
import sys
import tempfile

import numpy as np


def fail(msg):
    print(f"assets: {msg}", file=sys.stderr)
    sys.exit(1)


def write_atomic(target, data):
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target) or ".", prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise


def save_npy(target, array):
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    write_atomic(target, buf.getvalue())


# ---------------------------------------------------------------- torch file


class _Storage:
    """A torch storage named by the pickle; its bytes follow the pickle."""

    def __init__(self, dtype, numel):
        self.dtype, self.numel, self.array = dtype, numel, None


class _TensorRef:
    """A tensor view of a storage, resolved once the storages are read."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def resolve(self):
        a = self.storage.array
        item = a.itemsize
        view = np.lib.stride_tricks.as_strided(
            a[self.offset :], shape=self.size, strides=tuple(s * item for s in self.stride)
        )
        return np.array(view)  # a contiguous copy: the stem weight is a strided view


_STORAGE_TYPES = {"FloatStorage": np.float32, "LongStorage": np.int64, "DoubleStorage": np.float64}


def _storage_type(name):
    return lambda: _STORAGE_TYPES[name]


class _TorchLegacy(pickle.Unpickler):
    """Unpickles a legacy torch.save state dict and nothing else: the only
    callables it hands out build placeholders, so the file cannot run code."""

    def __init__(self, f):
        super().__init__(f)
        self.storages = {}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            import collections

            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, size, stride, *rest: _TensorRef(storage, offset, size, stride)
        if module == "torch" and name in _STORAGE_TYPES:
            return name
        raise pickle.UnpicklingError(f"refusing {module}.{name}")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel = pid[:5]
        if kind != "storage" or storage_type not in _STORAGE_TYPES:
            raise pickle.UnpicklingError(f"unexpected persistent id {pid[:2]}")
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views are not supported")
        if key not in self.storages:
            self.storages[key] = _Storage(_STORAGE_TYPES[storage_type], numel)
        return self.storages[key]


def load_legacy_state_dict(path):
    with open(path, "rb") as f:
        magic = pickle.load(f)
        if magic != 0x1950A86A20F9469CFC6C:
            fail(f"{path} is not a legacy torch.save file (magic {magic!r})")
        pickle.load(f)  # protocol version
        pickle.load(f)  # system info
        up = _TorchLegacy(f)
        state = up.load()
        keys = pickle.load(f)
        for key in keys:
            s = up.storages[key]
            numel = int.from_bytes(f.read(8), "little")
            if numel != s.numel:
                fail(f"{path}: storage {key} holds {numel} elements, the pickle said {s.numel}")
            data = f.read(numel * np.dtype(s.dtype).itemsize)
            s.array = np.frombuffer(data, dtype=np.dtype(s.dtype).newbyteorder("<")).astype(s.dtype)
    return {k: v.resolve() for k, v in state.items()}


# ---------------------------------------------------------- EfficientNet-Lite0

# (repeats, kernel, stride, expand ratio, in channels, out channels)
LITE0_BLOCKS = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
BN_EPS = 1e-3
SIZE = 224


def same_pads(size, kernel, stride):
    """TensorFlow "SAME" padding: output = ceil(size / stride); any odd
    extra row or column goes at the end (bottom/right)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


class Graph:
    def __init__(self):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.inits = [], []

    def const(self, name, array):
        self.inits.append(self.numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op, inputs, output, **attrs):
        self.nodes.append(self.helper.make_node(op, inputs, [output], name=output, **attrs))
        return output


def efficientnet(weights_path, out_path):
    import onnx
    from onnx import TensorProto, helper

    w = load_legacy_state_dict(weights_path)
    g = Graph()
    g.const("zero", np.array(0.0, np.float32))
    g.const("six", np.array(6.0, np.float32))

    def conv_bn(x, conv, bn, size, kernel, stride, groups, relu6, name):
        """Conv with its batch norm folded into weights and bias."""
        weight = w[f"{conv}.weight"].astype(np.float64)
        gamma, beta = w[f"{bn}.weight"], w[f"{bn}.bias"]
        mean, var = w[f"{bn}.running_mean"], w[f"{bn}.running_var"]
        scale = gamma / np.sqrt(var.astype(np.float64) + BN_EPS)
        folded_w = (weight * scale[:, None, None, None]).astype(np.float32)
        folded_b = (beta - mean * scale).astype(np.float32)
        out, lo, hi = same_pads(size, kernel, stride)
        y = g.node(
            "Conv",
            [x, g.const(f"{name}.w", folded_w), g.const(f"{name}.b", folded_b)],
            f"{name}.conv",
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=[lo, lo, hi, hi],
            group=groups,
        )
        if relu6:
            y = g.node("Clip", [y, "zero", "six"], f"{name}.relu6")
        return y, out

    x, size = conv_bn("images", "_conv_stem", "_bn0", SIZE, 3, 2, 1, True, "stem")
    index = 0
    for repeats, kernel, stride, expand, cin, cout in LITE0_BLOCKS:
        for r in range(repeats):
            s, c = (stride, cin) if r == 0 else (1, cout)
            b = f"_blocks.{index}"
            inp = x
            if expand != 1:
                x, _ = conv_bn(x, f"{b}._expand_conv", f"{b}._bn0", size, 1, 1, 1, True, f"b{index}.expand")
            channels = c * expand
            x, new_size = conv_bn(
                x, f"{b}._depthwise_conv", f"{b}._bn1", size, kernel, s, channels, True, f"b{index}.dw"
            )
            x, _ = conv_bn(x, f"{b}._project_conv", f"{b}._bn2", new_size, 1, 1, 1, False, f"b{index}.project")
            if s == 1 and c == cout:
                x = g.node("Add", [x, inp], f"b{index}.skip")
            size = new_size
            index += 1
    if f"_blocks.{index}._depthwise_conv.weight" in w or f"_blocks.{index - 1}._depthwise_conv.weight" not in w:
        fail(f"{weights_path}: the weights do not have the {index} blocks of EfficientNet-Lite0")
    x, _ = conv_bn(x, "_conv_head", "_bn1", size, 1, 1, 1, True, "head")
    x = g.node("GlobalAveragePool", [x], "pool")
    x = g.node("Flatten", [x], "flat", axis=1)
    x = g.node("Gemm", [x, g.const("fc.w", w["_fc.weight"]), g.const("fc.b", w["_fc.bias"])], "logits", transB=1)
    g.node("Softmax", [x], "probabilities", axis=1)

    graph = helper.make_graph(
        g.nodes,
        "efficientnet_lite0",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 1000])],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="idunno-assets")
    model.ir_version = 8
    onnx.checker.check_model(model)
    write_atomic(out_path, model.SerializeToString())


# ----------------------------------------------------------------- photos


def preprocess(path):
    from PIL import Image

    img = Image.open(path).convert("RGB")
    w, h = img.size
    scale = 256 / min(w, h)
    img = img.resize((max(256, round(w * scale)), max(256, round(h * scale))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - SIZE) // 2, (h - SIZE) // 2
    img = img.crop((left, top, left + SIZE, top + SIZE))
    x = (np.asarray(img, dtype=np.float32) - 127.0) / 128.0
    return x.transpose(2, 0, 1)


def photos(out_dir, names_path, model_path, specs):
    import onnxruntime as ort

    names = json.load(open(names_path))
    paths, labels, accepted = [], [], []
    for spec in specs:
        path, _, want = spec.partition("=")
        paths.append(path)
        ok = [int(v) for v in want.split(",")] if want else []
        accepted.append(ok)
        labels.append(ok[0] if ok else -1)
    batch = np.stack([preprocess(p) for p in paths]).astype(np.float32)
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    probs = sess.run(None, {"images": batch})[0]
    for path, p, ok in zip(paths, probs, accepted):
        top = int(p.argmax())
        print(f"assets:   {os.path.basename(path)} -> {top} {names[str(top)]} ({p[top]:.2f})", flush=True)
        if ok and top not in ok:
            fail(f"EfficientNet-Lite0 check: {path} predicted {top}, expected one of {ok}; the conversion is wrong")
    # A label stands for the class the model must give; where a photo
    # matches several (a tabby is also a tiger cat), the model's own pick
    # among the accepted ones is the label.
    labels = [int(p.argmax()) if ok else -1 for p, ok in zip(probs, accepted)]
    save_npy(os.path.join(out_dir, "photos-labels.npy"), np.array(labels, dtype=np.int64))
    save_npy(os.path.join(out_dir, "photos.npy"), batch)
    write_atomic(os.path.join(out_dir, "photos.txt"), "".join(os.path.basename(p) + "\n" for p in paths).encode())


# ----------------------------------------------------------------- MiniLM

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "The cat sits outside.",
    "The new movie is awesome.",
    "The dog plays in the garden.",
    "A distributed file system keeps four copies of every file.",
    "Raft elects a leader when the old one stops sending heartbeats.",
    "The coffee in this cup is an espresso.",
    "Failure detectors trade detection time against false positives.",
]


def minilm(tokenizer_path, out_dir):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_path)
    enc = tok.encode_batch(SENTENCES)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    types = np.array([e.type_ids for e in enc], dtype=np.int64)
    if ids.shape != (len(SENTENCES), 128):
        fail(f"{tokenizer_path}: expected sentences padded to 128 tokens, got {ids.shape}")
    save_npy(os.path.join(out_dir, "input_ids.npy"), ids)
    save_npy(os.path.join(out_dir, "attention_mask.npy"), mask)
    save_npy(os.path.join(out_dir, "token_type_ids.npy"), types)
    write_atomic(os.path.join(out_dir, "sentences.txt"), "".join(s + "\n" for s in SENTENCES).encode())


def minilm_embed(src, out_path):
    import onnx
    from onnx import TensorProto, helper

    m = onnx.load(src)
    g = m.graph
    if [o.name for o in g.output] != ["last_hidden_state"]:
        fail(f"{src}: expected one output last_hidden_state, found {[o.name for o in g.output]}")
    g.initializer.append(onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), "pool.axis1"))
    g.initializer.append(onnx.numpy_helper.from_array(np.array([2], dtype=np.int64), "pool.axis2"))
    g.initializer.append(onnx.numpy_helper.from_array(np.array(1e-9, dtype=np.float32), "pool.eps"))
    g.node.extend(
        [
            helper.make_node("Cast", ["attention_mask"], ["pool.mask"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["pool.mask", "pool.axis2"], ["pool.mask3"]),
            helper.make_node("Mul", ["last_hidden_state", "pool.mask3"], ["pool.masked"]),
            helper.make_node("ReduceSum", ["pool.masked", "pool.axis1"], ["pool.sum"], keepdims=0),
            helper.make_node("ReduceSum", ["pool.mask", "pool.axis1"], ["pool.count"], keepdims=1),
            helper.make_node("Max", ["pool.count", "pool.eps"], ["pool.count_safe"]),
            helper.make_node("Div", ["pool.sum", "pool.count_safe"], ["pool.mean"]),
            helper.make_node("LpNormalization", ["pool.mean"], ["sentence_embedding"], axis=1, p=2),
        ]
    )
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", 384]))
    onnx.checker.check_model(m)
    write_atomic(out_path, m.SerializeToString())


def tiny(model_path, inputs_path):
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])],
        "tiny_add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])],
        [onnx.numpy_helper.from_array(np.ones(16, dtype=np.float32), "one")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], producer_name="idunno-assets")
    m.ir_version = 8
    onnx.checker.check_model(m)
    write_atomic(model_path, m.SerializeToString())
    x = np.random.default_rng(7).standard_normal((4096, 16)).astype(np.float32)
    save_npy(inputs_path, x)


def widen(model_path):
    """y = x repeated 4096 times along its second axis, whose length is
    free: a cheap model whose outputs (256 KiB per input of 16 floats) a
    job cannot bound when it is added."""
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Tile", ["x", "repeats"], ["y"])],
        "widen",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "width"])],
        [onnx.numpy_helper.from_array(np.array([1, 4096], dtype=np.int64), "repeats")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], producer_name="idunno-assets")
    m.ir_version = 8
    onnx.checker.check_model(m)
    write_atomic(model_path, m.SerializeToString())


def main():
    what, args = sys.argv[1], sys.argv[2:]
    if what == "efficientnet":
        efficientnet(*args)
    elif what == "photos":
        photos(args[0], args[1], args[2], args[3:])
    elif what == "tiny":
        tiny(*args)
    elif what == "widen":
        widen(*args)
    elif what == "minilm-embed":
        minilm_embed(*args)
    elif what == "minilm":
        minilm(*args)
    else:
        fail(f"convert.py: unknown step {what}")


if __name__ == "__main__":
    main()
