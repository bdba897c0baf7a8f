"""PyTorch eager reference of BLIP's pretraining step, assembled from transformers' BLIP modules and
following the official BLIP_Pretrain.forward (Salesforce models/blip_pretrain.py) line by line:
EMA then momentum forward, ITC with queues and distillation, ITM with per-batch hard negatives, LM
with label smoothing, AdamW. Used only by benchmarks (torch is not a blip_jax dependency)."""

import copy

import torch
import torch.nn.functional as F
import transformers
from transformers.models.blip.modeling_blip_text import BlipTextLMHeadModel, BlipTextModel


def hf_config(c):
  """transformers BlipConfig with the sizes of a blip_jax BlipConfig."""
  text = transformers.BlipTextConfig(
    vocab_size=c.text.vocab_size,
    hidden_size=c.text.hidden_size,
    encoder_hidden_size=c.vision.width,
    intermediate_size=c.text.intermediate_size,
    num_hidden_layers=c.text.num_layers,
    num_attention_heads=c.text.num_heads,
    max_position_embeddings=c.text.max_position_embeddings,
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    label_smoothing=0.1,
    bos_token_id=30522,
    pad_token_id=0,
    sep_token_id=102,
    eos_token_id=102,
  )
  vision = transformers.BlipVisionConfig(
    hidden_size=c.vision.width,
    intermediate_size=c.vision.mlp_dim,
    num_hidden_layers=c.vision.depth,
    num_attention_heads=c.vision.num_heads,
    image_size=c.vision.image_size,
    patch_size=c.vision.patch_size,
    layer_norm_eps=1e-6,
  )
  return text, vision


