"""How tokenizer.model here was made: a 96-piece SentencePiece unigram model (ids 0-2 <unk> <s> </s>), trained
with sentencepiece 0.2.3 (not a test dependency; run once: pip install sentencepiece==0.2.3).  The tests copy it
into the tiny checkpoints of tests/checkpoints.py."""

import random

import sentencepiece as spm

random.seed(0)
TEXT = ("the quick brown fox jumps over lazy dog a small model reads tokens and writes numbers one at a time "
        "while nibble packs four bits into every byte of weights scales zeros groups rows columns layers heads keys "
        "values queries attention memory planning engine server client request answer checkpoint shard index config "
        "tokenizer vocab merge piece score byte control unknown begin end sentence paragraph word letter number symbol")
words = TEXT.split()
lines = [" ".join(random.choice(words) for _ in range(12)) for _ in range(3000)]
with open("corpus.txt", "w") as handle:
    handle.write("\n".join(lines) + "\n")
spm.SentencePieceTrainer.train(input="corpus.txt", model_prefix="tokenizer", vocab_size=96, model_type="unigram",
                               character_coverage=1.0, num_threads=1, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                               minloglevel=2, normalization_rule_name="identity")
