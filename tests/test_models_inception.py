"""GoogLeNet (torchvision's and the 2014 paper's) and Inception-v3: counts, shapes, Table 1, train/eval.

Parameter counts come from `jax.eval_shape` (no FLOPs). Forward/backward runs once per model at its smallest
input, batch 2, and that one compiled train step also serves the aux, BatchNorm and dropout checks.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.models import get_model, get_spec

KEYS = {"params": jax.random.key(0), "dropout": jax.random.key(1)}


def init_shapes(model, hw, train=False, channels=3):
    """The model's variables as shapes only."""
    return jax.eval_shape(lambda: model.init(KEYS, jnp.zeros((1, *hw, channels)), train=train))


def count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


# --- Parameter counts -------------------------------------------------------------------------------------

# GoogLeNet's Inception widths from Table 1 of the 2014 paper, written out again here so the hand-derived
# counts do not depend on the model code: name -> (in, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj).
TABLE1 = {
    "3a": (192, 64, 96, 128, 16, 32, 32),
    "3b": (256, 128, 128, 192, 32, 96, 64),
    "4a": (480, 192, 96, 208, 16, 48, 64),
    "4b": (512, 160, 112, 224, 24, 64, 64),
    "4c": (512, 128, 128, 256, 24, 64, 64),
    "4d": (512, 112, 144, 288, 32, 64, 64),
    "4e": (528, 256, 160, 320, 32, 128, 128),
    "5a": (832, 256, 160, 320, 32, 128, 128),
    "5b": (832, 384, 192, 384, 48, 128, 128),
}


def inception_weights(c_in, n1, r3, n3, r5, n5, pool, k5=5):
    """Kernel weights of one Inception block (no biases)."""
    return c_in * n1 + c_in * r3 + 9 * r3 * n3 + c_in * r5 + k5 * k5 * r5 * n5 + c_in * pool


def inception_biases(c_in, *widths):
    return sum(widths)


# The paper's network, conv weights + biases: conv1 7x7x3->64, conv2 1x1 64->64 (Table 1's "3x3 reduce"),
# conv3 3x3 64->192, the nine blocks, linear 1024->1000. Aux heads: 1x1 conv C->128, fc 2048->1024, fc 1024->1000.
GOOGLENET_2014_PARAMS = ((7 * 7 * 3 * 64 + 64) + (64 * 64 + 64) + (9 * 64 * 192 + 192)
                         + sum(inception_weights(*w) + inception_biases(*w) for w in TABLE1.values())
                         + (1024 * 1000 + 1000))
GOOGLENET_2014_AUX = sum(c * 128 + 128 + 2048 * 1024 + 1024 + 1024 * 1000 + 1000 for c in (512, 528))

COUNTS = [
    ("googlenet", {}, (224, 224), 6_624_904),  # docs/reference.md (torchvision, no aux)
    ("googlenet", {"aux_logits": True}, (224, 224), 13_004_888),  # docs/reference.md (with both aux heads)
    ("googlenet_2014", {}, (224, 224), 6_998_552),
    ("googlenet_2014", {"aux_logits": True}, (224, 224), 6_998_552 + 6_379_728),
    ("inception_v3", {}, (299, 299), 23_834_568),  # docs/reference.md
    ("inception_v3", {"aux_logits": True}, (299, 299), 27_161_264),  # docs/reference.md
]


def test_hand_derived_googlenet_2014_counts():
    assert GOOGLENET_2014_PARAMS == 6_998_552
    assert GOOGLENET_2014_AUX == 6_379_728
    # torchvision's aux heads differ only in the 1x1 conv: BN scale+bias (2 x 128) instead of a bias (128).
    assert 13_004_888 - 6_624_904 == GOOGLENET_2014_AUX + 2 * 128


@pytest.mark.parametrize("name,kw,hw,expected", COUNTS, ids=[f"{c[0]}-{bool(c[1])}" for c in COUNTS])
def test_parameter_counts(name, kw, hw, expected):
    # Eval-mode init: the aux heads' params must exist even though they only run in training.
    assert count(init_shapes(get_model(name, **kw), hw)["params"]) == expected
    if not kw:  # the registry's fact is the default model's count
        assert get_spec(name).params == expected


