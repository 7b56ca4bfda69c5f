"""``gcnn rescore``: rescore and re-rank n-best lists with a gcnn LM (and tune the weights on a dev set)."""

from __future__ import annotations

import argparse
import json
import sys

from gcnn.cli.common import add_model_arguments, load_model

HELP = "rescore n-best lists (utt_id TAB acoustic_score TAB text) with the LM; --tune picks the weights"
DESCRIPTION = """Add lm_weight * log p_LM(text) + word_bonus * words to every hypothesis' acoustic score and write
the lists re-ranked, best first within each utterance:

  input   utt_id <TAB> acoustic_score <TAB> text                    (one hypothesis per line)
  output  utt_id <TAB> score <TAB> acoustic_score <TAB> lm_logprob <TAB> text

Scores are natural logs; lm_logprob includes the end of the sentence. --best writes only "utt_id <TAB> text" of each
utterance's best hypothesis. --tune with --refs (utt_id <TAB> text) grid-searches --lm-weights x --word-bonuses for
the lowest 1-best WER on these lists (a development set), prints the choice as JSON on stderr and rescores with it.
See docs/asr.md.

examples:  gcnn rescore models/wt2 dev.nbest --refs dev.ref --tune --output dev.rescored
           gcnn rescore models/wt2 test.nbest --lm-weight 0.5 --word-bonus 1.0 --best > test.hyp"""


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("nbest", metavar="NBEST", help="n-best file: utt_id TAB acoustic_score TAB text")
    p.add_argument("--lm-weight", type=float, default=0.5, help="weight of the LM log-probability (default 0.5)")
    p.add_argument("--word-bonus", type=float, default=0.0, help="added per word (default 0)")
    p.add_argument("--output", metavar="FILE", help="write here instead of stdout (atomically)")
    p.add_argument("--best", action="store_true", help="write only each utterance's best hypothesis: utt_id TAB text")
    p.add_argument("--refs", metavar="FILE", help="references (utt_id TAB text): report WER; needed by --tune")
    p.add_argument("--tune", action="store_true", help="pick --lm-weight and --word-bonus by grid search on WER")
    p.add_argument("--lm-weights", type=_floats, default=None, metavar="LIST", help="grid for --tune (comma-separated)")
    p.add_argument("--word-bonuses", type=_floats, default=None, metavar="LIST", help="grid for --tune")
    p.add_argument("--batch-tokens", type=int, default=16384, metavar="N", help="tokens per LM forward pass")


def run(args: argparse.Namespace) -> int:
    from gcnn.asr import rescore
    from gcnn.errors import ConfigError
    from gcnn.fs import atomic_write

    if args.tune and not args.refs:
        raise ConfigError("--tune needs --refs (the references of this development set)")
    hypotheses = rescore.read_nbest(args.nbest)
    refs = rescore.read_references(args.refs) if args.refs else None
    model = load_model(args, needs_vocab="gcnn rescore")
    rescore.add_lm_scores(model, hypotheses, batch_tokens=args.batch_tokens)
    lm_weight, word_bonus = args.lm_weight, args.word_bonus
    report = None
    if args.tune:
        tuning = rescore.tune(hypotheses, refs, lm_weights=args.lm_weights or rescore.DEFAULT_LM_WEIGHTS,
                              word_bonuses=args.word_bonuses or rescore.DEFAULT_WORD_BONUSES)
        lm_weight, word_bonus = tuning.lm_weight, tuning.word_bonus
        report = {"lm_weight": lm_weight, "word_bonus": word_bonus, "wer": round(tuning.wer, 4),
                  "acoustic_only_wer": round(tuning.acoustic_only_wer, 4), "oracle_wer": round(tuning.oracle_wer, 4)}
    ranked = rescore.rerank(hypotheses, lm_weight, word_bonus)
    if refs is not None and report is None:
        missing = sorted(set(ranked) - set(refs))
        if missing:
            raise ConfigError(f"--refs has no reference for utterance(s) {', '.join(map(repr, missing[:5]))}")
        report = {"lm_weight": lm_weight, "word_bonus": word_bonus, "wer": round(rescore.best_wer(ranked, refs), 4),
                  "acoustic_only_wer": round(rescore.best_wer(rescore.rerank(hypotheses, 0.0, 0.0), refs), 4)}
    if args.best:
        text = "".join(f"{u}\t{hs[0].text}\n" for u, hs in ranked.items())
    else:
        text = rescore.format_ranked(ranked, lm_weight, word_bonus)
    if args.output:
        atomic_write(args.output, text.encode("utf-8"))
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    if report is not None:
        print(json.dumps(report), file=sys.stderr)
    return 0
