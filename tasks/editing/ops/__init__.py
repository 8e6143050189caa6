"""Maths of the editing family, one topic per module (tensors in, tensors out):

- `losses`: canonical-examples losses and verdicts (Hewitt et al. 2024); token NLLs are tasks.common.nll;
- `finetune`: training on canonical examples (the original's trainer); `senses`: Backpack sense selection
  and sense offsets; `backpack`: the Backpack architecture; `ensemble`: Backpack + larger-LM ensemble;
- `evaluation`: success, hard negatives and degradation of an edited model vs the unedited one;
- `rome`: ROME rank-one edits (Meng et al. 2022); `counterfact`: CounterFact-style scores of a ROME edit;
  `memit`: MEMIT (Meng et al. 2023); `trace`: causal tracing; `_arch`: module lookup (tasks.common.arch).
"""