def test_train_and_eval_init_give_the_same_variables():
    model = get_model("googlenet", aux_logits=True)

    def shapes(train):
        variables = init_shapes(model, (64, 64), train)
        return {c: jax.tree_util.tree_map(lambda s: s.shape, variables[c]) for c in ("params", "batch_stats")}

    assert shapes(True) == shapes(False)


# --- GoogLeNet 2014: Table 1 ------------------------------------------------------------------------------

# Table 1's "params" column, in thousands.
PAPER_PARAMS_K = {"conv1": 2.7, "conv2": 112, "3a": 159, "3b": 380, "4a": 364, "4b": 437, "4c": 463, "4d": 580,
                  "4e": 840, "5a": 1072, "5b": 1388, "linear": 1000}
# The reading that matches: kernel weights only (no biases), K = 1024. It reproduces the linear layer exactly
# (1024*1000 / 1024 = 1000; with biases or K = 1000 it would be 1001 or 1024) and conv2 exactly (112.0), and
# 3a, 3b, 4b within the paper's rounding (159.5, 379.0, 438.0). The other rows cannot come from Table 1's own
# width columns under any reading: conv1 is 7*7*3*64 = 9,408 weights (9.2K, not 2.7K), and 4a, 4c, 4d, 4e, 5a,
# 5b are off by 1-7% (366.75, 497.5, 590.5, 847, 1018, 1409). The widths define the network, so the model
# follows them; those rows are checked against the width-derived counts and listed as the paper's slips.
CONSISTENT_ROWS = ("conv2", "3a", "3b", "4b", "linear")
PAPER_SLIPS = {"conv1": 9408, "4a": 375_552, "4c": 509_440, "4d": 604_672, "4e": 867_328, "5a": 1_042_432,
               "5b": 1_442_816}


def table1_weights(params) -> dict:
    """Kernel weights per Table 1 row, read off the flax parameter tree."""
    kernels = lambda tree: sum(int(np.prod(v.shape)) for path, v in jax.tree_util.tree_leaves_with_path(tree)
                               if path[-1].key == "kernel")
    rows = {"conv1": kernels(params["conv1"]), "conv2": kernels(params["conv2"]) + kernels(params["conv3"]),
            "linear": kernels(params["fc"])}
    rows.update({block: kernels(params[f"inception{block}"]) for block in TABLE1})
    return rows


def test_googlenet_2014_table1_parameters():
    rows = table1_weights(init_shapes(get_model("googlenet_2014"), (224, 224))["params"])
    assert rows["conv2"] == 64 * 64 + 9 * 64 * 192
    for block, widths in TABLE1.items():
        assert rows[block] == inception_weights(*widths), block  # real 5x5 branches
    for row in CONSISTENT_ROWS:
        assert abs(rows[row] / 1024 - PAPER_PARAMS_K[row]) <= 1.0, row
    assert rows["linear"] / 1024 == PAPER_PARAMS_K["linear"]
    for row, weights in PAPER_SLIPS.items():
        assert rows[row] == weights, row
        assert abs(weights / 1024 - PAPER_PARAMS_K[row]) > 1.0, row  # a slip indeed, not rounding


def test_torchvision_googlenet_has_3x3_in_its_5x5_branch():
    params = init_shapes(get_model("googlenet"), (224, 224))["params"]
    assert params["inception3a"]["branch3_1"]["conv"]["kernel"].shape == (3, 3, 16, 32)
    paper = init_shapes(get_model("googlenet_2014"), (224, 224))["params"]
    assert paper["inception3a"]["branch3_1"]["conv"]["kernel"].shape == (5, 5, 16, 32)


# --- Feature map sizes ------------------------------------------------------------------------------------


def block_shapes(model, hw, names):
    capture = lambda mdl, method: method == "__call__" and mdl.name in names

    def run(variables):
        return model.apply(variables, jnp.zeros((1, *hw, 3)), capture_intermediates=capture)[1]

    inter = jax.eval_shape(run, init_shapes(model, hw))["intermediates"]
    return {name: inter[name]["__call__"][0].shape[1:] for name in names}


