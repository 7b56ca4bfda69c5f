"""lm-evaluation-harness tasks that read local files (no network): pass this folder as ``--include_path``.

- ``gcnn_wikitext``: a text file (``--metadata '{"data_file": PATH}'`` or GCNN_LMEVAL_TEXT) as one document, scored
  by ``loglikelihood_rolling`` like lm-eval's ``wikitext`` task (word_perplexity, byte_perplexity, bits_per_byte).
- ``gcnn_choice``: multiple-choice ``loglikelihood`` questions from a JSON-lines file (``{"context", "choices",
  "label"}``; ``choice_file`` or GCNN_LMEVAL_CHOICES; default: the small gcnn_choice.jsonl shipped here).

See docs/evaluation.md.
"""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
