"""Data: corpora -> vocabulary + memory-mapped ids (``prepare``), and batches for training and evaluation.

>>> from gcnn.data import PreparedData, batches
>>> data = PreparedData.open("data/wikitext-2")
>>> for inputs, targets in batches(data, batch_size=16, context=128, seed=0, epoch=0):
...     ...
"""

from gcnn.data.batching import Batches, batches, num_batches
from gcnn.data.corpus import find_corpus, prepare
from gcnn.data.prepared import PreparedData
from gcnn.data.shakespeare import shakespeare_corpus
from gcnn.data.text import Corpus
from gcnn.data.vocab import Vocabulary

__all__ = [
    "Batches",
    "Corpus",
    "PreparedData",
    "Vocabulary",
    "batches",
    "find_corpus",
    "num_batches",
    "prepare",
    "shakespeare_corpus",
]
