"""How bpe/tokenizer.json here was made: a 320-token byte-level BPE (the 256 byte symbols, 61 merges, then
<|endoftext|> <|im_start|> <|im_end|>) with Qwen2's pre-tokenizer (its split pattern, byte-level, NFC),
trained by the ``tokenizers`` library on make_tokenizer.py's text.  Run from this directory:
python make_bpe_tokenizer.py"""

import random
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

#: make_tokenizer.py's text
TEXT = ("the quick brown fox jumps over lazy dog a small model reads tokens and writes numbers one at a time "
        "while nibble packs four bits into every byte of weights scales zeros groups rows columns layers heads keys "
        "values queries attention memory planning engine server client request answer checkpoint shard index config "
        "tokenizer vocab merge piece score byte control unknown begin end sentence paragraph word letter number symbol")

#: Qwen2's pre-tokenizer split pattern (its tokenizer.json)
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                 r"|\s+(?!\S)|\s+")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

random.seed(0)
words = TEXT.split()
lines = [" ".join(random.choice(words) for _ in range(12)) for _ in range(3000)]
tokenizer = Tokenizer(models.BPE())
tokenizer.normalizer = normalizers.NFC()
tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
    pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
tokenizer.decoder = decoders.ByteLevel()
tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
trainer = trainers.BpeTrainer(vocab_size=317, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                              show_progress=False)
tokenizer.train_from_iterator(lines, trainer)
tokenizer.add_special_tokens(SPECIAL)
Path("bpe").mkdir(exist_ok=True)
tokenizer.save("bpe/tokenizer.json")
print(tokenizer.get_vocab_size(), tokenizer.encode("the quick brown fox<|im_end|>").tokens)
