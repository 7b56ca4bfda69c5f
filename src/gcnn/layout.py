"""The names of the files and folders gcnn writes, in one place (what each holds: docs/architecture.md).

Model folders (:mod:`gcnn.io`): config.json, model.safetensors, vocab.json; exported folders add README.md and
SHA256SUMS; run folders (``gcnn train``) add run.json, metrics.jsonl, learning_curve.png and checkpoints/;
prepared-data folders (``gcnn prepare``) hold manifest.json, vocab.json and one .bin id file per split.
"""

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VOCAB_FILE = "vocab.json"
CARD_FILE = "README.md"
CHECKSUMS_FILE = "SHA256SUMS"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "learning_curve.png"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_STATE_FILE = "trainer_state.json"  # in each checkpoint folder, written last
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".lock"
