"""Maths of the embedding family: encoder hidden states per layer (`hidden_states`)."""
