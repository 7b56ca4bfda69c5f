"""gcnn as the LM of CTC decoders, end to end without an acoustic model: WER/CER of pyctcdecode and flashlight-text
beam search on synthetic emissions of held-out WikiText-2 sentences, without an LM and with a gcnn LM trained here.

1. WikiText-2's training split, lowercased, keeping the words made of letters and apostrophes
   (``gcnn.asr.synth.normalize``), cut into sentences at " . "; a word vocabulary of the words seen at least
   ``--min-count`` times.
2. A small GCNN LM trained on those sentences for ``--train-seconds`` on one thread (Adam, random windows).
3. ``--sentences`` test-split sentences of 4-20 words, all in the vocabulary (the lexicon decoder can only spell
   known words), turned into CTC log-posteriors by ``gcnn.asr.synth.emissions`` (confusable characters, weak
   characters, noise).
4. Decoding: greedy; pyctcdecode (beam search, alpha = LM weight, beta = word bonus); flashlight-text's
   LexiconDecoder (the vocabulary as lexicon) and LexiconFreeDecoder (the LM spells words), each with LM weight 0
   (no LM) and a grid of weights. WER/CER per decoder and weight, and the plot of WER against the LM weight.

    python benchmarks/bench_asr.py --note "shared machine"
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections import Counter

import numpy as np
import torch

import common
import gcnn
from gcnn.asr import synth
from gcnn.asr.metrics import cer, wer


def sentences_of(path, limit_lines=None):
    out = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh):
            if limit_lines is not None and number >= limit_lines:
                break
            for part in line.split(" . "):
                text = synth.normalize(part)
                if len(text.split()) >= 3:
                    out.append(text)
    return out


def train_lm(vocab, sentences, arch, seconds, seed=0, **overrides):
    ids = []
    for s in sentences:
        ids += [vocab.bos_id] + vocab.encode(s.split()) + [vocab.eos_id]
    ids = torch.tensor(ids)
    torch.manual_seed(seed)
    if arch == "asr-small":  # GCNN-8's shape at width 128: trains in minutes on one thread
        overrides = {"embed_dim": 128, "blocks": (gcnn.Block(layers=((4, 128),), residual=False),
                                                  gcnn.Block(layers=((4, 128),), repeat=5, residual=True)),
                     "adaptive_cutoffs": tuple(c for c in (2000, 10000) if c < len(vocab)), **overrides}
        arch = "gcnn-small"
    model = gcnn.build_model(arch, vocab_size=len(vocab), dropout=0.0, **overrides)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    batch, length = 16, 64
    start, steps, losses = time.perf_counter(), 0, []
    while time.perf_counter() - start < seconds:
        starts = torch.randint(0, len(ids) - length - 1, (batch,))
        x = torch.stack([ids[s : s + length] for s in starts])
        y = torch.stack([ids[s + 1 : s + length + 1] for s in starts])
        loss = model(x, y).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
        losses.append(float(loss.detach()))
        steps += 1
    model.eval()
    model.vocab = vocab
    return model, {"steps": steps, "tokens": steps * batch * length, "seconds": round(time.perf_counter() - start, 1),
                   "final_train_loss": round(sum(losses[-20:]) / len(losses[-20:]), 3)}


def test_perplexity(model, sentences):
    vocab = model.vocab
    total, count = 0.0, 0
    with torch.no_grad():
        for s in sentences:
            ids = [vocab.bos_id] + vocab.encode(s.split()) + [vocab.eos_id]
            lp = model.next_token_log_probs(torch.tensor([ids[:-1]]))[0]
            total += float(lp.gather(1, torch.tensor(ids[1:]).view(-1, 1)).sum())
            count += len(ids) - 1
    return math.exp(-total / count)


def flashlight_run(decoder, e):
    e = np.ascontiguousarray(e, dtype=np.float32)
    return decoder.decode(e.ctypes.data, e.shape[0], e.shape[1])[0]


def collapse(tokens):
    chars, previous = [], -1
    for t in tokens:
        if t != previous and t > 0:
            chars.append(synth.LABELS[t])
        previous = t
    return " ".join("".join(chars).split())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(parser, repeats=1)
    parser.add_argument("--sentences", type=int, default=40)
    parser.add_argument("--train-seconds", type=float, default=150.0)
    parser.add_argument("--arch", default="asr-small", help="asr-small (GCNN-8 shape, width 128) or any gcnn name")
    parser.add_argument("--word-score", type=float, default=1.0, help="word bonus (beta) with the LM (0 without)")
    parser.add_argument("--min-count", type=int, default=3)
    parser.add_argument("--beam", type=int, default=24)
    parser.add_argument("--confusion", type=float, default=0.15)
    parser.add_argument("--weights", default="0.25,0.5,0.75,1.0,1.5")
    args = parser.parse_args()
    if args.threads is None:
        args.threads = 1
    result = common.start(args)
    if not common.WIKITEXT2.is_dir():
        print(f"WikiText-2 not found at {common.WIKITEXT2}", file=sys.stderr)
        return 1
    weights = [float(w) for w in args.weights.split(",")]
    if args.smoke:
        args.sentences, args.train_seconds, weights, args.beam = 4, 5.0, [0.5], 8
    from gcnn.asr.pyctcdecode import GcnnLanguageModel  # first: it keeps pyctcdecode's kenlm warning quiet
    from gcnn.asr.flashlight import GcnnFlashlightLM, lexicon_trie
    from flashlight.lib.text.decoder import (
        CriterionType, LexiconDecoder, LexiconDecoderOptions, LexiconFreeDecoder, LexiconFreeDecoderOptions,
    )
    from pyctcdecode import Alphabet, BeamSearchDecoderCTC

    train = sentences_of(common.WIKITEXT2 / "wiki.train.tokens", 2000 if args.smoke else None)
    counts = Counter(w for s in train for w in s.split())
    vocab = gcnn.Vocabulary.from_counts(counts, eos="</s>", bos="<s>", min_count=args.min_count)
    model, training = train_lm(vocab, train, args.arch, args.train_seconds)
    known = set(vocab.stoi) - {vocab.unk, vocab.eos, vocab.bos}
    test = [s for s in sentences_of(common.WIKITEXT2 / "wiki.test.tokens") if 4 <= len(s.split()) <= 20
            and all(w in known for w in s.split())]
    refs = random.Random(0).sample(test, min(args.sentences, len(test)))
    rng = np.random.default_rng(0)
    emissions = [synth.emissions(s, rng, confusion=args.confusion) for s in refs]
    ppl = test_perplexity(model, refs)
    print(f"trained {training}; vocabulary {len(vocab)}; test-sentence perplexity {ppl:.1f}", file=sys.stderr)

    rows = []

    def record(decoder, weight, hyps, seconds):
        rows.append({"decoder": decoder, "lm_weight": weight, "wer": wer(refs, hyps), "cer": cer(refs, hyps),
                     "seconds": round(seconds, 2), "example": hyps[0]})
        print(f"{decoder:24s} weight {weight:4.2f}: WER {rows[-1]['wer']:.3f} CER {rows[-1]['cer']:.3f} "
              f"({seconds:.1f} s)", file=sys.stderr)

    t = time.perf_counter()
    record("greedy", 0.0, [synth.greedy(e) for e in emissions], time.perf_counter() - t)
    scorer = gcnn.Scorer(model, cache_mb=2048)
    alphabet = Alphabet.build_alphabet(synth.LABELS)
    # pyctcdecode
    t = time.perf_counter()
    record("pyctcdecode", 0.0, [BeamSearchDecoderCTC(alphabet).decode(e, beam_width=args.beam) for e in emissions],
           time.perf_counter() - t)
    lm = GcnnLanguageModel(scorer, alpha=0.5, beta=args.word_score)
    decoder = BeamSearchDecoderCTC(alphabet, language_model=lm)
    for weight in weights:
        decoder.reset_params(alpha=weight)
        t = time.perf_counter()
        record("pyctcdecode", weight, [decoder.decode(e, beam_width=args.beam) for e in emissions],
               time.perf_counter() - t)
    # flashlight-text, lexicon
    word_lm = GcnnFlashlightLM(scorer)
    spellings = {w: [synth.INDEX[c] for c in w] + [1] for w in sorted(known)}  # letters, then the separator
    trie = lexicon_trie(word_lm, spellings, len(synth.LABELS), 1)
    for weight in [0.0] + weights:
        options = LexiconDecoderOptions(
            beam_size=args.beam, beam_size_token=12, beam_threshold=25, lm_weight=weight,
            word_score=args.word_score if weight else 0.0,
            unk_score=-math.inf, sil_score=0.0, log_add=False, criterion_type=CriterionType.CTC,
        )
        fl = LexiconDecoder(options, trie, word_lm, 1, 0, vocab.unk_id, [], False)
        t = time.perf_counter()
        hyps = [" ".join(vocab.itos[i] for i in flashlight_run(fl, e).words if i >= 0) for e in emissions]
        record("flashlight lexicon", weight, hyps, time.perf_counter() - t)
    # flashlight-text, lexicon-free
    spelling_lm = GcnnFlashlightLM(scorer, tokens=synth.LABELS, separator=1)
    for weight in [0.0] + weights:
        options = LexiconFreeDecoderOptions(
            beam_size=args.beam, beam_size_token=12, beam_threshold=25, lm_weight=weight, sil_score=0.0,
            log_add=False, criterion_type=CriterionType.CTC,
        )
        fl = LexiconFreeDecoder(options, spelling_lm, 1, 0, [])
        t = time.perf_counter()
        hyps = [collapse(flashlight_run(fl, e).tokens) for e in emissions]
        record("flashlight lexicon-free", weight, hyps, time.perf_counter() - t)

    table = []
    for name in ("greedy", "pyctcdecode", "flashlight lexicon", "flashlight lexicon-free"):
        mine = [r for r in rows if r["decoder"] == name]
        base = next(r for r in mine if r["lm_weight"] == 0.0)
        best = min(mine, key=lambda r: r["wer"])
        table.append([name, f"{100 * base['wer']:.1f}%", f"{100 * base['cer']:.1f}%",
                      "-" if best is base else f"{100 * best['wer']:.1f}%",
                      "-" if best is base else f"{100 * best['cer']:.1f}%",
                      "-" if best is base else best["lm_weight"]])
    result.update(
        title="CTC decoding of synthetic emissions with a gcnn LM (WikiText-2)",
        settings={"sentences": len(refs), "beam": args.beam, "confusion": args.confusion, "arch": args.arch,
                  "min_count": args.min_count, "weights": weights, "word_score": args.word_score},
        training=training,
        vocabulary=len(vocab),
        test_sentence_perplexity=round(ppl, 1),
        scorer_stats=dict(scorer.stats),
        rows=rows,
        table_markdown=common.markdown_table(
            ["decoder", "WER without LM", "CER without LM", "WER with gcnn LM", "CER with gcnn LM", "best LM weight"],
            table),
        notes=[
            f"{len(refs)} held-out WikiText-2 test sentences (4-20 words, all in the LM's {len(vocab):,}-word "
            f"vocabulary); emissions from gcnn.asr.synth (confusion {args.confusion}); beam {args.beam}. The LM is "
            f"{args.arch} trained here for {training['seconds']} s on one thread ({training['tokens']:,} tokens), "
            f"perplexity {ppl:.0f} on these sentences. 'Without LM' is LM weight 0 (flashlight's lexicon decoder "
            "still only spells lexicon words, which is why it starts lower). The machine was shared with other jobs; "
            "times are not the point of this table.",
        ],
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name in ("pyctcdecode", "flashlight lexicon", "flashlight lexicon-free"):
        mine = sorted((r for r in rows if r["decoder"] == name), key=lambda r: r["lm_weight"])
        ax.plot([r["lm_weight"] for r in mine], [100 * r["wer"] for r in mine], marker="o", label=name)
    ax.axhline(100 * rows[0]["wer"], color="gray", linestyle="--", label="greedy")
    ax.set_xlabel("LM weight (alpha)")
    ax.set_ylabel("WER (%)")
    ax.set_title("WER against the gcnn LM's weight")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    common.write_report("asr" + ("-smoke" if args.smoke else ""), result, fig, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
