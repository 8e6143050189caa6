"""Embedding family: labelled short-context text sets and encoder hidden states per layer
(the data stage of the word-sensitivity experiments, Bombari and Mondelli 2024)."""

TASKS = {
    "embedding.hidden_states": "tasks.embedding.task:hidden_states",
}
