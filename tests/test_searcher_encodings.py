"""Architecture encodings of model-based searchers: the BANANAS path encoding and the one-hot fallback."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from nasforge import get_space
from nasforge.errors import ConfigError
from nasforge.searchers._encodings import (
    DARTS_PATH_DIM,
    DARTS_PATH_OPS,
    NB201_PATH_DIM,
    NB201_PATH_OPS,
    darts_paths,
    encode,
    encode_batch,
    has_path_encoding,
    nb201_paths,
    path_index,
)
from nasforge.spaces.darts import DARTS_V2

# the NB201 module docstring's example cell: 0->1 conv3, 0->2 conv3, 1->2 avg, 0->3 skip, 1->3 conv3, 2->3 skip
CELL = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


def _cell(e10: str, e20: str, e21: str, e30: str, e31: str, e32: str) -> str:
    return f"|{e10}~0|+|{e20}~0|{e21}~1|+|{e30}~0|{e31}~1|{e32}~2|"


def test_nb201_path_feature_count_and_index_is_a_bijection():
    assert NB201_PATH_DIM == 4 + 16 + 64 == 84
    indices = [path_index(p, NB201_PATH_OPS) for n in (1, 2, 3) for p in itertools.product(NB201_PATH_OPS, repeat=n)]
    assert sorted(indices) == list(range(NB201_PATH_DIM))
    space = get_space("nb201")
    assert encode(space, space.parse(CELL)).shape == (84,)


def test_a_known_nb201_cell_has_exactly_its_four_paths():
    space = get_space("nb201")
    arch = space.parse(CELL)
    assert sorted(nb201_paths(arch)) == sorted([
        ("skip_connect",),  # 0->3
        ("nor_conv_3x3", "nor_conv_3x3"),  # 0->1->3
        ("nor_conv_3x3", "skip_connect"),  # 0->2->3
        ("nor_conv_3x3", "avg_pool_3x3", "skip_connect"),  # 0->1->2->3
    ])
    # ops indexed skip=0, conv1x1=1, conv3x3=2, avg=3; length-2 paths start at 4, length-3 at 20
    assert set(np.flatnonzero(encode(space, arch))) == {0, 4 + 2 * 4 + 2, 4 + 2 * 4 + 0, 20 + 2 * 16 + 3 * 4 + 0}


def test_a_path_through_a_none_edge_does_not_exist():
    space = get_space("nb201")
    arch = space.parse(_cell("nor_conv_3x3", "none", "avg_pool_3x3", "skip_connect", "none", "skip_connect"))
    assert sorted(nb201_paths(arch)) == [("nor_conv_3x3", "avg_pool_3x3", "skip_connect"), ("skip_connect",)]


@pytest.mark.parametrize("cell", [
    _cell("none", "none", "none", "none", "none", "none"),
    # every edge into node 3 is none: whatever the rest computes never reaches the output
    _cell("nor_conv_3x3", "nor_conv_1x1", "skip_connect", "none", "none", "none"),
    # no edge leaves the input: nodes 1, 2, 3 only ever see zeros
    _cell("none", "none", "nor_conv_3x3", "none", "nor_conv_3x3", "avg_pool_3x3"),
])
def test_a_cell_without_input_output_path_encodes_to_zeros(cell):
    space = get_space("nb201")
    assert not encode(space, space.parse(cell)).any()


def test_cells_computing_the_same_function_share_the_path_encoding_not_the_one_hot():
    space = get_space("nb201")
    # with 2->3 = none, node 2 is dead: its incoming ops do not change the cell's function
    a = space.parse(_cell("nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3", "skip_connect", "nor_conv_3x3", "none"))
    b = space.parse(_cell("nor_conv_3x3", "skip_connect", "nor_conv_3x3", "skip_connect", "nor_conv_3x3", "none"))
    assert np.array_equal(encode(space, a), encode(space, b))
    assert not np.array_equal(encode(space, a, "onehot"), encode(space, b, "onehot"))
    # a change on a live path changes the path encoding
    c = space.parse(_cell("nor_conv_1x1", "nor_conv_1x1", "avg_pool_3x3", "skip_connect", "nor_conv_3x3", "none"))
    assert not np.array_equal(encode(space, a), encode(space, c))


def test_darts_path_encoding_of_darts_v2():
    space = get_space("darts")
    arch = space.parse(DARTS_V2)
    paths = darts_paths(arch)
    # normal cell: node2 = sep3(0)+sep3(1), node3 = sep3(0)+sep3(1), node4 = skip(0)+sep3(1), node5 = skip(0)+dil3(2)
    assert paths[("normal", 0)] == {("sep_conv_3x3",), ("skip_connect",), ("sep_conv_3x3", "dil_conv_3x3")}
    assert paths[("normal", 1)] == {("sep_conv_3x3",), ("sep_conv_3x3", "dil_conv_3x3")}
    x = encode(space, arch)
    assert DARTS_PATH_DIM == 4 * (7 + 49 + 343 + 2401) == x.shape[0]
    assert x.sum() == sum(len(v) for v in paths.values())
    first = path_index(("sep_conv_3x3", "dil_conv_3x3"), DARTS_PATH_OPS)
    assert x[first] == 1.0 and x[2800 + first] == 1.0  # (normal, c_{k-2}) and (normal, c_{k-1}) blocks


def test_darts_paths_are_at_most_four_ops_long():
    space = get_space("darts")
    rng = random.Random(0)
    for _ in range(20):
        arch = space.sample(rng)
        assert all(1 <= len(p) <= 4 for v in darts_paths(arch).values() for p in v)
        assert encode(space, arch).shape == (DARTS_PATH_DIM,)


def test_spaces_without_path_encoding_fall_back_to_one_hot():
    space = get_space("mobilenet")
    assert not has_path_encoding(space) and has_path_encoding(get_space("nb201"))
    arch = space.sample(random.Random(1))
    assert np.array_equal(encode(space, arch, "path"), np.asarray(space.encode_onehot(arch), dtype=np.float32))
    batch = encode_batch(space, [arch, arch])
    assert batch.shape == (2, len(space.encode_onehot(arch))) and batch.dtype == np.float32


def test_unknown_encoding_is_a_config_error():
    space = get_space("nb201")
    with pytest.raises(ConfigError, match="path, onehot"):
        encode(space, space.parse(CELL), "adjacency")
