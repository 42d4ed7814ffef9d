"""ONNX files beside a sentence-transformers export (`gembed export --onnx`), fp32 and int8.

    <output>/onnx/model.onnx        fp32: input_ids, attention_mask (int64, batch x length) ->
                                    last_hidden_state, sentence_embedding
    <output>/onnx/model_qint8.onnx  the same graph with int8 weights (onnxruntime's dynamic
                                    quantisation: int8 weights per output channel, activations
                                    quantised per batch)

`last_hidden_state` (the first output) is what sentence-transformers' ONNX backend reads from
`onnx/model.onnx` (`SentenceTransformer(DIR, backend="onnx")`: optimum's
ORTModelForFeatureExtraction runs the Transformer module alone, then the Pooling, Dense and
Normalize modules run in torch). `sentence_embedding` is the whole pipeline (mean pooling over the
mask, the Dense head, L2 normalisation when the model normalises): the embedding itself for
onnxruntime users and servers that run one graph.

Exported with torch.onnx's dynamo exporter from the directory's own transformers model, so the
graph is exactly what transformers loads (bidirectional decoders included). Not optimum: its
exporter stops at the transformer (no pooling or Dense head in the graph), and its current release
(optimum-onnx 0.1.0) requires transformers < 4.58. Not the TorchScript exporter (dynamo=False): it
traced the attention mask's Python branches for the example batch and was off by 0.1 on others.
"""

from __future__ import annotations

import os

from gembed.formats import hf
from gembed.formats.sentence_transformers import read_sentence_transformers

ONNX_SUBDIR = "onnx"
FP32_FILE = "model.onnx"
INT8_FILE = "model_qint8.onnx"
# A protobuf file holds at most 2 GiB: larger models keep their weights in external data files.
_PROTOBUF_LIMIT = 2 ** 31 - 2 ** 26


def _pipeline(transformer, dense, normalize):
  """torch module: the transformer, then gembed's pooling, head and normalisation."""
  import torch

  class Pipeline(torch.nn.Module):

    def __init__(self):
      super().__init__()
      self.transformer = transformer
      self.dense = None
      if dense is not None:
        kernel, bias = dense
        self.dense = torch.nn.Linear(*kernel.shape, bias=bias is not None)
        self.dense.weight.data = torch.from_numpy(kernel.T.copy())
        if bias is not None:
          self.dense.bias.data = torch.from_numpy(bias.copy())

    def forward(self, input_ids, attention_mask):
      hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
      weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
      pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
      if self.dense is not None:
        pooled = self.dense(pooled)
      if normalize:
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
      return hidden, pooled

  return Pipeline().eval()


def write_onnx(output: str) -> list[str]:
  """Writes onnx/model.onnx and onnx/model_qint8.onnx for the sentence-transformers directory
  `output` (written by `write_sentence_transformers`); returns their paths."""
  import torch
  import transformers
  from onnxruntime.quantization import QuantType, quantize_dynamic

  st = read_sentence_transformers(output)
  transformer = transformers.AutoModel.from_pretrained(output).eval()
  model = _pipeline(transformer, st.dense, st.normalize)
  directory = os.path.join(output, ONNX_SUBDIR)
  os.makedirs(directory, exist_ok=True)
  fp32, int8 = os.path.join(directory, FP32_FILE), os.path.join(directory, INT8_FILE)
  # The example batch has a padded row: a mask of ones alone may let the exporter keep a
  # no-padding shortcut of the attention mask.
  vocab = hf.read_json(os.path.join(output, "config.json"))["vocab_size"]
  input_ids = torch.arange(32).reshape(2, 16) % vocab
  attention_mask = torch.ones_like(input_ids)
  attention_mask[1, 9:] = 0
  batch, length = torch.export.Dim("batch"), torch.export.Dim("sequence")
  external = sum(p.numel() * p.element_size() for p in model.parameters()) > _PROTOBUF_LIMIT
  with torch.no_grad():
    torch.onnx.export(model, (input_ids, attention_mask), fp32, dynamo=True,
                      input_names=["input_ids", "attention_mask"],
                      output_names=["last_hidden_state", "sentence_embedding"],
                      dynamic_shapes={"input_ids": {0: batch, 1: length},
                                      "attention_mask": {0: batch, 1: length}},
                      external_data=external)
  # One scale per output channel: with one per tensor, all-MiniLM-L6-v2's int8 embeddings had a
  # min cosine of 0.92 to fp32 on 200 real texts (per channel: 0.991).
  quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, per_channel=True,
                   use_external_data_format=external)
  return [fp32, int8]