@pytest.mark.parametrize("name", ["googlenet", "googlenet_2014"])
def test_googlenet_feature_maps_at_224(name):
    """The paper's Table 1 output sizes (torchvision's comments agree): 28, 14 and 7 pixels per side."""
    expected = {"inception3a": (28, 28, 256), "inception3b": (28, 28, 480), "inception4a": (14, 14, 512),
                "inception4d": (14, 14, 528), "inception4e": (14, 14, 832), "inception5a": (7, 7, 832),
                "inception5b": (7, 7, 1024)}
    assert block_shapes(get_model(name), (224, 224), tuple(expected)) == expected


def test_inception_v3_feature_maps_at_299():
    expected = {"Mixed_5b": (35, 35, 256), "Mixed_5d": (35, 35, 288), "Mixed_6a": (17, 17, 768),
                "Mixed_6e": (17, 17, 768), "Mixed_7a": (8, 8, 1280), "Mixed_7c": (8, 8, 2048)}
    assert block_shapes(get_model("inception_v3"), (299, 299), tuple(expected)) == expected


# --- Input size checks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,hw,kw,message", [
    ("googlenet", (30, 64), {}, r"googlenet needs input of at least 31x31, got 30x64"),
    ("googlenet", (64, 30), {"aux_logits": True}, r"googlenet needs input of at least 31x31"),
    ("googlenet_2014", (223, 223), {}, r"googlenet_2014 takes 224x224 input"),
    ("googlenet_2014", (256, 256), {}, r"googlenet_2014 takes 224x224 input"),
    ("inception_v3", (74, 299), {}, r"inception_v3 needs input of at least 75x75, got 74x299"),
    ("inception_v3", (298, 299), {"aux_logits": True},
     r"inception_v3 with aux_logits=True needs input of at least 299x299 to train"),
])
def test_too_small_input_names_the_model_and_minimum(name, hw, kw, message):
    with pytest.raises(ValueError, match=message):
        init_shapes(get_model(name, **kw), hw, train=True)


def test_minimum_sizes_are_tight():
    """`min_size` is the smallest side that runs: one pixel less and a pooling window outgrows its input.

    (Inception-v3's 75 is torchvision's. torch's GoogLeNet goes down to 15 with ceil-mode windows hanging
    past the input; `layers.max_pool` refuses those, which makes 31 GoogLeNet's minimum here.)
    """
    from jaxcnn.models.googlenet import GoogLeNet
    from jaxcnn.models.inception import InceptionV3

    for cls, size in ((GoogLeNet, 31), (InceptionV3, 75)):
        init_shapes(cls(num_classes=10, aux_logits=cls is GoogLeNet), (size, size), train=True)
        relaxed = type("Relaxed", (cls,), {"min_size": 1})
        with pytest.raises(ValueError, match="pooling window|negative|larger"):
            init_shapes(relaxed(num_classes=10), (size - 1, size - 1))


# --- Train step at the smallest input: forward, backward, aux, BatchNorm, dropout --------------------------

SMALLEST = [("googlenet", (31, 31), {"aux_logits": True}),
            ("googlenet_2014", (224, 224), {"aux_logits": True}),
            ("inception_v3", (75, 75), {})]

# These graphs run once on tiny inputs, so compile time is what counts: XLA:CPU's older (non-MLIR) fusion
# emitters with LLVM at -O0 compile GoogLeNet's train step in 7 s instead of 28 s (either option alone: ~28 s).
FAST_COMPILE = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 0,
                "xla_llvm_disable_expensive_passes": True}


def random_variables(model, hw, seed=0):
    """He-normal kernels, zero biases, identity BatchNorm, made in numpy from the init shapes.

    Compiling `model.init` costs more than the train step itself (one RNG program per parameter), and the
    values of torch-style initialisers are not what these tests check.
    """
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = path[-1].key
        if name == "kernel":
            return (rng.standard_normal(s.shape) * np.sqrt(2.0 / np.prod(s.shape[:-1]))).astype(s.dtype)
        return (np.ones if name in ("scale", "var") else np.zeros)(s.shape, s.dtype)

    return jax.tree_util.tree_map_with_path(fill, init_shapes(model, hw))


