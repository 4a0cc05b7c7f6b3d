#!/usr/bin/env python3
"""A second, independent implementation of EchoCLIP-R's template tokenizer, written from the
specification (issue "EchoCLIP-R as published"; the same text heads src/tokenize/template.rs) and
not from echovault's code: the cleaning rules run on Python's own `re` (the engine the published
tokenizer was written for) and the phrase matching on the `tokenizers` Python package. It never
calls echovault.

Usage: template_ref.py VOCAB_FILE < texts.json > ids.json
Each text gives 77 ids, or null when the text is refused (placeholders outnumber values)."""
import json
import re
import sys

from tokenizers import AddedToken, Tokenizer
from tokenizers.models import WordPiece

SPECIALS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
CONTEXT = 77
SLOT = "<#>"
NUMBER = r"\d+\.?\d*"

# Phrases that get a period when none follows them (spec, step 1).
NEEDS_PERIOD = [
    "THE PEAK TRANSAORTIC GRADIENT IS <#>MMHG",
    "THE MEAN TRANSAORTIC GRADIENT IS <#>MMHG",
    "LV EJECTION FRACTION IS <#>%",
    "ESTIMATED PA PRESSURE IS <#>MMHG",
    "RESTING SEGMENTAL WALL MOTION ANALYSIS",
    "THE IVC DIAMETER IS <#>MM",
    "EST RV/RA PRESSURE GRADIENT IS <#>MMHG",
    "ESTIMATED PEAK RVSP IS <#>MMHG",
    "HEART FAILURE, UNSPECIFIED",
    "CHEST PAIN, UNSPECIFIED",
    "SINUS OF VALSALVA: <#>CM",
    "THE PEAK TRANSMITRAL GRADIENT IS <#>MMHG",
    "THE MEAN TRANSMITRAL GRADIENT IS <#>MMHG",
    "ASCENDING AORTA <#>CM",
    "ESTIMATED PA SYSTOLIC PRESSURE IS <#>MMHG",
    "ICD_CODE SHORTNESS BREATH",
    "ICD_CODE ABNORMAL ELECTROCARDIOGRAM ECG EKG",
    "SHORTNESS BREATH",
    "ABNORMAL ELECTROCARDIOGRAM ECG EKG",
    "THE LEFT ATRIAL APPENDAGE IS NORMAL IN APPEARANCE WITH NO EVIDENCE OF THROMBUS",
]


def _phrase_pattern(phrase):
    return f"(?:{NUMBER})".join(re.escape(p) for p in phrase.split(SLOT))


# Step 1 as an ordered table of (pattern, replacement); upper-casing, trimming and the backtick
# come before it, the trailing space, added periods and period runs after it.
CLEANING = [
    (r"\^|CRLF|‡", ""),
    (r"(?<=\D)\.|\.(?=\D)", ". "),
    (r"[\[\]]", ""),
    (r"\bWAS\b", "IS"),
    (r"\bWERE\b", "ARE"),
    (r"\bAND/OR\b", "AND"),
    (r"NORMALLY", "NORMAL"),
    (r"MILDLY", "MILD"),
    (r"MODERATELY", "MODERATE"),
    (r"SEVERELY", "SEVERE"),
    (r"PULMONARY ARTERY", "PA"),
    (r"\d{2}/\d{2}/\d{4}", ""),
    (r"\d{2}\.\d{2}\.\d{4}", ""),
    (r"[A-Z]\d+\.\d*\b", ""),
    (r"\s+(MMHG|MM|CM|%)", r"\1"),
    (r"\s\.", "."),
    (r"\s+", " "),
    (r"\s\+\s", "+"),
    (r"\+CVPMMHG", "MMHG"),
]
PERIOD_AFTER = re.compile("(" + "|".join(f"(?:{_phrase_pattern(p)})(?!\\.)" for p in NEEDS_PERIOD) + ")")
VARIABLE = re.compile(f"{NUMBER}|(?<![A-Za-z])(?:MODERATE/SEVERE|MILD/MODERATE|MILD|MODERATE|SEVERE|VERY SEVERE)")
REWRITES = [
    (
        "THE INFERIOR VENA CAVA IS NORMAL IN SIZE AND SHOWS A NORMAL RESPIRATORY COLLAPSE, CONSISTENT WITH NORMAL RIGHT ATRIAL PRESSURE (<#>MMHG).",
        "THE INFERIOR VENA CAVA SHOWS A NORMAL RESPIRATORY COLLAPSE CONSISTENT WITH NORMAL RIGHT ATRIAL PRESSURE (<#>MMHG).",
    ),
    ("RESTING SEGMENTAL WALL MOTION ANALYSIS.:", "RESTING SEGMENTAL WALL MOTION ANALYSIS."),
]
VALUES = [str(i) for i in range(101)] + ["‡", "MILD", "MODERATE", "SEVERE", "MILD/MODERATE", "MODERATE/SEVERE"]
VALUES += [f".{i}" for i in range(10)] + [f"0{i}" for i in range(10)]


def clean(text):
    if len(text) <= 1:
        return text
    text = text.upper().strip().replace("`", "'")
    for pattern, replacement in CLEANING:
        text = re.sub(pattern, replacement, text)
    text = text.strip() + " "
    text = PERIOD_AFTER.sub(lambda m: m.group(1) + ".", text)
    return re.sub(r"\.+", ".", text)


def blank_wordpiece(added):
    tok = Tokenizer(WordPiece({s: i for i, s in enumerate(SPECIALS)}, unk_token="[UNK]", max_input_chars_per_word=500))
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    tok.add_tokens(added)
    return tok


class TemplateTokenizer:
    def __init__(self, vocab_path):
        # Lines end at \n, \r\n or \r (str.splitlines would also break at \v, \f, \x85…).
        with open(vocab_path, encoding="utf-8", newline="") as f:
            raw = f.read()
        lines = re.split(r"\r\n|\r|\n", raw)
        if raw.endswith(("\n", "\r")) or raw == "":
            lines.pop()
        self.phrases = blank_wordpiece(lines)
        self.values = blank_wordpiece(["[UNK]"] + VALUES)
        vocab = self.phrases.get_vocab()
        self.T = len(vocab)
        self.slots = {i: tok.count(SLOT) for tok, i in vocab.items()}
        assert len(self.values.get_vocab()) == 132
        self.start, self.end = self.T + 132, self.T + 133

    def encode(self, text):
        found = []
        templated = VARIABLE.sub(lambda m: found.append(m.group(0)) or SLOT, clean(text))
        for old, new in REWRITES:
            templated = templated.replace(old, new)
        if templated.count(SLOT) > len(found):
            return None
        pending = iter(found)
        enc = self.phrases.encode(templated)
        out = []
        for tid, (a, b) in zip(enc.ids, enc.offsets):
            if tid == 0:
                for _ in range(templated[a:b].count(SLOT)):
                    next(pending)
                continue
            out.append(tid)
            mine = [next(pending) for _ in range(self.slots[tid])]
            if mine:
                out += [v + self.T for v in self.values.encode("‡".join(mine)).ids]
        ids = [self.start] + out + [self.end]
        if len(ids) > CONTEXT:
            ids = ids[:CONTEXT - 1] + [self.end]
        return ids + [0] * (CONTEXT - len(ids))


def main():
    tok = TemplateTokenizer(sys.argv[1])
    texts = json.load(sys.stdin)
    json.dump([tok.encode(t) for t in texts], sys.stdout)


if __name__ == "__main__":
    main()
