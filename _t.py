import torch, transformers, tempfile, json
from pathlib import Path
from quant_core.tensorio.checkpoint_headers import read_checkpoint_headers
cfg = dict(architectures=["Qwen2_5_VLForConditionalGeneration"], model_type="qwen2_5_vl", hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=128, tie_word_embeddings=False, vision_config=dict(depth=3, hidden_size=32, intermediate_size=48, num_heads=4, out_hidden_size=64, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_chans=3))
c = transformers.Qwen2_5_VLConfig(**{k:v for k,v in cfg.items() if k!="model_type"})
d = Path(tempfile.mkdtemp())
transformers.Qwen2_5_VLForConditionalGeneration(c).save_pretrained(d)
for t in read_checkpoint_headers(d): print(t.name, t.shape)
print(json.load(open(d/"config.json")).keys())
