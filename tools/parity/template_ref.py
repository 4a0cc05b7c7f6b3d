#!/usr/bin/env python3
"""Independent implementation of echovault's template tokenizer (EchoCLIP-R style), written
from the algorithm's description (src/tokenize/template.rs header), not from the Rust code:
regular expressions and a dictionary-of-lengths search instead of a hand-written scanner.
Usage: template_ref.py VOCAB_FILE < texts.json > ids.json   (77 ids per text)"""
import json
import re
import sys

SEVERITIES = ["TRACE", "MILD", "MILD-MODERATE", "MODERATE", "MODERATE-SEVERE", "SEVERE"]
SINGLE = {"TRACE": 0, "TRIVIAL": 0, "MILD": 1, "MILDLY": 1, "MODERATE": 3, "MODERATELY": 3, "SEVERE": 5, "SEVERELY": 5}
MAX_INT = 999
NUMBER_VOCAB = len(SEVERITIES) + MAX_INT + 1 + 10
TOKEN = re.compile(r"(\d+)(?:\.(\d)\d*)?|([A-Z]+(?:-[A-Z]+)*)|(<#>)|(\S)")


def severity(word):
    if "-" not in word:
        return SINGLE.get(word)
    a, b = word.split("-", 1)
    pair = (SINGLE.get(a), SINGLE.get(b))
    return {(1, 3): 2, (3, 5): 4}.get(pair)


def tokens(text):
    s = " ".join(text.upper().split()).replace("MM HG", "MMHG").replace("PERCENT", "%")
    out = []
    for m in TOKEN.finditer(s):
        num, dec, word, slot, other = m.groups()
        if num is not None:
            out.append(("slot", ("num", min(int(num), MAX_INT), None if dec is None else int(dec))))
        elif word is not None:
            sev = severity(word)
            out.append(("slot", ("sev", sev)) if sev is not None else ("word", word))
        elif slot is not None:
            out.append(("slot", None))
        else:
            out.append(("word", other))
    joined = []
    i = 0
    while i < len(out):
        if i + 2 < len(out):
            a, mid, b = out[i], out[i + 1], out[i + 2]
            if (a[0] == "slot" and a[1] and a[1][0] == "sev" and b[0] == "slot" and b[1] and b[1][0] == "sev"
                    and mid in (("word", "TO"), ("word", "-")) and (a[1][1], b[1][1]) in ((1, 3), (3, 5))):
                joined.append(("slot", ("sev", a[1][1] + 1)))
                i += 3
                continue
        joined.append(out[i])
        i += 1
    return joined


def pattern(toks):
    """A phrase's matching key: words as themselves, every slot as one wildcard."""
    return tuple("<#>" if kind == "slot" else value for kind, value in toks)


class Template:
    def __init__(self, path, context_length=77):
        lines = [l.strip() for l in open(path, encoding="utf-8").read().splitlines()]
        lines = [l for l in lines if l]
        self.n = len(lines)
        self.by_key = {}
        for i, line in enumerate(lines):
            key = pattern(tokens(line))
            if key and key not in self.by_key:
                self.by_key[key] = 5 + i
        self.lengths = sorted({len(k) for k in self.by_key}, reverse=True)
        self.start = 5 + self.n + NUMBER_VOCAB
        self.end = self.start + 1
        self.context_length = context_length

    def values(self, v):
        base = 5 + self.n
        if v[0] == "sev":
            return [base + v[1]]
        ids = [base + len(SEVERITIES) + v[1]]
        if v[2] is not None:
            ids.append(base + len(SEVERITIES) + MAX_INT + 1 + v[2])
        return ids

    def encode(self, text):
        toks = [t for t in tokens(text) if t != ("slot", None)]
        key = pattern(toks)
        ids, i = [], 0
        while i < len(toks):
            for length in self.lengths:
                if i + length <= len(toks):
                    # A text token that is a slot always has a value, so "<#>" in the key only
                    # ever comes from a slot of the text.
                    pid = self.by_key.get(key[i:i + length])
                    if pid is not None:
                        ids.append(pid)
                        for kind, v in toks[i:i + length]:
                            if kind == "slot":
                                ids.extend(self.values(v))
                        i += length
                        break
            else:
                i += 1
        ids = [self.start] + ids + [self.end]
        if len(ids) > self.context_length:
            ids = ids[: self.context_length]
            ids[-1] = self.end
        return ids + [0] * (self.context_length - len(ids))


def main():
    t = Template(sys.argv[1])
    json.dump([t.encode(x) for x in json.load(sys.stdin)], sys.stdout)


if __name__ == "__main__":
    main()
