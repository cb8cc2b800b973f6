"""One file per paper: each wires a supernet, a policy and the bilevel helpers as its paper did.

Every module registers a :class:`~nasforge.train.oneshot.OneShotMethod` under kind ``method``
(``nasforge search --method NAME``). A method never imports another method.
"""
