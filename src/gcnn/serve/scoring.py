"""Per-token scores for ``POST /v1/score`` and the page: ``gcnn score --per-token``'s JSON, and with ``top`` > 0
each token's probability rank and the ``top`` tokens the model expected instead."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from gcnn.lm import LanguageModel


def score_details(
    model: LanguageModel, vocab, texts: Sequence[str], *, top: int = 0, batch_tokens: int = 16384
) -> list[dict[str, Any]]:
    """For each text (scored as one sentence, as :func:`gcnn.evaluate.score_texts` scores it: its tokens and a final
    eos predicted from the start marker): ``logprob``, ``log10prob``, ``tokens``, ``oov``, ``perplexity``,
    ``token_logprobs`` ([token, natural-log prob] pairs) and, with ``top``, ``token_details``: for every token its
    ``text`` (as it reads), ``logprob``, ``rank`` (1 = the model's first choice), ``oov`` (not in the
    vocabulary: scored as ``<unk>``) and ``top`` ([token, logprob], most
    probable first). Call inside :func:`gcnn.lm.inference`."""
    device = next(model.parameters()).device
    start = vocab.eos_id if vocab.bos_id is None else vocab.bos_id
    words = [vocab.tokenize(text) for text in texts]
    targets = [vocab.encode(w) + [vocab.eos_id] for w in words]
    out: list[dict[str, Any] | None] = [None] * len(texts)
    order = sorted(range(len(texts)), key=lambda i: len(targets[i]))
    at = 0
    while at < len(order):  # batches of similar lengths, up to batch_tokens padded input tokens
        longest = len(targets[order[at]])
        batch = []
        while at < len(order) and (not batch or (len(batch) + 1) * len(targets[order[at]]) <= batch_tokens):
            batch.append(order[at])
            longest = len(targets[order[at]])
            at += 1
        inputs = torch.full((len(batch), longest), start, dtype=torch.long, device=device)
        for row, i in enumerate(batch):
            seq = [start] + targets[i][:-1]
            inputs[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        hidden = model.hidden_states(inputs)
        for row, i in enumerate(batch):
            out[i] = _one(model, vocab, hidden[row, : len(targets[i])], targets[i], words[i], top)
    return out  # type: ignore[return-value]


def _one(model, vocab, hidden, target_ids: list[int], words: list[str], top: int, chunk: int = 256) -> dict[str, Any]:
    target = torch.tensor(target_ids, dtype=torch.long, device=hidden.device)
    logprobs: list[float] = []
    details: list[dict[str, Any]] = []
    names = words + [vocab.eos]
    for begin in range(0, len(target_ids), chunk):
        lp = model.softmax.log_probs(hidden[begin : begin + chunk]).float()
        t = target[begin : begin + chunk]
        chosen = lp.gather(1, t.unsqueeze(1))[:, 0]
        logprobs.extend(chosen.double().tolist())
        if top:
            ranks = ((lp > chosen.unsqueeze(1)).sum(dim=1) + 1).tolist()
            values, ids = torch.topk(lp, min(top, lp.shape[1]), dim=1)
            for j, (rank, vs, ix) in enumerate(zip(ranks, values.tolist(), ids.tolist())):
                k = begin + j
                word = names[k]
                details.append(
                    {
                        "token": word,
                        "text": _reads_as(vocab, word, target_ids[k]),
                        "logprob": logprobs[k],
                        "rank": rank,
                        "oov": k < len(words) and word not in vocab.stoi,  # scored as <unk>
                        "top": [[vocab.itos[x], v] for x, v in zip(ix, vs)],
                    }
                )
    total = float(sum(logprobs))
    result: dict[str, Any] = {
        "logprob": total,
        "log10prob": total / math.log(10),
        "tokens": len(target_ids),
        "oov": sum(1 for w in words if w not in vocab.stoi),
        "perplexity": math.exp(-total / len(target_ids)),
        "token_logprobs": [[w, lp] for w, lp in zip(names, logprobs)],
    }
    if top:
        result["token_details"] = details
    return result


def _reads_as(vocab, word: str, token_id: int) -> str:
    if token_id == vocab.eos_id and word == vocab.eos:
        return "\n"
    if vocab.splitter == "bpe":
        return word.replace("\u2581", " ")
    return word