class BlipPretrainTorch(torch.nn.Module):
  def __init__(self, c, queue_size):
    super().__init__()
    text_cfg, vision_cfg = hf_config(c)
    self.visual_encoder = transformers.BlipVisionModel(vision_cfg)
    self.text_encoder = BlipTextModel(text_cfg, add_pooling_layer=False)
    self.text_decoder = BlipTextLMHeadModel(text_cfg)
    # share all but self-attention (official tie_encoder_decoder_weights(..., '/attention'))
    self.text_decoder.bert.embeddings = self.text_encoder.embeddings
    for enc, dec in zip(self.text_encoder.encoder.layer, self.text_decoder.bert.encoder.layer):
      dec.crossattention, dec.intermediate, dec.output = enc.crossattention, enc.intermediate, enc.output
    self.text_decoder.cls.predictions.decoder.weight = self.text_encoder.embeddings.word_embeddings.weight
    self.vision_proj = torch.nn.Linear(c.vision.width, c.embed_dim)
    self.text_proj = torch.nn.Linear(c.text.hidden_size, c.embed_dim)
    self.itm_head = torch.nn.Linear(c.text.hidden_size, 2)
    self.temp = torch.nn.Parameter(0.07 * torch.ones([]))
    self.visual_encoder_m = copy.deepcopy(self.visual_encoder)
    self.vision_proj_m = copy.deepcopy(self.vision_proj)
    self.text_encoder_m = copy.deepcopy(self.text_encoder)
    self.text_proj_m = copy.deepcopy(self.text_proj)
    self.pairs = [
      (self.visual_encoder, self.visual_encoder_m),
      (self.vision_proj, self.vision_proj_m),
      (self.text_encoder, self.text_encoder_m),
      (self.text_proj, self.text_proj_m),
    ]
    for _, m in self.pairs:
      for p in m.parameters():
        p.requires_grad = False
    self.register_buffer("image_queue", F.normalize(torch.randn(c.embed_dim, queue_size), dim=0))
    self.register_buffer("text_queue", F.normalize(torch.randn(c.embed_dim, queue_size), dim=0))
    self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
    self.queue_size, self.momentum, self.enc_id, self.dec_id = queue_size, 0.995, 30523, 30522

  @torch.no_grad()
  def _momentum_update(self):
    for p, m in self.pairs:
      for pp, mp in zip(p.parameters(), m.parameters()):
        mp.data = mp.data * self.momentum + pp.data * (1.0 - self.momentum)

  def forward(self, image, ids, mask, alpha=0.4):
    with torch.no_grad():
      self.temp.clamp_(0.001, 0.5)
    image_embeds = self.visual_encoder(image).last_hidden_state
    image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long)
    image_feat = F.normalize(self.vision_proj(image_embeds[:, 0]), dim=-1)
    text_out = self.text_encoder(ids, attention_mask=mask)
    text_feat = F.normalize(self.text_proj(text_out.last_hidden_state[:, 0]), dim=-1)
    with torch.no_grad():
      self._momentum_update()
      image_embeds_m = self.visual_encoder_m(image).last_hidden_state
      image_feat_m = F.normalize(self.vision_proj_m(image_embeds_m[:, 0]), dim=-1)
      image_feat_all = torch.cat([image_feat_m.t(), self.image_queue.clone().detach()], dim=1)
      text_m = self.text_encoder_m(ids, attention_mask=mask).last_hidden_state
      text_feat_m = F.normalize(self.text_proj_m(text_m[:, 0]), dim=-1)
      text_feat_all = torch.cat([text_feat_m.t(), self.text_queue.clone().detach()], dim=1)
      sim_i2t_m = image_feat_m @ text_feat_all / self.temp
      sim_t2i_m = text_feat_m @ image_feat_all / self.temp
      targets = torch.zeros(sim_i2t_m.size())
      targets.fill_diagonal_(1)
      sim_i2t_targets = alpha * F.softmax(sim_i2t_m, dim=1) + (1 - alpha) * targets
      sim_t2i_targets = alpha * F.softmax(sim_t2i_m, dim=1) + (1 - alpha) * targets
    sim_i2t = image_feat @ text_feat_all / self.temp
    sim_t2i = text_feat @ image_feat_all / self.temp
    loss_i2t = -torch.sum(F.log_softmax(sim_i2t, dim=1) * sim_i2t_targets, dim=1).mean()
    loss_t2i = -torch.sum(F.log_softmax(sim_t2i, dim=1) * sim_t2i_targets, dim=1).mean()
    loss_ita = (loss_i2t + loss_t2i) / 2
    with torch.no_grad():  # enqueue (single process: the global batch is the local batch)
      bs = image_feat_m.shape[0]
      ptr = int(self.queue_ptr)
      self.image_queue[:, ptr : ptr + bs] = image_feat_m.T
      self.text_queue[:, ptr : ptr + bs] = text_feat_m.T
      self.queue_ptr[0] = (ptr + bs) % self.queue_size
    enc_ids = ids.clone()
    enc_ids[:, 0] = self.enc_id
    bs = image.size(0)
    output_pos = self.text_encoder(
      enc_ids, attention_mask=mask, encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts
    )
    with torch.no_grad():
      weights_t2i = F.softmax(sim_t2i[:, :bs], dim=1) + 1e-4
      weights_t2i.fill_diagonal_(0)
      weights_i2t = F.softmax(sim_i2t[:, :bs], dim=1) + 1e-4
      weights_i2t.fill_diagonal_(0)
    neg_img = torch.multinomial(weights_t2i, 1).squeeze(1)
    neg_txt = torch.multinomial(weights_i2t, 1).squeeze(1)
    text_ids_all = torch.cat([enc_ids, enc_ids[neg_txt]], dim=0)
    text_atts_all = torch.cat([mask, mask[neg_txt]], dim=0)
    image_embeds_all = torch.cat([image_embeds[neg_img], image_embeds], dim=0)
    image_atts_all = torch.cat([image_atts, image_atts], dim=0)
    output_neg = self.text_encoder(
      text_ids_all,
      attention_mask=text_atts_all,
      encoder_hidden_states=image_embeds_all,
      encoder_attention_mask=image_atts_all,
    )
    vl = torch.cat([output_pos.last_hidden_state[:, 0], output_neg.last_hidden_state[:, 0]], dim=0)
    itm_labels = torch.cat([torch.ones(bs, dtype=torch.long), torch.zeros(2 * bs, dtype=torch.long)])
    loss_itm = F.cross_entropy(self.itm_head(vl), itm_labels)
    dec_ids = ids.clone()
    dec_ids[:, 0] = self.dec_id
    targets = dec_ids.masked_fill(dec_ids == 0, -100)
    loss_lm = self.text_decoder(
      dec_ids,
      attention_mask=mask,
      encoder_hidden_states=image_embeds,
      encoder_attention_mask=image_atts,
      labels=targets,
    ).loss
    return loss_ita, loss_itm, loss_lm
