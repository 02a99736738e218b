"""Float copies of the shipped int8 expression graph (``training/float_graph.py``): the float32 network of the
shipped weights (ReLUs restored), a float16 copy, and the measure of how much each depends on its kernels."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import require_shared

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxconverter_common")

from facial_search.embedders.expression import ExpressionEmbedder, model_path  # noqa: E402
from training import float_graph as fg  # noqa: E402


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    out = tmp_path_factory.mktemp("float")
    src = str(model_path())
    fp32 = fg.dequantize_qdq(src, out / "v3.fp32.onnx")
    return src, fp32, fg.to_fp16(fp32, out / "v3.fp16w.onnx", "weights"), fg.to_fp16(fp32, out / "v3.fp16.onnx")


@pytest.fixture(scope="module")
def faces():
    require_shared()
    return fg.ferplus_faces(24)  # real FER2013Test crops, aligned as at run time


def test_float_graph_has_no_quantisation_and_its_relus_back(graphs):
    _, fp32, fp16w, _ = graphs
    ops = [n.op_type for n in onnx.load(str(fp32)).graph.node]
    assert "QuantizeLinear" not in ops and "DequantizeLinear" not in ops
    assert ops.count("Conv") == 7 and ops.count("Relu") >= 7  # one after each convolution (the quantisers held them)
    weights = [i for i in onnx.load(str(fp16w)).graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert len(weights) >= 7
    emb = ExpressionEmbedder(model_file=fp32)  # the embedder's interface: image -> embedding, probs
    e, p = emb.run(np.zeros((2, 48, 48), np.float32) + 128)
    assert e.shape == (2, 64) and p.shape == (2, 8)


def test_float_copies_embed_real_faces_like_the_int8_graph(graphs, faces):
    src, fp32, fp16w, fp16 = graphs
    int8 = fg.compare(src, fp32, faces)
    # the same network: int8 rounding moves a face by ~0.01 (median), never by a face's typical distance
    assert int8["median_embedding_distance"] < 0.03 and int8["max_embedding_distance"] < 0.2
    for half in (fp16w, fp16):
        assert fg.compare(half, fp32, faces)["max_embedding_distance"] < 5e-3
    # float arithmetic barely depends on the kernels that run it; int8's does (10x the 1e-3 target here)
    assert fg.kernel_sensitivity(fp32, faces)["max_embedding_distance"] < 1e-5
    assert fg.kernel_sensitivity(src, faces)["max_embedding_distance"] > 1e-4


def test_dequantize_refuses_a_graph_that_is_not_qdq(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    s = helper.make_tensor("s", TensorProto.FLOAT, [], [1.0])
    g = helper.make_graph([helper.make_node("DequantizeLinear", ["x", "s"], ["y"], "dq")], "g", [x], [y], [s])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ValueError, match="not a weight or a QuantizeLinear"):
        fg.dequantize_qdq(path, tmp_path / "out.onnx")
