"""Float variants of a shipped int8 (QDQ) expression graph, and how far their results are from it.

Why: v3's int8 graph scores differently on CPUs with AMX/VNNI and on AVX2-only CPUs (ONNX Runtime picks other
int8 kernels, with other rounding), so an index built on one machine and searched on another gives other
answers. A float graph computes the same up to float32 rounding everywhere; this measures what it costs.

- :func:`dequantize_qdq`: the int8 graph's weights dequantised into float32 initialisers and every
  activation QuantizeLinear/DequantizeLinear pair removed (a ReLU put back where a uint8 quantiser with zero
  point 0 had absorbed it): the float32 network *of the shipped weights*
  (``(q - zero_point) * scale``; the float weights before quantisation are not in the file, they differ from
  these by at most half a quantisation step).
- :func:`to_fp16`: that float graph in float16 (``onnxconverter-common``, inputs and outputs kept float32):
  ``"compute"`` converts every op; ``"weights"`` stores the weights as float16 and casts them to float32 at
  load (half the file, float32 arithmetic).
- :func:`compare`: embeddings of real aligned faces under two graphs: the largest per-face distance between
  the two embeddings and the largest change of a pairwise distance (what search ranks by).

    python -m training.float_graph --out-dir /tmp/v3-float [--compare N]

writes ``expression-v3.fp32.onnx``, ``.fp16.onnx`` (compute) and ``.fp16w.onnx`` (weights) and, with
``--compare N``, prints the differences on N FER2013Test crops (landmarks by the run-time crop detector)
and :func:`kernel_sensitivity` of each graph.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def dequantize_qdq(int8_path: str | Path, out_path: str | Path) -> Path:
    """Float32 copy of a QDQ-quantised ONNX graph (see module docstring); returns ``out_path``.

    Raises ``ValueError`` for a graph whose DequantizeLinear reads neither an initialiser nor a
    QuantizeLinear (not the QDQ layout ONNX Runtime's static quantisation writes)."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(int8_path))
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    rename: dict[str, str] = {}  # DequantizeLinear output of an activation -> the float tensor it stands for
    new_inits, relus, drop = [], [], set()
    for n in g.node:
        if n.op_type != "DequantizeLinear":
            continue
        x, scale, zp = (list(n.input) + [""])[:3]
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        if x in inits:
            q = numpy_helper.to_array(inits[x]).astype(np.float32)
            s = numpy_helper.to_array(inits[scale]).astype(np.float32)
            z = numpy_helper.to_array(inits[zp]).astype(np.float32) if zp else np.zeros_like(s)
            if s.ndim == 1 and q.ndim > 1:  # per-channel along ``axis``
                shape = [1] * q.ndim
                shape[axis] = -1
                s, z = s.reshape(shape), z.reshape(shape)
            new_inits.append(numpy_helper.from_array((q - z) * s, n.output[0]))
        elif x in producer and producer[x].op_type == "QuantizeLinear":
            zero = numpy_helper.to_array(inits[zp]) if zp in inits else np.zeros(1, np.uint8)
            if zero.dtype == np.uint8 and not zero.any():
                # a uint8 range from 0: the quantiser clamps at 0 and so stands for a ReLU it absorbed
                relus.append(helper.make_node("Relu", [producer[x].input[0]], [n.output[0]], n.name + "_relu"))
            else:
                rename[n.output[0]] = producer[x].input[0]
            drop.add(id(producer[x]))
        else:
            raise ValueError(f"{int8_path}: DequantizeLinear {n.name!r} reads {x!r}, not a weight or a QuantizeLinear")
        drop.add(id(n))
    nodes = []
    for n in g.node:  # in order, each ReLU where its DequantizeLinear was
        if id(n) not in drop:
            nodes.append(n)
        elif n.op_type == "DequantizeLinear":
            nodes += [r for r in relus if r.output[0] == n.output[0]]
    for n in nodes:
        for i, name in enumerate(n.input):
            while name in rename:
                name = rename[name]
            n.input[i] = name
    for o in g.output:
        if o.name in rename:
            raise ValueError(f"{int8_path}: graph output {o.name!r} is a DequantizeLinear of an activation")
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in nodes for i in n.input}
    keep = [i for i in g.initializer if i.name in used] + new_inits
    del g.initializer[:]
    g.initializer.extend(keep)
    del g.value_info[:]
    onnx.checker.check_model(m)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(out_path))
    return Path(out_path)


