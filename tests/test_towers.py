"""The paper's pretraining starting points: an ImageNet ViT (timm / DeiT state dict, big_vision .npz)
and BERT for the text tower, imported into a fresh BLIP and checked against the PyTorch models they
came from (float32, 1e-5). The timm names are written out here by hand, independently of interop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from blip_jax.interop import CheckpointError, towers
from blip_jax.models import Blip
from blip_jax.models.blip import init_params
from tests import hf_reference as ref

TOL = 1e-5


def _hf_vision_to_timm(sd):
  """BlipVisionModel keys -> timm VisionTransformer keys (plus a classifier head timm would have)."""
  out = {"head.weight": np.ones((10, 48), np.float32), "head.bias": np.zeros(10, np.float32)}
  names = {
    "embeddings.class_embedding": "cls_token",
    "embeddings.position_embedding": "pos_embed",
    "embeddings.patch_embedding.weight": "patch_embed.proj.weight",
    "embeddings.patch_embedding.bias": "patch_embed.proj.bias",
    "post_layernorm.weight": "norm.weight",
    "post_layernorm.bias": "norm.bias",
  }
  for k, v in sd.items():
    k = k.removeprefix("vision_model.")
    if k in names:
      out[names[k]] = v
    elif k.startswith("encoder.layers."):
      n, rest = k.split(".")[2], ".".join(k.split(".")[3:])
      rest = (
        rest.replace("layer_norm", "norm")
        .replace("self_attn.projection", "attn.proj")
        .replace("self_attn.qkv", "attn.qkv")
      )
      out[f"blocks.{n}.{rest}"] = v
  return out


@pytest.fixture(scope="module")
def vit():
  c = ref.our_config("caption")
  model = ref.hf_model("BlipForConditionalGeneration", c)
  with torch.no_grad():  # big_vision adds no position to [CLS]: make the reference agree
    model.vision_model.embeddings.position_embedding[:, 0] = 0
  images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    want = model.vision_model(pixel_values=ref.nchw(images)).last_hidden_state.numpy()
  sd = _hf_vision_to_timm({k: v for k, v in ref.state_dict_numpy(model).items() if k.startswith("vision_model.")})
  return c, sd, images, want


def _encode(c, params, images):
  return np.asarray(Blip(c).apply({"params": params}, jnp.asarray(images), method=Blip.encode_image))


def test_timm_state_dict_gives_the_same_image_encoder(vit, tmp_path):
  c, sd, images, want = vit
  torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()}}, tmp_path / "deit.pth")
  fresh = jax.tree.map(np.asarray, init_params(c, jax.random.key(0)))
  params, notes = towers.load_towers({"vision": str(tmp_path / "deit.pth")}, fresh)
  assert np.abs(_encode(c, params, images) - want).max() <= TOL
  assert any("head.bias" in n for n in notes)  # the classifier is dropped, and said so
  np.testing.assert_array_equal(
    params["text"]["embeddings"]["word_embeddings"]["embedding"],
    fresh["text"]["embeddings"]["word_embeddings"]["embedding"],
  )


def test_big_vision_npz_gives_the_same_image_encoder(vit, tmp_path):
  c, sd, images, want = vit
  d, heads = 48, 4
  f = {
    "params/cls": sd["cls_token"],
    "params/pos_embedding": sd["pos_embed"][:, 1:],  # big_vision: no [CLS] row
    "params/embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
    "params/embedding/bias": sd["patch_embed.proj.bias"],
    "params/Transformer/encoder_norm/scale": sd["norm.weight"],
    "params/Transformer/encoder_norm/bias": sd["norm.bias"],
  }
  for n in range(2):
    b, t = f"params/Transformer/encoderblock_{n}/", f"blocks.{n}."
    a = b + "MultiHeadDotProductAttention_1/"
    qkv_w, qkv_b = sd[t + "attn.qkv.weight"].T, sd[t + "attn.qkv.bias"]
    for i, x in enumerate(("query", "key", "value")):
      f[a + f"{x}/kernel"] = qkv_w[:, i * d : (i + 1) * d].reshape(d, heads, d // heads)
      f[a + f"{x}/bias"] = qkv_b[i * d : (i + 1) * d].reshape(heads, d // heads)
    f[a + "out/kernel"] = sd[t + "attn.proj.weight"].T.reshape(heads, d // heads, d)
    f[a + "out/bias"] = sd[t + "attn.proj.bias"]
    for i, x in ((0, "norm1"), (2, "norm2")):
      f[b + f"LayerNorm_{i}/scale"], f[b + f"LayerNorm_{i}/bias"] = sd[t + f"{x}.weight"], sd[t + f"{x}.bias"]
    for i, x in ((0, "fc1"), (1, "fc2")):
      f[b + f"MlpBlock_3/Dense_{i}/kernel"] = sd[t + f"mlp.{x}.weight"].T
      f[b + f"MlpBlock_3/Dense_{i}/bias"] = sd[t + f"mlp.{x}.bias"]
  np.savez(tmp_path / "vit.npz", **f)
  fresh = jax.tree.map(np.asarray, init_params(c, jax.random.key(0)))
  params, _ = towers.load_towers({"vision": str(tmp_path / "vit.npz")}, fresh)
  assert np.abs(_encode(c, params, images) - want).max() <= TOL


def test_bert_gives_the_text_encoder_and_the_decoder_starts_from_it(tmp_path):
  c = ref.our_config("pretrain")
  torch.manual_seed(0)
  cfg = transformers.BertConfig(
    vocab_size=30522,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    layer_norm_eps=1e-12,
  )
  bert = transformers.BertForPreTraining(cfg).eval()
  with torch.no_grad():
    for name, p in bert.named_parameters():
      p.copy_(torch.randn_like(p) * 0.05 + (1.0 if "LayerNorm.weight" in name else 0.0))
    bert.bert.embeddings.token_type_embeddings.weight.zero_()  # BLIP has no token types
  bert.save_pretrained(tmp_path / "bert")
  fresh = jax.tree.map(np.asarray, init_params(c, jax.random.key(0)))
  params, notes = towers.load_towers({"text": str(tmp_path / "bert")}, fresh)
  _, ids, mask = ref.inputs(c)
  with torch.no_grad():
    want = bert.bert(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
  got = np.asarray(Blip(c).apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask), method=Blip.encode_text))
  assert np.abs(got - want).max() <= TOL
  layer = params["text"]["layer_0"]
  for name in ("query", "key", "value"):  # the decoder's self-attention starts as BERT's
    np.testing.assert_array_equal(
      layer["decoder_attention"]["self"][name]["kernel"], layer["attention"]["self"][name]["kernel"]
    )
  np.testing.assert_array_equal(
    layer["crossattention"]["self"]["query"]["kernel"],
    fresh["text"]["layer_0"]["crossattention"]["self"]["query"]["kernel"],
  )
  emb = params["text"]["embeddings"]["word_embeddings"]["embedding"]
  np.testing.assert_array_equal(
    emb[30522:], fresh["text"]["embeddings"]["word_embeddings"]["embedding"][30522:]
  )  # [DEC], [ENC]
  mlm = bert.cls.predictions.transform.dense.weight.detach().numpy().T
  np.testing.assert_array_equal(params["text"]["cls"]["transform_dense"]["kernel"], mlm)
  assert any("token_type_embeddings" in n for n in notes)


def test_tower_specs_and_wrong_sizes_are_named(vit, tmp_path):
  assert towers.parse_spec("/ckpt/model_base.pth") is None
  assert towers.parse_spec("vision=/a.pth; text=/b") == {"vision": "/a.pth", "text": "/b"}
  with pytest.raises(ValueError, match="vision=PATH;text=PATH"):
    towers.parse_spec("vision=/a.pth;bert=/b")
  c, sd, _, _ = vit
  big = ref.our_config("caption", vision_width=64, vision_mlp=128)
  fresh = jax.tree.map(np.asarray, init_params(big, jax.random.key(0)))
  torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / "small.pth")
  with pytest.raises(CheckpointError, match="small.pth.*wrong shapes"):
    towers.load_towers({"vision": str(tmp_path / "small.pth")}, fresh)
