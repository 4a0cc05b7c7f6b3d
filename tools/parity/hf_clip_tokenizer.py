#!/usr/bin/env python3
"""The Hugging Face tokenizer.json an open_clip hub upload carries, written by transformers.

usage: hf_clip_tokenizer.py OUT_DIR

open_clip's push_to_hf_hub saves an HFTokenizer around the CLIP tokenizer of
openai/clip-vit-large-patch14 (transformers' CLIPTokenizerFast, named CLIPTokenizer since
transformers 5). That repository cannot be fetched here, so its vocab.json / merges.txt are
written from the vocabulary open_clip bundles (the same 49,408 tokens, specials <|startoftext|>
49406 and <|endoftext|> 49407), loaded through open_clip's HFTokenizer (AutoTokenizer), used once
as open_clip uses it (padding to max_length, truncation: transformers leaves both set on the
backend), then saved as save_for_hf saves it. stdout: JSON {class, files}.
"""
import gzip
import json
import os
import sys
import tempfile

import open_clip
from open_clip.tokenizer import HFTokenizer, bytes_to_unicode


def main():
    out = sys.argv[1]
    bpe = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as src:
        with open(os.path.join(src, "vocab.json"), "w") as f:
            json.dump({v: i for i, v in enumerate(vocab)}, f)
        with open(os.path.join(src, "merges.txt"), "w") as f:
            f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
        with open(os.path.join(src, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77}, f)
        tok = HFTokenizer(src, context_length=77)
        ids = tok(["left ventricular ejection fraction"])[0].tolist()
        assert ids[0] == 49406 and len(ids) == 77, ids
        tok.save_pretrained(out)
    json.dump({"class": type(tok.tokenizer).__name__, "files": sorted(os.listdir(out))}, sys.stdout)


if __name__ == "__main__":
    main()
