import torch, transformers
from quant_core.hf_config import model_from_hf_config
from quant_core.inventory import parameter_count
cfg = {"architectures": ["Qwen3VLForConditionalGeneration"], "image_token_id": 151655, "model_type": "qwen3_vl",
 "text_config": {"attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 151643, "dtype": "bfloat16", "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 6144, "max_position_embeddings": 262144, "model_type": "qwen3_vl_text", "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"}, "rope_theta": 5000000, "tie_word_embeddings": True, "use_cache": True, "vocab_size": 151936},
 "tie_word_embeddings": True, "transformers_version": "4.57.0.dev0", "video_token_id": 151656,
 "vision_config": {"deepstack_visual_indexes": [5, 11, 17], "depth": 24, "hidden_act": "gelu_pytorch_tanh", "hidden_size": 1024, "in_channels": 3, "initializer_range": 0.02, "intermediate_size": 4096, "model_type": "qwen3_vl", "num_heads": 16, "num_position_embeddings": 2304, "out_hidden_size": 2048, "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2},
 "vision_end_token_id": 151653, "vision_start_token_id": 151652}
spec = model_from_hf_config(cfg); pc = parameter_count(spec); print(pc.total, pc.by_role["vision"], spec.qk_norm, spec.tie_word_embeddings)
c = transformers.Qwen3VLConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")})
with torch.device("meta"):
    m = transformers.Qwen3VLForConditionalGeneration(c)
print(sum(p.numel() for p in m.parameters()), sum(p.numel() for n, p in m.named_parameters() if "visual" in n))
