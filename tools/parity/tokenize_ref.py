#!/usr/bin/env python3
"""open_clip's CLIP tokenizer on sentences. stdin: JSON list of strings; stdout: JSON list of
77-id lists (open_clip.tokenize, i.e. SimpleTokenizer with ftfy + html clean, lower case)."""
import json
import sys

import open_clip


def main():
    texts = json.load(sys.stdin)
    ids = open_clip.tokenize(texts, context_length=77)
    json.dump(ids.tolist(), sys.stdout)


if __name__ == "__main__":
    main()