def to_fp16(float_path: str | Path, out_path: str | Path, mode: str = "compute") -> Path:
    """Float16 copy of a float32 graph (inputs and outputs stay float32). ``mode``: ``"compute"`` (every op
    in float16) or ``"weights"`` (float16 initialisers cast to float32 in the graph: float32 arithmetic).
    Raises ``ValueError`` for another mode."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load(str(float_path))
    if mode == "compute":
        from onnxconverter_common import float16

        m = float16.convert_float_to_float16(m, keep_io_types=True)
    elif mode == "weights":
        g = m.graph
        casts, inits = [], []
        for init in g.initializer:
            a = numpy_helper.to_array(init)
            if a.dtype == np.float32 and a.size > 16:
                half = init.name + "_fp16"
                inits.append(numpy_helper.from_array(a.astype(np.float16), half))
                casts.append(helper.make_node("Cast", [half], [init.name], to=TensorProto.FLOAT))
            else:
                inits.append(init)
        del g.initializer[:]
        g.initializer.extend(inits)
        nodes = casts + list(g.node)
        del g.node[:]
        g.node.extend(nodes)
    else:
        raise ValueError(f"mode must be 'compute' or 'weights', got {mode!r}")
    onnx.checker.check_model(m)
    onnx.save(m, str(out_path))
    return Path(out_path)


def compare(model_a: str | Path, model_b: str | Path, faces: np.ndarray) -> dict[str, float]:
    """Embeddings of ``faces`` ``(N, 48, 48)`` (aligned, pixels 0..255) under two graphs (ONNX Runtime, 1
    thread): ``{"max_embedding_distance": max_i ||a_i - b_i||, "median_embedding_distance",
    "max_pair_distance_change": max_ij |d_a(i, j) - d_b(i, j)|, "top1_changed": share of faces whose nearest
    other face changes}`` (Euclidean, unit-norm embeddings, distances in [0, 2])."""
    from facial_search.embedders.expression import ExpressionEmbedder

    ea = ExpressionEmbedder(model_file=model_a).run(faces)[0].astype(np.float64)
    eb = ExpressionEmbedder(model_file=model_b).run(faces)[0].astype(np.float64)
    per = np.linalg.norm(ea - eb, axis=1)
    da = np.linalg.norm(ea[:, None] - ea[None], axis=2)
    db = np.linalg.norm(eb[:, None] - eb[None], axis=2)
    change = float(np.abs(da - db).max())
    np.fill_diagonal(da, np.inf)
    np.fill_diagonal(db, np.inf)
    return {
        "max_embedding_distance": float(per.max()),
        "median_embedding_distance": float(np.median(per)),
        "max_pair_distance_change": change,
        "top1_changed": float((da.argmin(1) != db.argmin(1)).mean()),
    }


def _embed(model: str | Path, faces: np.ndarray, optimise: bool) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimise else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    e = sess.run(None, {"image": np.ascontiguousarray(faces, np.float32)})[0].astype(np.float64)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def kernel_sensitivity(model: str | Path, faces: np.ndarray) -> dict[str, float]:
    """How much a graph's embeddings depend on which kernels run it, on one CPU: ONNX Runtime with every
    graph optimisation (int8: fused QLinearConv kernels) against none (int8: each DequantizeLinear, float
    Conv, QuantizeLinear as written) -- a stand-in for another CPU's kernels, which this machine cannot run.
    ``{"max_embedding_distance", "max_pair_distance_change"}`` as in :func:`compare`."""
    a, b = _embed(model, faces, True), _embed(model, faces, False)
    da = np.linalg.norm(a[:, None] - a[None], axis=2)
    db = np.linalg.norm(b[:, None] - b[None], axis=2)
    return {"max_embedding_distance": float(np.linalg.norm(a - b, axis=1).max()),
            "max_pair_distance_change": float(np.abs(da - db).max())}  # fmt: skip


def ferplus_faces(n: int) -> np.ndarray:
    """``(n, 48, 48) float32``: the first ``n`` FER2013Test crops aligned as at run time (the crop detector's
    landmarks; the whole crop when none is found)."""
    from facial_search.embedders.expression import ExpressionEmbedder
    from facial_search.io.images import load_image
    from facial_search.vision.faces import FaceFinder, FaceFinderOptions, detect_in_crop, whole_image_face

    from .prepare import data_dir, read_labels

    names, _ = read_labels("FER2013Test")
    emb = ExpressionEmbedder()
    out = []
    with FaceFinder.create_from_options(FaceFinderOptions(max_faces=1)) as finder:
        for name in names[:n]:
            rgb = load_image(data_dir() / "FER2013Test" / name)
            face = detect_in_crop(finder, rgb) or whole_image_face(rgb)
            out.append(emb.faces_input(rgb, [face])[0])
    return np.stack(out)


def main(argv: list[str] | None = None) -> None:
    import json
    import os

    from facial_search.embedders.expression import MODEL_FILE, model_path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help=f"the int8 graph (default: the shipped {MODEL_FILE})")
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--compare", type=int, default=0, metavar="N", help="compare on N FER2013Test crops")
    a = ap.parse_args(argv)
    src = a.model or Path(str(model_path()))
    stem = src.stem
    fp32 = dequantize_qdq(src, a.out_dir / f"{stem}.fp32.onnx")
    fp16 = to_fp16(fp32, a.out_dir / f"{stem}.fp16.onnx", "compute")
    fp16w = to_fp16(fp32, a.out_dir / f"{stem}.fp16w.onnx", "weights")
    for p in (src, fp32, fp16, fp16w):
        print(f"{p}: {p.stat().st_size / 1024:.0f} KiB")
    if a.compare:
        os.environ.setdefault("FACIAL_SEARCH_MODELS", str(Path(__file__).resolve().parents[2] / "shared" / "models"))
        faces = ferplus_faces(a.compare)
        for name, other in (("int8 vs fp32", (src, fp32)), ("fp16 vs fp32", (fp16, fp32)),
                            ("fp16w vs fp32", (fp16w, fp32))):  # fmt: skip
            print(name, json.dumps({k: round(v, 6) for k, v in compare(*other, faces).items()}))
        for name, p in (("int8", src), ("fp32", fp32), ("fp16", fp16), ("fp16w", fp16w)):
            res = kernel_sensitivity(p, faces)
            print(
                f"{name} optimised vs unoptimised kernels", json.dumps({k: float(f"{v:.3g}") for k, v in res.items()})
            )


if __name__ == "__main__":
    main()