@functools.cache
def compiled(name, hw, kw_items):
    """Variables, an input batch, a jitted train step (logits, new state, grads) and a jitted eval forward."""
    model = get_model(name, num_classes=10, **dict(kw_items))
    variables = random_variables(model, hw)
    x = np.random.default_rng(1).standard_normal((2, *hw, 3)).astype(np.float32)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def train_step(variables, x, key):
        def loss(params):
            logits, state = model.apply({**variables, "params": params}, x, train=True,
                                        rngs={"dropout": key}, mutable=["batch_stats", "aux"])
            aux = sum(jnp.sum(a ** 2) for a in jax.tree_util.tree_leaves(state.get("aux", {})))
            return jnp.sum(logits ** 2) + aux, (logits, state)

        (_, (logits, state)), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
        return logits, state, grads

    evaluate = jax.jit(lambda v, x: model.apply(v, x, mutable=["batch_stats", "aux"]),
                       compiler_options=FAST_COMPILE)
    return variables, x, train_step, evaluate


@pytest.mark.parametrize("name,hw,kw", SMALLEST, ids=[s[0] for s in SMALLEST])
def test_train_step_at_smallest_input(name, hw, kw):
    variables, x, train_step, _ = compiled(name, hw, tuple(kw.items()))
    logits, state, grads = train_step(variables, x, jax.random.key(3))
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))
    leaves = jax.tree_util.tree_leaves(grads)
    assert len(leaves) == len(jax.tree_util.tree_leaves(variables["params"]))
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert sum(np.abs(np.asarray(g)).sum() > 0 for g in leaves) >= 0.9 * len(leaves)  # gradients reach the net

    # Aux logits are sown in training, one (2, 10) array per head.
    aux = {"googlenet": ["aux1", "aux2"], "googlenet_2014": ["aux1", "aux2"], "inception_v3": []}[name]
    assert sorted(state.get("aux", {})) == aux
    for head in aux:
        (head_logits,) = state["aux"][head]["logits"]
        assert head_logits.shape == (2, 10) and np.all(np.isfinite(head_logits))

    # BatchNorm statistics move in training (googlenet_2014 has none).
    if name != "googlenet_2014":
        changed = jax.tree_util.tree_map(lambda a, b: bool(np.any(np.asarray(a) != b)), state["batch_stats"],
                                         variables["batch_stats"])
        assert all(jax.tree_util.tree_leaves(changed))
    else:
        assert "batch_stats" not in variables


def test_eval_has_no_aux_and_keeps_batch_stats():
    variables, x, _, evaluate = compiled("googlenet", (31, 31), (("aux_logits", True),))
    logits, state = evaluate(variables, x)
    assert np.all(np.isfinite(logits))
    assert "aux" not in state or not jax.tree_util.tree_leaves(state["aux"])
    for new, old in zip(jax.tree_util.tree_leaves(state.get("batch_stats", {})),
                        jax.tree_util.tree_leaves(variables.get("batch_stats", {}))):
        np.testing.assert_array_equal(new, old)
    # Eval is deterministic and needs no dropout key; the same call twice gives the same logits.
    np.testing.assert_array_equal(evaluate(variables, x)[0], logits)


def test_dropout_depends_on_the_key():
    variables, x, train_step, _ = compiled("googlenet", (31, 31), (("aux_logits", True),))
    a = train_step(variables, x, jax.random.key(10))
    b = train_step(variables, x, jax.random.key(11))
    c = train_step(variables, x, jax.random.key(10))
    np.testing.assert_array_equal(a[0], c[0])
    assert not np.allclose(a[0], b[0])
    for head in ("aux1", "aux2"):  # the aux heads' dropout 0.7 too
        np.testing.assert_array_equal(a[1]["aux"][head]["logits"][0], c[1]["aux"][head]["logits"][0])
        assert not np.allclose(a[1]["aux"][head]["logits"][0], b[1]["aux"][head]["logits"][0])
