"""Network building blocks: primitive ops, blocks and the one candidate-mixing module."""
