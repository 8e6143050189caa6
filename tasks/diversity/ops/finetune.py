"""Fine-tuning on a narrow text: how the offline "fine-tuned" tiny models are made (tasks/diversity/models.py)."""

from __future__ import annotations

from collections.abc import Callable


def finetune_on_text(
    model,
    tokenizer,
    text: str,
    steps: int,
    lr: float = 3e-3,
    seed: int = 0,
    block_size: int = 32,
    batch_size: int = 8,
    after_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train all weights of `model` (in place) on random windows of `text` with next-token loss; returns losses.

    AdamW, constant learning rate, `block_size`-token windows drawn from `text` (repeated until long
    enough) by a generator seeded with `seed`; dropout also draws from a seeded, scoped RNG. Leaves the
    model in eval mode. This is a stand-in for the original's SFT / DPO, which are outside the project.
    `after_step(step, loss)` is called after each optimiser step (1-based), the model still in train mode;
    it may evaluate (under no_grad, in eval mode) as long as it puts the model back in train mode.
    """
    import torch

    ids = tokenizer(text, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError("text tokenises to nothing")
    while len(ids) < block_size + 1:
        ids = ids + ids
    data = torch.tensor(ids, dtype=torch.long)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    losses = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        try:
            for step in range(1, steps + 1):
                starts = torch.randint(0, len(data) - block_size, (batch_size,), generator=generator)
                x = torch.stack([data[s : s + block_size] for s in starts.tolist()]).to(device)
                loss = model(input_ids=x, labels=x).loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                if after_step is not None:
                    after_step(step, losses[-1])
        finally:
            model.eval()
    return losses
