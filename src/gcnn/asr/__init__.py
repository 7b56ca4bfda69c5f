"""gcnn as the language model of speech (and OCR) decoders: plug-ins, n-best rescoring, error rates.

* :mod:`gcnn.asr.pyctcdecode`: :class:`~gcnn.asr.pyctcdecode.GcnnLanguageModel` for pyctcdecode's CTC beam search.
* :mod:`gcnn.asr.flashlight`: :class:`~gcnn.asr.flashlight.GcnnFlashlightLM` for flashlight-text's
  ``LexiconDecoder`` and ``LexiconFreeDecoder``.
* :mod:`gcnn.asr.rescore`: n-best lists (read, rescore with LM log-probabilities and a word bonus, tune the weights).
* :mod:`gcnn.asr.metrics`: word and character error rates.
* :mod:`gcnn.asr.synth`: synthetic CTC emissions for end-to-end checks without an acoustic model.

The decoders are the optional extra ``asr`` (``pip install 'gcnn[asr]'``); the plug-in modules import them, nothing
else here does. All of them score through :class:`gcnn.scorer.Scorer`. docs/asr.md has the usage and the measurements.
"""
